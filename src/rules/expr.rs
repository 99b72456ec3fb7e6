//! Rule conditions (`when = "…"`): Common Expression Language, compiled once at config load.
//!
//! The variables a condition sees are [`VARIABLES`] and nothing else; a condition that names
//! another one is rejected at load. Absent maps (`old` of a created record, `data` of a record
//! event) are empty maps, never undefined, so `'lead' in new.tags` on a delete is `false`, not
//! an error.
//!
//! **Bounded cost.** An expression is at most [`MAX_CONDITION_LEN`] characters. CEL has no
//! loops, recursion or user functions: the only iteration is its macros (`all`, `exists`,
//! `exists_one`, `map`, `filter`) over the lists and maps of the event, which are finite and
//! small (a record's fields and tags), so one evaluation costs at most a small polynomial in the
//! expression's length and the event's size. An evaluation error or a result that is not a
//! bool is reported, never a panic and never "fired".

use std::collections::{BTreeSet, HashMap};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::Key;
use cel::{Context, ExecutionError, Program};
use serde_json::Value as Json;

use super::RuleEvent;

/// Longest accepted condition, in characters.
pub const MAX_CONDITION_LEN: usize = 2_000;

/// The variables a condition may use, with their meaning (also in `docs/operations.md`).
pub const VARIABLES: &[(&str, &str)] = &[
    ("trigger", "string: the trigger name, e.g. `contact.updated`"),
    ("location", "string: the GHL location id"),
    ("contact", "map: the contact the event is about (its latest snapshot); empty when unknown"),
    ("old", "map: the record before the change; empty for a created record"),
    ("new", "map: the record after the change; empty for a deleted record"),
    ("record", "map: `new`, else `old`"),
    ("data", "map: the trigger's own fields (see the trigger table); empty when it has none"),
    ("changed", "list of strings: top-level fields whose value differs between `old` and `new`"),
    ("tags_added", "list of strings: tags in `new` and not in `old`"),
    ("tags_removed", "list of strings: tags in `old` and not in `new`"),
    ("now", "timestamp: when the rule is evaluated"),
    ("at", "timestamp: when the event happened"),
    ("depth", "int: how many rule actions led to this event (0: an outside change)"),
];

/// A compiled condition.
#[derive(Debug)]
pub struct Condition {
    source: String,
    program: Program,
}

impl Condition {
    /// Compiles `source`. The error is one line per problem, with the position in the
    /// expression (`line 1, column 12: …`).
    pub fn compile(source: &str) -> Result<Self, String> {
        let length = source.chars().count();
        if length > MAX_CONDITION_LEN {
            return Err(format!("is {length} characters long; at most {MAX_CONDITION_LEN} are allowed"));
        }
        if source.trim().is_empty() {
            return Err("is empty: leave `when` out for a rule that always runs".to_owned());
        }
        // The parser is third-party code fed with config: a panic in it must not take the
        // daemon down, it is a bad expression.
        let compiled = std::panic::catch_unwind(|| Program::compile(source))
            .map_err(|_| "cannot be parsed (the CEL parser failed on it)".to_owned())?;
        let program = compiled.map_err(|errors| {
            errors
                .errors
                .iter()
                .map(|e| format!("line {}, column {}: {}", e.pos.0, e.pos.1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let unknown = unknown_variables(&program);
        if !unknown.is_empty() {
            let names: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "unknown variable{} {}; a condition can use: {}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
                names.join(", ")
            ));
        }
        Ok(Self { source: source.to_owned(), program })
    }

    /// The expression as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition over `event`. `Err`: the evaluation failed or did not give a bool
    /// (the message names types and keys, never values: they may be personal data).
    pub fn evaluate(&self, event: &RuleEvent, now_ms: i64) -> Result<bool, String> {
        let mut context = Context::default();
        for (name, value) in variables(event, now_ms)? {
            context.add_variable_from_value(name, value);
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.program.execute(&context)))
            .map_err(|_| "the condition's evaluation failed (CEL interpreter error)".to_owned())?;
        match result {
            Ok(cel::Value::Bool(fired)) => Ok(fired),
            Ok(other) => Err(format!("the condition gave a {}, not a bool", other.type_of())),
            Err(error) => Err(format!("the condition failed: {}", describe(&error))),
        }
    }
}

/// The values of [`VARIABLES`] for one event.
fn variables(event: &RuleEvent, now_ms: i64) -> Result<Vec<(&'static str, cel::Value)>, String> {
    let map = |value: Option<&Json>| match value {
        Some(value @ Json::Object(_)) => to_cel(value),
        _ => cel::Value::from(HashMap::<String, cel::Value>::new()),
    };
    let strings =
        |list: &[String]| cel::Value::from(list.iter().map(|s| cel::Value::from(s.as_str())).collect::<Vec<_>>());
    let record = event.new.as_ref().or(event.old.as_ref());
    let depth = event.origin.as_ref().map_or(0, |origin| origin.depth);
    Ok(vec![
        ("trigger", cel::Value::from(event.trigger.as_str())),
        ("location", cel::Value::from(event.location_id.as_str())),
        ("contact", map(event.contact.as_ref())),
        ("old", map(event.old.as_ref())),
        ("new", map(event.new.as_ref())),
        ("record", map(record)),
        ("data", to_cel(&Json::Object(event.data.clone()))),
        ("changed", strings(&event.changed)),
        ("tags_added", strings(&event.tags_added)),
        ("tags_removed", strings(&event.tags_removed)),
        ("now", timestamp(now_ms).ok_or("the current time is out of range")?),
        ("at", timestamp(event.at_ms).ok_or("the event's time is out of range")?),
        ("depth", cel::Value::Int(i64::from(depth))),
    ])
}

fn timestamp(ms: i64) -> Option<cel::Value> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| cel::Value::Timestamp(t.fixed_offset()))
}

