//! Durations written as `"30s"`, `"5m"`, `"1h 30m"` in the config file.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration read from a human-readable string (`"30s"`, `"5m"`, `"250ms"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like \"30s\", \"5m\" or \"250ms\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        for (text, expected) in [("30s", 30_000), ("5m", 300_000), ("250ms", 250), ("1h 1s", 3_601_000)] {
            let parsed: Dur = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(parsed.get(), Duration::from_millis(expected), "{text}");
        }
    }

    #[test]
    fn rejects_bare_numbers_and_garbage() {
        assert!(serde_json::from_value::<Dur>(serde_json::json!("30")).is_err());
        assert!(serde_json::from_value::<Dur>(serde_json::json!("soon")).is_err());
        assert!(serde_json::from_value::<Dur>(serde_json::json!(30)).is_err());
    }
}
