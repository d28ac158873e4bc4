//! Per-function series of the last day at one-minute resolution, kept in memory within a fixed
//! budget: what `gust fn stats` and the dashboard's charts read. Fed by the same attempt
//! reports as the metrics and usage records, so the three never disagree on what happened.
//!
//! Bounded two ways: a function keeps at most [`MINUTES_KEPT`] minutes, and all functions
//! together at most a budget of bytes; past it the oldest minutes go first, those of the last
//! hour only once nothing older is left, so that a tenant with many functions cannot take
//! another's last hour. A minute with no traffic takes no room.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gust_api_types::{ColdStartPhases, FunctionStats, MinuteStats};
use gust_executor::AttemptReport;
use gust_model::{Name, Namespace};

/// A day of minutes per function.
pub const MINUTES_KEPT: u64 = 24 * 60;
/// Bytes the minutes of all functions may take together (a minute takes 96 bytes, 8 per
/// latency bucket its vector has room for and 48 when it had cold starts, 128 to 680 in
/// all): a day of 17 to 91 functions busy every minute, or the last hour of 410 to 2,200.
pub const DEFAULT_BYTE_BUDGET: usize = 16 * 1024 * 1024;
/// Minutes shed across functions only once nothing older is left.
const PROTECTED_MINUTES: u64 = 60;
/// How far a report may be ahead of this node's clock (another node's, a clock step) and
/// still be counted.
const FUTURE_MINUTES: u64 = 2;

/// Latency buckets: the first ends at 100 µs, each next one 2^¼ (19 %) wider, the last open.
const FIRST_BUCKET_MS: f64 = 0.1;
const BUCKET_STEPS_PER_DOUBLING: f64 = 4.0;
const LAST_BUCKET: u8 = 100; // about 56 minutes: longer than any timeout and queue wait
/// Phases of a cold start ([`gust_executor::StartPhases::in_order`]).
const PHASES: usize = 5;

#[derive(Debug, Default, Clone)]
struct Minute {
    /// Minutes since the Unix epoch.
    at: u64,
    ok: u32,
    client_errors: u32,
    server_errors: u32,
    throttled: u32,
    start_failures: u32,
    cold_starts: u32,
    cold_start_ms: f64,
    /// The phases of the cold starts that measured them, summed; boxed, so that a minute
    /// without cold starts carries a pointer's room for them.
    start_phases: Option<Box<PhaseSums>>,
    /// The attempts' waits for capacity and their runs, summed: with the cold starts, the
    /// phases a caller's latency is made of.
    queue_wait_ms: f64,
    run_ms: f64,
    busy_ms: f64,
    /// (bucket, count), by bucket: only the buckets this minute's latencies fell in.
    latency: Vec<(u8, u32)>,
}

/// The phases of a minute's cold starts that measured them (a connection to a worker already
/// running measured none), in [`gust_executor::StartPhases::in_order`]'s order.
#[derive(Debug, Default, Clone)]
struct PhaseSums {
    starts: u32,
    ms: [f64; PHASES],
}

