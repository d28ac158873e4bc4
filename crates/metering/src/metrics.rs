//! The Prometheus metrics of `/metrics`. Labels are names Gust validated (namespace,
//! function), fixed words (trigger, phase, state) and status codes: never raw paths, ids or
//! other caller-supplied strings.

use std::ops::Deref;

use gust_executor::{AttemptReport, FunctionInstances, TriggerKind};
use gust_model::{Name, Namespace, Tier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    namespace: String,
    function: String,
    trigger: &'static str,
    code: &'static str,
}

/// The `code` label of a status: the codes Gust itself answers and the ones functions commonly
/// use keep their number; any other is its class. A function chooses its status, so the label
/// must not let it create series at will.
fn code_label(status: u16) -> &'static str {
    let text = status.to_string();
    if let Some(named) = CODE_LABELS[..NAMED_CODES]
        .iter()
        .find(|named| **named == text)
    {
        return named;
    }
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Every value the `code` label can take: the named statuses first, then the classes.
const CODE_LABELS: [&str; 30] = [
    "200", "201", "202", "204", "206", "301", "302", "303", "304", "307", "308", "400", "401",
    "403", "404", "405", "408", "409", "413", "422", "429", "500", "502", "503", "504", "2xx",
    "3xx", "4xx", "5xx", "other",
];
const NAMED_CODES: usize = 25;

/// Every value the `phase` label can take, in either tier.
const ALL_PHASES: [&str; 4] = ["queue", "specialize", "instantiate", "first_response"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    namespace: String,
    function: String,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    namespace: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    function: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    namespace: String,
    function: String,
    state: &'static str,
}

/// 100 µs to about 54 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The phases of a cold start in `tier`, in order: waiting for capacity, getting an instance
/// ready, and its first response.
fn cold_start_phases(tier: Tier) -> [&'static str; 3] {
    let start = match tier {
        Tier::Process => "specialize",
        Tier::Wasm => "instantiate",
    };
    ["queue", start, "first_response"]
}

