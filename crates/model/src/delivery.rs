//! How asynchronous work is delivered: each function's retry budget, which outcomes are
//! retried, and when the next attempt runs. Pure: the caller passes the clock and the jitter.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{FunctionSettings, ModelError};

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
const MAX_ATTEMPTS: u32 = 100;
const MAX_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The first retry waits about this long; each later one twice as long as the one before.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);

/// A revision's retry budget for asynchronous invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Delivery {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// An invocation not finished this long after it was accepted expires, run or not.
    #[serde(with = "crate::function::duration_ms")]
    #[schema(value_type = u64, default = 21_600_000)]
    pub max_age: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// Applies the retry budget's fields of `settings` over `base`.
pub(crate) fn apply_delivery(
    settings: &FunctionSettings,
    mut base: Delivery,
) -> Result<Delivery, ModelError> {
    if let Some(attempts) = settings.max_attempts {
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            return Err(ModelError::OutOfRange {
                field: "max-attempts",
                reason: format!("{attempts} is not between 1 and {MAX_ATTEMPTS}"),
            });
        }
        base.max_attempts = attempts;
    }
    if let Some(age) = settings.max_age {
        if age.get() < Duration::from_secs(1) || age.get() > MAX_MAX_AGE {
            return Err(ModelError::OutOfRange {
                field: "max-age",
                reason: format!("{age} is not between 1s and 7days"),
            });
        }
        base.max_age = age.get();
    }
    Ok(base)
}

/// What one attempt's outcome means for the invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// Worth another attempt: the failure may be temporary.
    Retry,
    /// Another attempt would fail the same way.
    Final,
}

/// Classifies a function's HTTP status: 2xx (and 1xx/3xx, which are answers too) succeed;
/// 408, 429 and 5xx are retried; every other 4xx is final.
pub fn classify_status(status: u16) -> Verdict {
    match status {
        408 | 429 => Verdict::Retry,
        400..=499 => Verdict::Final,
        500.. => Verdict::Retry,
        _ => Verdict::Succeeded,
    }
}

/// How long to wait after failed attempt number `attempt` (1 for the first): exponential from
/// [`BACKOFF_BASE`], capped at [`BACKOFF_CAP`], with "equal jitter": a random point in the
/// upper half of the step, so that many failures at once do not retry at once. `jitter` is
/// uniform in `[0, 1)`.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let step = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// How long to wait before the next attempt: the backoff, or longer when the function asked
/// for it with `Retry-After` (never past [`BACKOFF_CAP`]).
pub fn retry_wait(attempt: u32, retry_after: Duration, jitter: f64) -> Duration {
    backoff(attempt, jitter).max(retry_after.min(BACKOFF_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_class_is_classified() {
        for (status, verdict) in [
            (200, Verdict::Succeeded),
            (204, Verdict::Succeeded),
            (302, Verdict::Succeeded),
            (400, Verdict::Final),
            (404, Verdict::Final),
            (409, Verdict::Final),
            (408, Verdict::Retry),
            (429, Verdict::Retry),
            (500, Verdict::Retry),
            (502, Verdict::Retry),
            (503, Verdict::Retry),
            (504, Verdict::Retry),
        ] {
            assert_eq!(classify_status(status), verdict, "{status}");
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_five_minutes() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert!(backoff(1, 0.999_999) < Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.5), Duration::from_secs(6));
        assert_eq!(backoff(30, 0.0), BACKOFF_CAP / 2);
        assert!(backoff(u32::MAX, 1.0) <= BACKOFF_CAP);
    }

    #[test]
    fn delivery_settings_are_checked() {
        let given = FunctionSettings {
            max_attempts: Some(5),
            max_age: Some("30m".parse().unwrap()),
            ..Default::default()
        };
        let d = apply_delivery(&given, Delivery::default()).unwrap();
        assert_eq!((d.max_attempts, d.max_age), (5, Duration::from_secs(1800)));
        for bad in [
            FunctionSettings {
                max_attempts: Some(0),
                ..Default::default()
            },
            FunctionSettings {
                max_age: Some("10ms".parse().unwrap()),
                ..Default::default()
            },
            FunctionSettings {
                max_age: Some("30d".parse().unwrap()),
                ..Default::default()
            },
        ] {
            assert!(
                apply_delivery(&bad, Delivery::default()).is_err(),
                "{bad:?}"
            );
        }
        let old: Delivery = serde_json::from_str("{}").unwrap();
        assert_eq!(old, Delivery::default());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn every_status_has_exactly_the_documented_verdict(status in 100u16..=599) {
                let verdict = classify_status(status);
                let expected = if (200..300).contains(&status) || status < 200 || (300..400).contains(&status) {
                    Verdict::Succeeded
                } else if status == 408 || status == 429 || status >= 500 {
                    Verdict::Retry
                } else {
                    Verdict::Final
                };
                prop_assert_eq!(verdict, expected);
            }

            #[test]
            fn backoff_stays_in_the_upper_half_of_its_step_and_never_shrinks(
                attempt in 1u32..64,
                a in 0.0f64..1.0,
            ) {
                let wait = backoff(attempt, a);
                let step = BACKOFF_BASE.saturating_mul(1 << (attempt - 1).min(20)).min(BACKOFF_CAP);
                prop_assert!(wait >= step / 2 && wait <= step);
                prop_assert!(backoff(attempt + 1, 0.0) >= backoff(attempt, 0.0));
            }
        }
    }
}
