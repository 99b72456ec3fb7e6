//! Short, PII-free excerpts of text we did not write (a target's error body): e-mail
//! addresses, phone numbers and other long digit runs are replaced, whitespace collapsed and
//! the result capped. Pure; used for delivery failure reasons stored and shown to operators.
//!
//! A JSON body keeps its shape and its message-like fields (`error`, `message`, `detail`, …);
//! every other string value becomes `…`, so a target that echoes the record it refused
//! (`{"error":"duplicate","firstName":"Ada"}`) shows `{"error":"duplicate","firstName":"…"}`.
//! For other bodies this is a safety net, not a guarantee: plain text that echoes a name keeps
//! it. Callers keep excerpts short for that reason.

/// Replaces e-mail addresses with `[email]` and runs of 6 or more digits (separators
/// ` -.()+/` allowed between them: phone numbers, account numbers) with `[number]`, collapses
/// whitespace, and cuts the text at `max_chars` characters (adding `…`).
pub fn excerpt(body: &[u8], max_chars: usize) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
            std::borrow::Cow::Owned(redact_json(value, false).to_string())
        }
        _ => String::from_utf8_lossy(body),
    };
    let collapsed: Vec<char> = collapse_whitespace(&text).chars().filter(|c| !c.is_control()).collect();
    let scrubbed = scrub_numbers(&scrub_emails(&collapsed));
    let count = scrubbed.chars().count();
    if count <= max_chars {
        scrubbed
    } else {
        let mut cut: String = scrubbed.chars().take(max_chars).collect();
        cut.push('…');
        cut
    }
}

/// Object keys whose string values say what went wrong (kept, then scrubbed like text).
const MESSAGE_KEYS: &[&str] = &[
    "error",
    "errors",
    "message",
    "messages",
    "detail",
    "details",
    "title",
    "reason",
    "code",
    "type",
    "status",
    "description",
];

/// Keeps the shape, numbers, booleans and the strings under message-like keys; every other
/// string becomes `…`.
fn redact_json(value: serde_json::Value, keep_strings: bool) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) if keep_strings => Value::String(text),
        Value::String(_) => Value::String("…".to_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(|item| redact_json(item, keep_strings)).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let keep = MESSAGE_KEYS.contains(&key.to_ascii_lowercase().as_str());
                    (key, redact_json(value, keep))
                })
                .collect(),
        ),
        other => other,
    }
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_local(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-' | '\'')
}

fn is_domain(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-')
}

fn scrub_emails(chars: &[char]) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            // The local part is what `out` ends with; the domain follows.
            let local = out.iter().rev().take_while(|c| is_local(**c)).count();
            let mut end = i + 1;
            while end < chars.len() && is_domain(chars[end]) {
                end += 1;
            }
            let domain: String = chars[i + 1..end].iter().collect();
            let domain = domain.trim_end_matches(['.', '-']);
            if local > 0 && domain.contains('.') {
                out.truncate(out.len() - local);
                out.extend("[email]".chars());
                i += 1 + domain.chars().count();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Digit runs of at least this many digits are replaced.
const LONG_DIGITS: usize = 6;

fn scrub_numbers(chars: &[char]) -> String {
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let starts =
            chars[i].is_ascii_digit() || (chars[i] == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if starts {
            // Extend over digits and separators; the span ends at its last digit.
            let mut j = i;
            let mut digits = 0;
            let mut last_digit = i;
            while j < chars.len()
                && (chars[j].is_ascii_digit() || matches!(chars[j], ' ' | '-' | '.' | '(' | ')' | '+' | '/'))
            {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                    last_digit = j;
                }
                j += 1;
            }
            if digits >= LONG_DIGITS {
                out.push_str("[number]");
                i = last_digit + 1;
                continue;
            }
            // A short number: keep it (status codes, counts) up to its last digit.
            out.extend(&chars[i..=last_digit]);
            i = last_digit + 1;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_phones_and_long_numbers_are_replaced() {
        let body =
            br#"{"error":"Invalid email: Ada.Lovelace+crm@example.co.uk", "phone": "+1 (555) 123-4567", "code": 422}"#;
        let got = excerpt(body, 500);
        assert!(got.contains(r#""error":"Invalid email: [email]""#), "{got}");
        assert!(got.contains(r#""phone":"…""#) && got.contains(r#""code":422"#), "{got}");
        // The same in plain text.
        let text = b"Invalid email: Ada.Lovelace+crm@example.co.uk, phone +1 (555) 123-4567";
        assert_eq!(excerpt(text, 500), "Invalid email: [email], phone [number]");
    }

    #[test]
    fn a_json_body_that_echoes_the_record_keeps_only_its_messages() {
        let body = br#"{"error":"duplicate","record":{"firstName":"Ada","lastName":"Lovelace","tags":["vip"]},"errors":[{"field":"name","message":"taken"}]}"#;
        let got = excerpt(body, 500);
        assert!(!got.contains("Ada") && !got.contains("Lovelace") && !got.contains("vip"), "{got}");
        assert!(got.contains(r#""error":"duplicate""#) && got.contains(r#""message":"taken""#), "{got}");
        assert!(got.contains(r#""firstName":"…""#), "{got}");
    }

    #[test]
    fn short_numbers_and_plain_at_signs_stay() {
        assert_eq!(excerpt(b"field 12 @ line 3: bad", 100), "field 12 @ line 3: bad");
        assert_eq!(excerpt(b"user@localhost", 100), "user@localhost");
        assert_eq!(excerpt(b"account 4111111111111111 declined", 100), "account [number] declined");
    }

    #[test]
    fn whitespace_is_collapsed_and_long_text_is_cut() {
        assert_eq!(excerpt(b"  a\n\n b\t c  ", 100), "a b c");
        let long = "x".repeat(500);
        let got = excerpt(long.as_bytes(), 200);
        assert_eq!(got.chars().count(), 201);
        assert!(got.ends_with('…'));
    }

    #[test]
    fn invalid_utf8_does_not_panic() {
        assert_eq!(excerpt(&[0xff, b'o', b'k'], 10), "\u{fffd}ok");
    }
}