pub struct Metrics {
    registry: Registry,
    invocations: Family<InvocationLabels, Counter>,
    duration: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    cold_starts: Family<FunctionLabels, Counter>,
    cold_start_phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    instances: Family<StateLabels, Gauge>,
    throttled: Family<TriggerLabels, Counter>,
    start_failures: Family<TriggerLabels, Counter>,
    billable_ms: Family<TriggerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let invocations = Family::<InvocationLabels, Counter>::default();
        let duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        let cold_start_phases =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let instances = Family::<StateLabels, Gauge>::default();
        let throttled = Family::<TriggerLabels, Counter>::default();
        let start_failures = Family::<TriggerLabels, Counter>::default();
        let billable_ms = Family::<TriggerLabels, Counter>::default();
        registry.register(
            "gust_function_invocations",
            "Invocation attempts that reached a function, by HTTP status",
            invocations.clone(),
        );
        registry.register(
            "gust_function_duration_seconds",
            "Time from dispatch to an instance until its whole response",
            duration.clone(),
        );
        registry.register(
            "gust_function_cold_starts",
            "Requests that had to start an instance",
            cold_starts.clone(),
        );
        registry.register(
            "gust_function_cold_start_seconds",
            "Where cold starts spent their time: queue, specialize (process) or instantiate (wasm), first_response",
            cold_start_phases.clone(),
        );
        registry.register(
            "gust_function_instances",
            "Instances now, busy or idle",
            instances.clone(),
        );
        registry.register(
            "gust_function_throttled",
            "Requests refused with 429 because every instance was busy and the queue full or too slow",
            throttled.clone(),
        );
        registry.register(
            "gust_function_start_failures",
            "Requests refused with 503 because no instance could be started (no code ran; not billed)",
            start_failures.clone(),
        );
        registry.register(
            "gust_billable_ms",
            "Billed milliseconds (run time rounded up per attempt)",
            billable_ms.clone(),
        );
        Self {
            registry,
            invocations,
            duration,
            cold_starts,
            cold_start_phases,
            instances,
            throttled,
            start_failures,
            billable_ms,
        }
    }

    /// Where other parts of Gust register their own metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn attempt(&self, report: &AttemptReport, billed_ms: u64) {
        let (namespace, function) = (report.namespace.to_string(), report.function.to_string());
        let trigger = TriggerLabels {
            namespace: namespace.clone(),
            function: function.clone(),
            trigger: report.trigger.as_str(),
        };
        self.invocations
            .get_or_create(&InvocationLabels {
                namespace: namespace.clone(),
                function: function.clone(),
                trigger: report.trigger.as_str(),
                code: code_label(report.status),
            })
            .inc();
        self.duration
            .get_or_create(&trigger)
            .observe(report.run.as_secs_f64());
        self.billable_ms.get_or_create(&trigger).inc_by(billed_ms);
        if let Some(cold) = report.cold_start {
            self.cold_start_counter(&namespace, &function).inc();
            let durations = [report.queue_wait, cold.start, report.run];
            for (phase, seconds) in cold_start_phases(cold.tier).into_iter().zip(durations) {
                self.cold_start_phase(&namespace, &function, phase)
                    .observe(seconds.as_secs_f64());
            }
        }
    }

    /// A function's cold-start counter, created if missing.
    fn cold_start_counter(
        &self,
        namespace: &str,
        function: &str,
    ) -> impl Deref<Target = Counter> + '_ {
        self.cold_starts.get_or_create(&FunctionLabels {
            namespace: namespace.to_owned(),
            function: function.to_owned(),
        })
    }

    /// The histogram of one phase of a function's cold starts, created if missing.
    fn cold_start_phase(
        &self,
        namespace: &str,
        function: &str,
        phase: &'static str,
    ) -> impl Deref<Target = Histogram> + '_ {
        self.cold_start_phases.get_or_create(&PhaseLabels {
            namespace: namespace.to_owned(),
            function: function.to_owned(),
            phase,
        })
    }

    /// Creates the cold-start series of a function's first request ahead of it: timed by hand,
    /// this took the metering step of that request from about 33 to 21 µs (its other series
    /// depend on the trigger and status, so they are still made by the request).
    pub fn function_ready(&self, namespace: &Namespace, function: &Name, tier: Tier) {
        let (namespace, function) = (namespace.as_str(), function.as_str());
        drop(self.cold_start_counter(namespace, function));
        for phase in cold_start_phases(tier) {
            drop(self.cold_start_phase(namespace, function, phase));
        }
    }

    /// Drops every series of a deleted function, so that churn does not grow the page.
    pub fn function_deleted(&self, namespace: &Namespace, function: &Name) {
        let (namespace, function) = (namespace.to_string(), function.to_string());
        for trigger in TriggerKind::ALL {
            let labels = TriggerLabels {
                namespace: namespace.clone(),
                function: function.clone(),
                trigger: trigger.as_str(),
            };
            self.duration.remove(&labels);
            self.throttled.remove(&labels);
            self.start_failures.remove(&labels);
            self.billable_ms.remove(&labels);
            for code in CODE_LABELS {
                self.invocations.remove(&InvocationLabels {
                    namespace: namespace.clone(),
                    function: function.clone(),
                    trigger: trigger.as_str(),
                    code,
                });
            }
        }
        self.cold_starts.remove(&FunctionLabels {
            namespace: namespace.clone(),
            function: function.clone(),
        });
        for phase in ALL_PHASES {
            self.cold_start_phases.remove(&PhaseLabels {
                namespace: namespace.clone(),
                function: function.clone(),
                phase,
            });
        }
    }

    pub fn throttled(&self, namespace: &Namespace, function: &Name, trigger: TriggerKind) {
        self.throttled
            .get_or_create(&TriggerLabels {
                namespace: namespace.to_string(),
                function: function.to_string(),
                trigger: trigger.as_str(),
            })
            .inc();
    }

    pub fn start_failed(&self, namespace: &Namespace, function: &Name, trigger: TriggerKind) {
        self.start_failures
            .get_or_create(&TriggerLabels {
                namespace: namespace.to_string(),
                function: function.to_string(),
                trigger: trigger.as_str(),
            })
            .inc();
    }

    /// The exposition text, with instance gauges as they are now.
    pub fn encode(&self, instances: &[FunctionInstances]) -> String {
        self.instances.clear();
        for f in instances {
            for (state, count) in [("busy", f.counts.busy), ("idle", f.counts.idle)] {
                self.instances
                    .get_or_create(&StateLabels {
                        namespace: f.namespace.to_string(),
                        function: f.function.to_string(),
                        state,
                    })
                    .set(count as i64);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_function_shows_its_cold_start_series_at_zero() {
        let metrics = Metrics::new();
        let function = Name::parse("function", "f").unwrap();
        metrics.function_ready(&Namespace::default(), &function, Tier::Wasm);
        let text = metrics.encode(&[]);
        assert!(
            text.contains(r#"gust_function_cold_starts_total{namespace="default",function="f"} 0"#),
            "{text}"
        );
        for phase in ["queue", "instantiate", "first_response"] {
            let count = format!(
                r#"gust_function_cold_start_seconds_count{{namespace="default",function="f",phase="{phase}"}} 0"#
            );
            assert!(text.contains(&count), "{count} missing from:\n{text}");
        }
        assert!(!text.contains(r#"phase="specialize""#), "{text}");
    }

    #[test]
    fn a_deleted_function_leaves_no_series() {
        let metrics = Metrics::new();
        let (namespace, function) = (
            Namespace::default(),
            Name::parse("function", "gone").unwrap(),
        );
        metrics.function_ready(&namespace, &function, Tier::Process);
        metrics.function_ready(&namespace, &function, Tier::Wasm);
        for trigger in TriggerKind::ALL {
            metrics.throttled(&namespace, &function, trigger);
            for status in [200, 299, 404, 503, 599] {
                metrics
                    .invocations
                    .get_or_create(&InvocationLabels {
                        namespace: namespace.to_string(),
                        function: function.to_string(),
                        trigger: trigger.as_str(),
                        code: code_label(status),
                    })
                    .inc();
            }
        }
        assert!(metrics.encode(&[]).contains("gone"));
        metrics.function_deleted(&namespace, &function);
        let text = metrics.encode(&[]);
        assert!(!text.contains("gone"), "{text}");
    }

    #[test]
    fn a_function_cannot_mint_code_labels() {
        let labels: std::collections::HashSet<&str> = (0..=1000).map(code_label).collect();
        assert!(labels.len() <= 30, "{} labels", labels.len());
        assert_eq!(code_label(404), "404");
        assert_eq!(code_label(599), "5xx");
        assert_eq!(code_label(299), "2xx");
    }
}