impl Minute {
    /// What the minute takes in memory, as the budget counts it.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.latency.capacity() * std::mem::size_of::<(u8, u32)>()
            + self
                .start_phases
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<PhaseSums>())
    }

    fn invocations(&self) -> u64 {
        u64::from(self.ok) + u64::from(self.client_errors) + u64::from(self.server_errors)
    }

    fn count_latency(&mut self, ms: f64) {
        let bucket = bucket_of(ms);
        match self.latency.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(at) => self.latency[at].1 += 1,
            Err(at) => self.latency.insert(at, (bucket, 1)),
        }
    }

    /// The upper bound of the bucket the `q` quantile falls in.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|(_, n)| u64::from(*n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, n) in &self.latency {
            seen += u64::from(*n);
            if seen >= rank {
                return Some(upper_bound_ms(*bucket));
            }
        }
        self.latency.last().map(|(b, _)| upper_bound_ms(*b))
    }

    fn view(&self) -> MinuteStats {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let invocations = self.invocations();
        MinuteStats {
            minute: rfc3339(self.at * 60),
            invocations,
            ok: self.ok.into(),
            client_errors: self.client_errors.into(),
            server_errors: self.server_errors.into(),
            throttled: self.throttled.into(),
            start_failures: self.start_failures.into(),
            cold_starts: self.cold_starts.into(),
            cold_start_ms: (self.cold_starts > 0)
                .then(|| round(self.cold_start_ms / f64::from(self.cold_starts))),
            cold_start_phases: self.start_phases.as_ref().map(|phases| {
                let mean = |i: usize| round(phases.ms[i] / f64::from(phases.starts.max(1)));
                ColdStartPhases {
                    prepare_ms: mean(0),
                    worker_ms: mean(1),
                    limits_ms: mean(2),
                    place_ms: mean(3),
                    load_ms: mean(4),
                }
            }),
            queue_wait_ms: (invocations > 0)
                .then(|| round(self.queue_wait_ms / invocations as f64)),
            run_ms: (invocations > 0).then(|| round(self.run_ms / invocations as f64)),
            p50_ms: self.quantile_ms(0.50).map(round),
            p99_ms: self.quantile_ms(0.99).map(round),
            concurrency: round(self.busy_ms / 60_000.0),
        }
    }
}

fn bucket_of(ms: f64) -> u8 {
    if ms <= FIRST_BUCKET_MS {
        return 0;
    }
    let steps = ((ms / FIRST_BUCKET_MS).log2() * BUCKET_STEPS_PER_DOUBLING).ceil();
    steps.min(f64::from(LAST_BUCKET)) as u8
}

fn upper_bound_ms(bucket: u8) -> f64 {
    FIRST_BUCKET_MS * 2f64.powf(f64::from(bucket) / BUCKET_STEPS_PER_DOUBLING)
}

fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

fn minute_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

type FunctionKey = (Namespace, Name);

struct Series {
    functions: HashMap<FunctionKey, VecDeque<Minute>>,
    /// Bytes held across all functions ([`Minute::bytes`]).
    held: usize,
}

/// The per-minute series of every function this node served.
pub struct Stats {
    series: Mutex<Series>,
    budget: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Self::with_budget(DEFAULT_BYTE_BUDGET)
    }
}

impl Stats {
    pub fn with_budget(budget: usize) -> Self {
        Self {
            series: Mutex::new(Series {
                functions: HashMap::new(),
                held: 0,
            }),
            budget: budget.max(1),
        }
    }

    /// Counts an attempt that reached the function in the minute it started, and its run in
    /// each minute the run covered (the concurrency of each).
    pub fn attempt(&self, report: &AttemptReport) {
        let cold = report.cold_start.map(|c| c.start);
        let phases = report
            .cold_start
            .and_then(|c| c.phases)
            .map(|phases| phases.in_order());
        let waited = report.queue_wait + cold.unwrap_or_default();
        let seen_ms = (waited + report.run).as_secs_f64() * 1e3;
        let first = minute_of(report.started_at);
        // Most runs fall in the minute their attempt started: counted with it, in one update.
        let (here, later): (Vec<_>, Vec<_>) = run_by_minute(report.started_at + waited, report.run)
            .into_iter()
            .partition(|(minute, _)| *minute == first);
        let ran_here: Duration = here.iter().map(|(_, ran)| *ran).sum();
        self.update(&report.namespace, &report.function, first, |m| {
            match report.status {
                400..=499 => m.client_errors += 1,
                500.. => m.server_errors += 1,
                _ => m.ok += 1,
            }
            if let Some(cold) = cold {
                m.cold_starts += 1;
                m.cold_start_ms += cold.as_secs_f64() * 1e3;
            }
            if let Some(phases) = phases {
                let sums = m.start_phases.get_or_insert_with(Default::default);
                sums.starts += 1;
                for (sum, time) in sums.ms.iter_mut().zip(phases) {
                    *sum += time.as_secs_f64() * 1e3;
                }
            }
            m.queue_wait_ms += report.queue_wait.as_secs_f64() * 1e3;
            m.run_ms += report.run.as_secs_f64() * 1e3;
            m.busy_ms += ran_here.as_secs_f64() * 1e3;
            m.count_latency(seen_ms);
        });
        for (minute, ran) in later {
            self.update(&report.namespace, &report.function, minute, |m| {
                m.busy_ms += ran.as_secs_f64() * 1e3
            });
        }
    }

