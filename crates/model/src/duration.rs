//! A duration as people write it (`500ms`, `30s`, `1h 30m`), typed from the CLI's flag through
//! the API's JSON to the stored setting.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] written and read in humantime's notation. Parsing is where a bad value is
/// refused, so a setting that holds one is never a string to check later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(value: Duration) -> Self {
        Self(value)
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        humantime::parse_duration(value.trim())
            .map(Self)
            .map_err(|err| {
                format!("invalid duration {value:?}: {err} (write it as 500ms, 30s, 5m or 1h)")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_reads_back_what_it_writes() {
        for text in ["500ms", "30s", "1h 30m", "6h"] {
            let parsed: HumanDuration = text.parse().unwrap();
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(
                serde_json::from_str::<HumanDuration>(&json).unwrap(),
                parsed
            );
        }
        assert_eq!(
            "1m30s".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn a_bad_duration_names_the_value() {
        let err = "soon".parse::<HumanDuration>().unwrap_err();
        assert!(err.starts_with("invalid duration \"soon\""), "{err}");
        let err = serde_json::from_str::<HumanDuration>("\"5 parsecs\"").unwrap_err();
        assert!(err.to_string().contains("5 parsecs"), "{err}");
    }
}