/// JSON as CEL: integers that fit are `int` (so `new.count > 3` compares int with int), other
/// numbers `double`.
fn to_cel(value: &Json) -> cel::Value {
    match value {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => cel::Value::from(s.as_str()),
        Json::Array(items) => cel::Value::from(items.iter().map(to_cel).collect::<Vec<_>>()),
        Json::Object(map) => {
            cel::Value::from(map.iter().map(|(k, v)| (Key::from(k.as_str()), to_cel(v))).collect::<HashMap<_, _>>())
        }
    }
}

/// Variables the program reads that are not in [`VARIABLES`] (macro loop variables excepted).
fn unknown_variables(program: &Program) -> BTreeSet<String> {
    let mut bound = BTreeSet::new();
    loop_variables(program.expression(), &mut bound);
    program
        .references()
        .variables()
        .into_iter()
        .filter(|name| !bound.contains(*name) && !VARIABLES.iter().any(|(known, _)| known == name))
        .map(str::to_owned)
        .collect()
}

/// The names macros bind (`t` in `new.tags.exists(t, t == 'vip')`).
fn loop_variables(expr: &IdedExpr, bound: &mut BTreeSet<String>) {
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                loop_variables(target, bound);
            }
            call.args.iter().for_each(|arg| loop_variables(arg, bound));
        }
        Expr::Comprehension(comp) => {
            bound.insert(comp.iter_var.clone());
            bound.extend(comp.iter_var2.clone());
            bound.insert(comp.accu_var.clone());
            for part in [&comp.iter_range, &comp.accu_init, &comp.loop_cond, &comp.loop_step, &comp.result] {
                loop_variables(part, bound);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| loop_variables(e, bound)),
        Expr::Map(map) => map.entries.iter().for_each(|e| entry_variables(&e.expr, bound)),
        Expr::Struct(s) => s.entries.iter().for_each(|e| entry_variables(&e.expr, bound)),
        Expr::Select(select) => loop_variables(&select.operand, bound),
        _ => {}
    }
}

fn entry_variables(entry: &EntryExpr, bound: &mut BTreeSet<String>) {
    match entry {
        EntryExpr::StructField(field) => loop_variables(&field.value, bound),
        EntryExpr::MapEntry(entry) => {
            loop_variables(&entry.key, bound);
            loop_variables(&entry.value, bound);
        }
    }
}

