use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{FunctionSettings, HumanDuration, ModelError};

/// The most requests one wasm instance may serve with `--reuse`.
pub const MAX_REUSE: u32 = 10_000;
const MAX_INSTANCES: u32 = 1_000;
const MAX_CONCURRENCY: u32 = 1_000;
const MAX_QUEUE_DEPTH: u32 = 100_000;
const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How a revision scales. `None` means the default of the function's tier or of `gust up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Scaling {
    /// Requests in flight per instance (process tier); `None` is 1.
    pub concurrency: Option<u32>,
    /// Instances kept running even with no requests (0: scale to zero).
    pub min_instances: u32,
    /// Most instances at once.
    pub max_instances: Option<u32>,
    /// How long an instance may stay unused before it stops (down to `min_instances`).
    #[serde(with = "optional_ms")]
    #[schema(value_type = Option<u64>)]
    pub idle_timeout: Option<Duration>,
    /// Requests that may wait for capacity when every instance is busy.
    pub queue_depth: Option<u32>,
    /// How long a request may wait for capacity.
    #[serde(with = "optional_ms")]
    #[schema(value_type = Option<u64>)]
    pub queue_timeout: Option<Duration>,
    /// Requests a wasm instance serves, one after another, before a fresh one replaces it.
    /// 1 (the default) is a fresh instance per request: nothing a request leaves in memory
    /// reaches the next. Larger values trade that isolation for skipping the instantiation of
    /// big components (componentize-py's initialise a whole interpreter).
    pub reuse: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            concurrency: None,
            min_instances: 0,
            max_instances: None,
            idle_timeout: None,
            queue_depth: None,
            queue_timeout: None,
            reuse: 1,
        }
    }
}

fn out_of_range(field: &'static str, reason: String) -> ModelError {
    ModelError::OutOfRange { field, reason }
}

fn bounded_duration(
    field: &'static str,
    value: HumanDuration,
    max: Duration,
) -> Result<Duration, ModelError> {
    let duration = value.get();
    if duration < Duration::from_millis(1) || duration > max {
        return Err(out_of_range(
            field,
            format!(
                "{value} is not between 1ms and {}",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(duration)
}

fn bounded(
    field: &'static str,
    value: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ModelError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range(
            field,
            format!(
                "{value} is not between {} and {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Applies the scaling fields of `settings` over `base` and checks them together.
pub(crate) fn apply_scaling(
    settings: &FunctionSettings,
    mut base: Scaling,
) -> Result<Scaling, ModelError> {
    if let Some(concurrency) = settings.concurrency {
        base.concurrency = Some(bounded("concurrency", concurrency, 1..=MAX_CONCURRENCY)?);
    }
    if let Some(min) = settings.min_instances {
        base.min_instances = bounded("min-instances", min, 0..=MAX_INSTANCES)?;
    }
    if let Some(max) = settings.max_instances {
        base.max_instances = Some(bounded("max-instances", max, 1..=MAX_INSTANCES)?);
    }
    if let Some(idle) = settings.idle_timeout {
        base.idle_timeout = Some(bounded_duration("idle-timeout", idle, MAX_IDLE_TIMEOUT)?);
    }
    if let Some(depth) = settings.queue_depth {
        base.queue_depth = Some(bounded("queue-depth", depth, 0..=MAX_QUEUE_DEPTH)?);
    }
    if let Some(timeout) = settings.queue_timeout {
        base.queue_timeout = Some(bounded_duration(
            "queue-timeout",
            timeout,
            MAX_QUEUE_TIMEOUT,
        )?);
    }
    if let Some(reuse) = settings.reuse {
        base.reuse = bounded("reuse", reuse, 1..=MAX_REUSE)?;
    }
    if let Some(max) = base.max_instances
        && base.min_instances > max
    {
        return Err(out_of_range(
            "min-instances",
            format!("{} is more than max-instances {max}", base.min_instances),
        ));
    }
    Ok(base)
}

mod optional_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&(d.as_millis() as u64)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(|ms| ms.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_change_one_at_a_time_and_are_checked_together() {
        let first = FunctionSettings {
            max_instances: Some(4),
            idle_timeout: Some("30s".parse().unwrap()),
            ..Default::default()
        };
        let base = apply_scaling(&first, Scaling::default()).unwrap();
        assert_eq!(base.max_instances, Some(4));
        assert_eq!(base.idle_timeout, Some(Duration::from_secs(30)));
        let second = FunctionSettings {
            min_instances: Some(2),
            ..Default::default()
        };
        let updated = apply_scaling(&second, base).unwrap();
        assert_eq!((updated.min_instances, updated.max_instances), (2, Some(4)));

        let too_many = FunctionSettings {
            min_instances: Some(5),
            ..Default::default()
        };
        assert!(
            apply_scaling(&too_many, base)
                .unwrap_err()
                .to_string()
                .contains("min-instances")
        );
        for bad in [
            FunctionSettings {
                max_instances: Some(0),
                ..Default::default()
            },
            FunctionSettings {
                queue_timeout: Some("0s".parse().unwrap()),
                ..Default::default()
            },
            FunctionSettings {
                idle_timeout: Some("1ns".parse().unwrap()),
                ..Default::default()
            },
            FunctionSettings {
                reuse: Some(0),
                ..Default::default()
            },
        ] {
            assert!(apply_scaling(&bad, Scaling::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_written_before_scaling_existed_read_as_defaults() {
        let old: Scaling = serde_json::from_str("{}").unwrap();
        assert_eq!(old, Scaling::default());
        let round: Scaling = serde_json::from_str(
            &serde_json::to_string(&Scaling {
                idle_timeout: Some(Duration::from_millis(1500)),
                ..Scaling::default()
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(round.idle_timeout, Some(Duration::from_millis(1500)));
    }
}