    /// Counts a request refused for capacity or quota, now.
    pub fn throttled(&self, namespace: &Namespace, function: &Name) {
        self.update(namespace, function, minute_of(SystemTime::now()), |m| {
            m.throttled += 1
        });
    }

    /// Counts an instance that failed to start for a request, now.
    pub fn start_failed(&self, namespace: &Namespace, function: &Name) {
        self.update(namespace, function, minute_of(SystemTime::now()), |m| {
            m.start_failures += 1
        });
    }

    /// Forgets a deleted function's series.
    pub fn function_deleted(&self, namespace: &Namespace, function: &Name) {
        let mut series = self.series.lock().expect("stats lock is never poisoned");
        if let Some(minutes) = series
            .functions
            .remove(&(namespace.clone(), function.clone()))
        {
            series.held -= minutes.iter().map(Minute::bytes).sum::<usize>();
        }
    }

    /// The minutes of `function` from `since` ago (at most [`MINUTES_KEPT`]) until now.
    pub fn query(&self, namespace: &Namespace, function: &Name, since: Duration) -> FunctionStats {
        let now = minute_of(SystemTime::now());
        let span = (since.as_secs().div_ceil(60)).clamp(1, MINUTES_KEPT);
        let first = now.saturating_sub(span - 1);
        // Copied under the lock, formatted after it: a day's query holds up no attempt.
        let minutes: Vec<Minute> = {
            let series = self.series.lock().expect("stats lock is never poisoned");
            series
                .functions
                .get(&(namespace.clone(), function.clone()))
                .map(|minutes| {
                    minutes
                        .iter()
                        .filter(|m| m.at >= first && m.at <= now)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        FunctionStats {
            namespace: namespace.to_string(),
            function: function.to_string(),
            since: rfc3339(first * 60),
            minutes: minutes.iter().map(Minute::view).collect(),
        }
    }

    fn update(
        &self,
        namespace: &Namespace,
        function: &Name,
        at: u64,
        count: impl FnOnce(&mut Minute),
    ) {
        // Against this node's clock: a report from before the day kept, or from well after
        // now (a clock step), is not counted, so it cannot push the real minutes out.
        let now = minute_of(SystemTime::now());
        if at + MINUTES_KEPT <= now || at > now + FUTURE_MINUTES {
            return;
        }
        let mut guard = self.series.lock().expect("stats lock is never poisoned");
        let series = &mut *guard;
        let key = (namespace.clone(), function.clone());
        let minutes = series.functions.entry(key).or_default();
        // Kept in order: a long request ends after shorter ones that started later.
        let (at_index, before) = match minutes.iter().rposition(|m| m.at <= at) {
            Some(i) if minutes[i].at == at => (i, minutes[i].bytes()),
            found => {
                let i = found.map_or(0, |i| i + 1);
                minutes.insert(
                    i,
                    Minute {
                        at,
                        ..Minute::default()
                    },
                );
                (i, 0)
            }
        };
        count(&mut minutes[at_index]);
        series.held += minutes[at_index].bytes();
        series.held -= before;
        // A day per function: what is older goes.
        while minutes.front().is_some_and(|m| m.at + MINUTES_KEPT <= now) {
            let gone = minutes.pop_front().expect("a front was just seen");
            series.held -= gone.bytes();
        }
        if series.held > self.budget {
            series.shed(self.budget, now);
        }
    }
}

/// The part of a run from `from` for `run` that falls in each minute, by minute.
fn run_by_minute(from: SystemTime, run: Duration) -> Vec<(u64, Duration)> {
    let mut parts = Vec::new();
    let (mut at, mut left) = (from, run);
    while !left.is_zero() && (parts.len() as u64) < MINUTES_KEPT {
        let minute = minute_of(at);
        let next = UNIX_EPOCH + Duration::from_secs((minute + 1) * 60);
        let here = next.duration_since(at).unwrap_or(left).min(left);
        parts.push((minute, here));
        left -= here;
        at = next;
    }
    parts
}

impl Series {
    /// Drops the oldest minutes held until within `budget`: first those before the last
    /// [`PROTECTED_MINUTES`] of any function, then, if that is not enough, the last hour's.
    fn shed(&mut self, budget: usize, now: u64) {
        let protected_from = now.saturating_sub(PROTECTED_MINUTES);
        for may_take_protected in [false, true] {
            while self.held > budget {
                let Some(oldest) = self
                    .functions
                    .values()
                    .filter_map(|minutes| minutes.front().map(|m| m.at))
                    .filter(|at| may_take_protected || *at < protected_from)
                    .min()
                else {
                    break;
                };
                let mut dropped = 0;
                self.functions.retain(|_, minutes| {
                    while minutes.front().is_some_and(|m| m.at == oldest) {
                        dropped += minutes.pop_front().expect("a front was just seen").bytes();
                    }
                    // A buffer sized for a day gives its memory back once mostly empty.
                    if minutes.capacity() > 4 * minutes.len() + 16 {
                        minutes.shrink_to_fit();
                    }
                    !minutes.is_empty()
                });
                self.held -= dropped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gust_executor::{ColdStart, RequestId, StartPhases, TriggerKind};
    use gust_model::Tier;

    use super::*;

    fn report(function: &str, at: SystemTime, status: u16, run_ms: u64) -> AttemptReport {
        AttemptReport {
            id: RequestId::new("r"),
            attempt: 1,
            namespace: Namespace::default(),
            function: Name::parse("function", function).unwrap(),
            revision: 1,
            trigger: TriggerKind::Http,
            started_at: at,
            queue_wait: Duration::ZERO,
            cold_start: None,
            run: Duration::from_millis(run_ms),
            cpu: None,
            memory_mb: 128,
            timeout: Duration::from_secs(60),
            status,
        }
    }

    fn name(function: &str) -> Name {
        Name::parse("function", function).unwrap()
    }

    #[test]
    fn a_minute_counts_statuses_cold_starts_latency_and_concurrency() {
        let stats = Stats::default();
        // The start of this minute: the 1 s run below must not reach into the next one.
        let now = UNIX_EPOCH + Duration::from_secs(minute_of(SystemTime::now()) * 60);
        for _ in 0..98 {
            stats.attempt(&report("f", now, 200, 10));
        }
        stats.attempt(&report("f", now, 404, 10));
        let mut cold = report("f", now, 502, 1000);
        cold.cold_start = Some(ColdStart {
            start: Duration::from_millis(30),
            tier: Tier::Process,
            phases: Some(StartPhases {
                worker: Duration::from_millis(2),
                limits: Duration::from_millis(1),
                place: Duration::from_millis(3),
                load: Duration::from_millis(20),
                ..StartPhases::default()
            }),
        });
        stats.attempt(&cold);
        // A request that joined a running worker waited for no phase: it does not count in
        // the phases' means.
        let mut joined = report("f", now, 200, 10);
        joined.cold_start = Some(ColdStart {
            start: Duration::from_micros(100),
            tier: Tier::Process,
            phases: None,
        });
        stats.attempt(&joined);
        stats.throttled(&Namespace::default(), &name("f"));
        let view = stats.query(&Namespace::default(), &name("f"), Duration::from_secs(3600));
        assert_eq!(view.minutes.len(), 1, "{view:?}");
        let m = &view.minutes[0];
        assert_eq!(
            (m.invocations, m.ok, m.client_errors, m.server_errors),
            (101, 99, 1, 1)
        );
        assert_eq!((m.throttled, m.cold_starts), (1, 2));
        assert_eq!(m.cold_start_ms, Some(15.05));
        assert_eq!(
            m.cold_start_phases,
            Some(ColdStartPhases {
                prepare_ms: 0.0,
                worker_ms: 2.0,
                limits_ms: 1.0,
                place_ms: 3.0,
                load_ms: 20.0,
            })
        );
        // Runs of 99 x 10, 10 and 1,000 ms; no request waited for capacity.
        assert_eq!(m.run_ms, Some(19.802));
        assert_eq!(m.queue_wait_ms, Some(0.0));
        // What DEFAULT_BYTE_BUDGET's comment counts a minute as, before its buckets.
        assert_eq!(std::mem::size_of::<Minute>(), 96);
        // 10 ms falls in the bucket ending within 19 % above it; the slowest is 1,030 ms.
        let p50 = m.p50_ms.unwrap();
        assert!((10.0..=11.9).contains(&p50), "{p50}");
        let p99 = m.p99_ms.unwrap();
        assert!((10.0..=11.9).contains(&p99), "{p99}");
        // 99 x 10 ms + 1,000 ms served in the minute.
        assert!(
            (m.concurrency - 1.99 / 60.0).abs() < 0.001,
            "{}",
            m.concurrency
        );
        assert!(m.minute.ends_with(":00Z"), "{}", m.minute);
    }

    #[test]
    fn the_query_covers_its_span_and_a_late_report_lands_in_its_own_minute() {
        let stats = Stats::default();
        let now = SystemTime::now();
        let ago = |minutes: u64| now - Duration::from_secs(60 * minutes);
        stats.attempt(&report("f", ago(90), 200, 1));
        stats.attempt(&report("f", ago(2), 200, 1));
        stats.attempt(&report("f", now, 200, 1));
        // A long request that started 5 minutes ago ends now.
        stats.attempt(&report("f", ago(5), 200, 1));
        let hour = stats.query(&Namespace::default(), &name("f"), Duration::from_secs(3600));
        assert_eq!(hour.minutes.len(), 3, "{hour:?}");
        let day = stats.query(
            &Namespace::default(),
            &name("f"),
            Duration::from_secs(86_400),
        );
        assert_eq!(day.minutes.len(), 4);
        let order: Vec<_> = day.minutes.iter().map(|m| m.minute.clone()).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "oldest first");
        // A day per function: a report from before it is not kept.
        stats.attempt(&report("f", ago(MINUTES_KEPT + 5), 200, 1));
        let day = stats.query(
            &Namespace::default(),
            &name("f"),
            Duration::from_secs(86_400),
        );
        assert_eq!(day.minutes.len(), 4);
    }

    /// Minutes of all functions, as a query for a day sees them.
    fn minutes(stats: &Stats, functions: &[&str]) -> usize {
        functions
            .iter()
            .map(|f| {
                stats
                    .query(&Namespace::default(), &name(f), Duration::from_secs(86_400))
                    .minutes
                    .len()
            })
            .sum()
    }

    #[test]
    fn past_the_budget_the_oldest_minutes_go_first_and_a_deleted_function_goes_whole() {
        let now = SystemTime::now();
        let one_minute = {
            let probe = Stats::default();
            probe.attempt(&report("p", now, 200, 1));
            probe.series.lock().unwrap().held
        };
        let stats = Stats::with_budget(10 * one_minute);
        for minute in (0..8).rev() {
            let at = now - Duration::from_secs(60 * minute);
            stats.attempt(&report("a", at, 200, 1));
            stats.attempt(&report("b", at, 200, 1));
        }
        assert_eq!(minutes(&stats, &["a", "b"]), 10);
        let day = Duration::from_secs(86_400);
        // The newest minutes stayed.
        let a = stats.query(&Namespace::default(), &name("a"), day);
        assert_eq!(
            a.minutes.last().unwrap().minute,
            rfc3339(minute_of(now) * 60)
        );
        stats.function_deleted(&Namespace::default(), &name("a"));
        let b = stats
            .query(&Namespace::default(), &name("b"), day)
            .minutes
            .len();
        assert_eq!(stats.series.lock().unwrap().held, b * one_minute);
        assert_eq!(minutes(&stats, &["a"]), 0);
    }

    #[test]
    fn many_functions_take_older_minutes_before_anyone_s_last_hour() {
        let now = SystemTime::now();
        let ago = |minutes: u64| now - Duration::from_secs(60 * minutes);
        let stats = Stats::with_budget(usize::MAX);
        stats.attempt(&report("quiet", ago(5), 200, 1));
        stats.attempt(&report("quiet", ago(200), 200, 1));
        let one_minute = stats.series.lock().unwrap().held / 2;
        let stats = Stats::with_budget(12 * one_minute);
        stats.attempt(&report("quiet", ago(200), 200, 1));
        stats.attempt(&report("quiet", ago(5), 200, 1));
        // Another tenant's many functions, each with a minute of the last hour.
        for n in 0..11 {
            stats.attempt(&report(&format!("busy-{n}"), ago(1), 200, 1));
        }
        let quiet = stats.query(
            &Namespace::default(),
            &name("quiet"),
            Duration::from_secs(86_400),
        );
        assert_eq!(
            quiet.minutes.len(),
            1,
            "the old minute went first: {quiet:?}"
        );
        assert_eq!(quiet.minutes[0].minute, rfc3339(minute_of(ago(5)) * 60));
        // Past what the last hour alone fits, the oldest of it goes too.
        stats.attempt(&report("busy-11", ago(1), 200, 1));
        assert_eq!(minutes(&stats, &["quiet"]), 0);
    }

    #[test]
    fn a_long_run_counts_in_every_minute_it_covered_and_a_report_from_the_future_not_at_all() {
        let stats = Stats::default();
        let now = SystemTime::now();
        // Ten minutes of running, started ten minutes ago.
        let long = report("f", now - Duration::from_secs(600), 200, 600_000);
        stats.attempt(&long);
        let view = stats.query(&Namespace::default(), &name("f"), Duration::from_secs(3600));
        let busy: f64 = view.minutes.iter().map(|m| m.concurrency).sum();
        assert!((busy - 10.0).abs() < 0.01, "{busy}: {view:?}");
        assert!(view.minutes.len() >= 10, "{view:?}");
        assert_eq!(view.minutes.iter().map(|m| m.invocations).sum::<u64>(), 1);
        // A clock step ahead: not counted, and nothing real is pushed out.
        stats.attempt(&report("f", now + Duration::from_secs(3 * 86_400), 200, 1));
        let after = stats.query(&Namespace::default(), &name("f"), Duration::from_secs(3600));
        assert_eq!(after, view);
    }

    #[test]
    fn latency_buckets_are_within_a_fifth_of_the_value() {
        for ms in [0.05, 0.1, 0.37, 1.0, 12.5, 480.0, 9_999.0] {
            let upper = upper_bound_ms(bucket_of(ms));
            assert!(
                upper >= ms && upper <= (ms * 1.19).max(0.1) + 1e-9,
                "{ms}: {upper}"
            );
        }
        assert_eq!(bucket_of(1e9), LAST_BUCKET);
        // The longest timeout with its queue wait still has buckets of its own.
        assert!(upper_bound_ms(LAST_BUCKET - 1) > 20.0 * 60_000.0);
    }
}
