//! Timers: a schedule (cron or a fixed interval) in a time zone, firing a function.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Name, Namespace};

/// The shortest `@every` interval.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest `@every` interval (a year): ticks are Unix milliseconds, and a longer one
/// would never fire anyway.
const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);
/// The longest schedule expression.
const MAX_EXPRESSION_BYTES: usize = 1024;

/// When a timer fires: a cron expression (five fields, or six with seconds first; day-of-week
/// as in crontab, 0 and 7 are Sunday; `@hourly` and the other aliases) evaluated in a time
/// zone, or `@every <duration>` (ticks aligned to multiples of the interval since the Unix
/// epoch, so restarts keep the phase).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "ScheduleConfig", into = "ScheduleConfig")]
pub struct Schedule {
    expression: String,
    zone: Tz,
    kind: ScheduleKind,
}

#[derive(Debug, Clone)]
enum ScheduleKind {
    Cron(Box<Cron>),
    Every(Duration),
}

/// A schedule as written and stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleConfig {
    pub cron: String,
    /// An IANA time zone name; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
}

impl Schedule {
    pub fn parse(expression: &str, tz: Option<&str>) -> Result<Self, ModelError> {
        let zone = match tz {
            Some(name) => Tz::from_str(name.trim()).map_err(|_| ModelError::InvalidTimeZone {
                value: name.to_owned(),
            })?,
            None => Tz::UTC,
        };
        let expression = expression.trim();
        if expression.len() > MAX_EXPRESSION_BYTES {
            return Err(ModelError::InvalidSchedule {
                value: format!("{}...", expression.chars().take(32).collect::<String>()),
                reason: format!("longer than {MAX_EXPRESSION_BYTES} bytes"),
            });
        }
        let invalid = |reason: String| ModelError::InvalidSchedule {
            value: expression.to_owned(),
            reason,
        };
        let kind = if let Some(interval) = expression.strip_prefix("@every") {
            let interval = humantime::parse_duration(interval.trim())
                .map_err(|e| invalid(format!("bad interval: {e}")))?;
            if interval < MIN_INTERVAL || interval > MAX_INTERVAL || interval.subsec_nanos() != 0 {
                return Err(invalid(
                    "the interval is a whole number of seconds, from 1s to 366 days".into(),
                ));
            }
            ScheduleKind::Every(interval)
        } else {
            let fields = expression.split_whitespace().count();
            if !expression.starts_with('@') && !(5..=6).contains(&fields) {
                return Err(invalid(format!(
                    "expected 5 fields (minute hour day month weekday) or 6 (seconds first), found {fields}"
                )));
            }
            let cron = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build()
                .parse(expression)
                .map_err(|e| invalid(e.to_string()))?;
            ScheduleKind::Cron(Box::new(cron))
        };
        Ok(Self {
            expression: expression.to_owned(),
            zone,
            kind,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone(&self) -> &str {
        self.zone.name()
    }

    /// The first tick strictly after `after_ms` (Unix milliseconds), if the schedule has one.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match &self.kind {
            ScheduleKind::Every(interval) => {
                // Bounded at parse (a stored schedule is parsed again when read), so the step
                // is at least 1000 and the product fits; checked anyway rather than trusted.
                let step = u64::try_from(interval.as_millis())
                    .ok()
                    .filter(|s| *s > 0)?;
                (after_ms / step).checked_add(1)?.checked_mul(step)
            }
            ScheduleKind::Cron(cron) => {
                let after: DateTime<Utc> = Utc.timestamp_millis_opt(after_ms as i64).single()?;
                let local = after.with_timezone(&self.zone);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }
}

impl TryFrom<ScheduleConfig> for Schedule {
    type Error = ModelError;
    fn try_from(config: ScheduleConfig) -> Result<Self, ModelError> {
        Schedule::parse(&config.cron, config.tz.as_deref())
    }
}

impl From<Schedule> for ScheduleConfig {
    fn from(schedule: Schedule) -> Self {
        let tz = (schedule.zone != Tz::UTC).then(|| schedule.zone.name().to_owned());
        Self {
            cron: schedule.expression,
            tz,
        }
    }
}

/// What a user writes to create a timer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub function: String,
    pub cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// The app (`gust apply`) this belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl TimerConfig {
    pub fn validate(
        &self,
        namespace: Namespace,
        generated_name: Name,
        now_ms: u64,
    ) -> Result<Timer, ModelError> {
        let name = match &self.name {
            Some(name) => Name::parse("timer", name)?,
            None => generated_name,
        };
        Ok(Timer {
            namespace,
            name,
            function: Name::parse("function", &self.function)?,
            schedule: Schedule::parse(&self.cron, self.tz.as_deref())?,
            created_at_ms: now_ms,
            app: Name::parse_app(self.app.as_deref())?,
        })
    }
}

/// A validated timer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timer {
    pub namespace: Namespace,
    pub name: Name,
    pub function: Name,
    pub schedule: Schedule,
    pub created_at_ms: u64,
    /// The app (`gust apply`) this belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Name>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn six_fields_count_seconds_and_five_fields_minutes() {
        let every_5s = Schedule::parse("*/5 * * * * *", None).unwrap();
        let t = ms("2026-01-01T00:00:03Z");
        assert_eq!(every_5s.next_after(t), Some(ms("2026-01-01T00:00:05Z")));
        assert_eq!(
            every_5s.next_after(ms("2026-01-01T00:00:05Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        let minutes = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(minutes.next_after(t), Some(ms("2026-01-01T00:15:00Z")));
    }

    #[test]
    fn weekdays_are_crontab_weekdays_and_zones_apply() {
        // 2026-01-01 is a Thursday; 0 and 7 are Sunday as in crontab.
        for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
            let schedule = Schedule::parse(sunday, None).unwrap();
            assert_eq!(
                schedule.next_after(ms("2026-01-01T00:00:00Z")),
                Some(ms("2026-01-04T09:00:00Z")),
                "{sunday}"
            );
        }
        let paris = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(
            paris.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2026-01-01T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(ms("2026-07-01T00:00:00Z")),
            Some(ms("2026-07-01T07:00:00Z"))
        );
        let hourly = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            hourly.next_after(ms("2026-01-01T00:10:00Z")),
            Some(ms("2026-01-01T01:00:00Z"))
        );
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let schedule = Schedule::parse("@every 30s", None).unwrap();
        assert_eq!(
            schedule.next_after(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            schedule.next_after(ms("2026-01-01T00:00:30Z")),
            Some(ms("2026-01-01T00:01:00Z"))
        );
    }

    #[test]
    fn bad_schedules_and_zones_name_what_is_wrong() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * * * *",
            "@every",
            "@every 0s",
            "@every 1500ms",
            "@every 367days",
            "@every 2305843009213693952s",
            "@every 9223372036854775808s",
            "@sometimes",
            "*/0 * * * *",
        ] {
            let err = Schedule::parse(bad, None).unwrap_err();
            assert!(
                matches!(err, ModelError::InvalidSchedule { .. }),
                "{bad:?}: {err}"
            );
        }
        let long = format!("{} * * * *", vec!["1"; 600].join(","));
        let err = Schedule::parse(&long, None).unwrap_err();
        assert!(err.to_string().contains("longer than 1024 bytes"), "{err}");
        let err = Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn a_stored_schedule_reads_back() {
        let schedule = Schedule::parse("0 9 * * 1-5", Some("Europe/Paris")).unwrap();
        let json = serde_json::to_string(&schedule).unwrap();
        assert_eq!(json, r#"{"cron":"0 9 * * 1-5","tz":"Europe/Paris"}"#);
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back.next_after(0), schedule.next_after(0));
    }
}