/// An evaluation error without the values it may carry (record values are personal data).
fn describe(error: &ExecutionError) -> String {
    match error {
        ExecutionError::NoSuchKey(key) => format!("no such key `{key}`"),
        ExecutionError::UndeclaredReference(name) => format!("undeclared reference `{name}`"),
        ExecutionError::NoSuchOverload(_) => {
            "no such overload (an operator or function applied to values of the wrong types)".to_owned()
        }
        ExecutionError::UnexpectedType { got, want } => format!("unexpected type: got {got}, want {want}"),
        ExecutionError::InvalidArgumentCount { expected, actual } => {
            format!("wrong argument count: expected {expected}, got {actual}")
        }
        ExecutionError::FunctionError { function, .. } => format!("function `{function}` failed"),
        ExecutionError::ValuesNotComparable(a, b) => {
            format!("a {} cannot be compared to a {}", a.type_of(), b.type_of())
        }
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => "division by zero".to_owned(),
        ExecutionError::IndexOutOfBounds(_) => "index out of bounds".to_owned(),
        ExecutionError::UnsupportedIndex(_, target) => format!("cannot index a {}", target.type_of()),
        ExecutionError::NotSupportedAsMethod { method, target } => {
            format!("method `{method}` is not supported on a {}", target.type_of())
        }
        _ => "unsupported operation".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rules::Origin;

    fn event() -> RuleEvent {
        RuleEvent {
            trigger: "contact.updated".to_owned(),
            key: "k".to_owned(),
            location_id: "loc1".to_owned(),
            old: Some(json!({"tags": ["a"], "score": 3})),
            new: Some(json!({"tags": ["a", "lead"], "score": 5, "email": "x@example.com"})),
            changed: vec!["tags".to_owned(), "score".to_owned()],
            tags_added: vec!["lead".to_owned()],
            at_ms: 1_700_000_000_000,
            ..RuleEvent::default()
        }
    }

    #[test]
    fn conditions_over_the_event_evaluate_as_expected() {
        let cases: &[(&str, bool)] = &[
            ("'lead' in new.tags", true),
            ("'lead' in old.tags", false),
            ("'lead' in tags_added && size(tags_removed) == 0", true),
            ("new.score > old.score", true),
            ("record.score == 5", true),
            ("trigger == 'contact.updated' && location == 'loc1'", true),
            ("'score' in changed", true),
            ("new.tags.exists(t, t == 'lead')", true),
            ("new.tags.all(t, t.startsWith('x'))", false),
            ("size(data) == 0 && size(contact) == 0", true),
            ("depth == 0", true),
            ("at < now", true),
            ("at == timestamp('2023-11-14T22:13:20Z')", true),
            ("has(new.email) && !has(old.email)", true),
        ];
        for (source, expected) in cases {
            let condition = Condition::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(condition.evaluate(&event(), 1_800_000_000_000), Ok(*expected), "{source}");
        }
    }

    #[test]
    fn absent_records_are_empty_maps_not_errors() {
        let mut deleted = event();
        deleted.new = None;
        let condition = Condition::compile("'lead' in new.tags").unwrap();
        // `new` is empty: the key is missing, an evaluation error, not a panic and not fired.
        assert!(condition.evaluate(&deleted, 0).is_err());
        let guarded = Condition::compile("has(new.tags) && 'lead' in new.tags").unwrap();
        assert_eq!(guarded.evaluate(&deleted, 0), Ok(false));
        assert_eq!(Condition::compile("record.score == 3").unwrap().evaluate(&deleted, 0), Ok(true));
    }

    #[test]
    fn depth_counts_the_chain() {
        let mut chained = event();
        chained.origin = Some(Origin { rule: "r".to_owned(), depth: 2 });
        assert_eq!(Condition::compile("depth == 2").unwrap().evaluate(&chained, 0), Ok(true));
    }

    #[test]
    fn a_syntax_error_names_line_and_column() {
        let error = Condition::compile("'lead' in new.tags &&").unwrap_err();
        assert!(error.starts_with("line 1, column "), "{error}");
        let error = Condition::compile("true &&\n  (").unwrap_err();
        assert!(error.starts_with("line 2, column "), "{error}");
    }

    #[test]
    fn unknown_variables_are_rejected_but_loop_variables_are_not() {
        let error = Condition::compile("contact.x == 1 || person.name == 'a'").unwrap_err();
        assert!(error.contains("`person`"), "{error}");
        assert!(!error.contains("`contact`"), "{error}");
        assert!(Condition::compile("new.tags.filter(tag, tag != 'a').size() > 0").is_ok());
    }

    #[test]
    fn long_and_empty_conditions_are_rejected() {
        assert!(Condition::compile(&"true && ".repeat(300)).unwrap_err().contains("at most 2000"));
        assert!(Condition::compile("  ").is_err());
    }

    #[test]
    fn non_bool_results_and_evaluation_errors_are_reported_without_values() {
        let result = Condition::compile("new.email").unwrap().evaluate(&event(), 0);
        let error = result.unwrap_err();
        assert!(error.contains("string") && !error.contains("example.com"), "{error}");
        let error = Condition::compile("new.email > 3").unwrap().evaluate(&event(), 0).unwrap_err();
        assert!(!error.contains("example.com"), "{error}");
        assert!(Condition::compile("new.score / 0 == 1").unwrap().evaluate(&event(), 0).is_err());
    }
}
