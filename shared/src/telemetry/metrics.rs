//! What the engine did, counted: one registry per process, read two ways.
//!
//! Lambda functions write what was counted during an invocation as CloudWatch Embedded Metric
//! Format lines (one JSON line per set of labels) when the invocation ends, and start again from
//! zero; CloudWatch turns the lines into metrics, so no API call and no permission is needed.
//! `loyalty serve` keeps the totals and shows them at `GET /metrics` in Prometheus's text format.
//!
//! Labels are bounded: the function, the program, and a small closed set per metric (an
//! outcome, a job, a status class). Never a member: that would be one series per person.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

/// The CloudWatch namespace of every metric (the template's dashboard and alarms read it).
pub const NAMESPACE: &str = "Loyalty";
/// Values of a duration kept between two EMF drains, at most (a Lambda drains every
/// invocation; serve, which is scraped, never does).
const MAX_RECENT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

/// One metric: its CloudWatch name, its unit and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub help: &'static str,
}

const fn count(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        unit: Unit::Count,
        help,
    }
}

const fn millis(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        unit: Unit::Milliseconds,
        help,
    }
}

pub const EVENTS: Metric = count(
    "Events",
    "Events processed, by outcome: queue messages, and webhook deliveries kept as rejected (their redeliveries as duplicates).",
);
pub const POINTS_ISSUED: Metric = count("PointsIssued", "Points credited (earned or pending).");
pub const POINTS_REDEEMED: Metric = count("PointsRedeemed", "Points spent on rewards.");
pub const POINTS_EXPIRED: Metric = count("PointsExpired", "Points that expired.");
pub const POINTS_RETURNED: Metric = count(
    "PointsReturned",
    "Points given back: redemptions an operator reversed, pay-with-points holds voided or expired.",
);
pub const POINTS_CLAWED_BACK: Metric = count(
    "PointsClawedBack",
    "Points taken back by refunds and cancellations.",
);
pub const POINTS_CREDITED: Metric = count(
    "PointsCredited",
    "Points credited by adjustment (an operator's, or an imported balance).",
);
pub const POINTS_DEBITED: Metric =
    count("PointsDebited", "Points an operator debited by adjustment.");
pub const COMMIT_CONFLICTS: Metric = count(
    "CommitConflicts",
    "Commits refused because the account changed meanwhile (each is retried).",
);
pub const QUEUE_SEND_FAILURES: Metric =
    count("QueueSendFailures", "Messages a queue did not take.");
pub const STORAGE_FAULTS: Metric = count(
    "StorageFaults",
    "Store operations the disk failed (full, or an I/O error); each is retried.",
);
pub const OUTBOX_RELAYED: Metric = count("OutboxRelayed", "Outbox messages sent to their queue.");
pub const OUTBOX_SKIPPED: Metric = count(
    "OutboxSkipped",
    "Outbox messages the relay could not read and skipped (to resend by hand).",
);
pub const OUTBOX_LAG: Metric = millis(
    "OutboxLag",
    "Time from a commit to the relay of its outbox message.",
);
pub const JOB_MEMBERS: Metric = count("JobMembers", "Members a job run looked at.");
pub const JOB_CHANGED: Metric = count("JobChanged", "Members a job run changed.");
pub const JOB_FAILED: Metric = count("JobFailed", "Members a job run failed on (retried).");
pub const JOB_RUN_FAILED: Metric = count(
    "JobRunFailed",
    "Job runs that failed or left members failed.",
);
pub const JOB_DURATION: Metric = millis("JobDuration", "Time a job run took for one program.");
pub const COLD_STARTS: Metric = count("ColdStart", "Invocations that started a new process.");
pub const REQUESTS: Metric = count("Requests", "HTTP requests answered, by status class.");

/// Every metric, in the order `/metrics` lists them.
pub const ALL: &[Metric] = &[
    EVENTS,
    POINTS_ISSUED,
    POINTS_REDEEMED,
    POINTS_RETURNED,
    POINTS_EXPIRED,
    POINTS_CLAWED_BACK,
    POINTS_CREDITED,
    POINTS_DEBITED,
    COMMIT_CONFLICTS,
    QUEUE_SEND_FAILURES,
    STORAGE_FAULTS,
    OUTBOX_RELAYED,
    OUTBOX_SKIPPED,
    OUTBOX_LAG,
    JOB_MEMBERS,
    JOB_CHANGED,
    JOB_FAILED,
    JOB_RUN_FAILED,
    JOB_DURATION,
    COLD_STARTS,
    REQUESTS,
];

/// Labels besides the function, sorted by name.
type Labels = Vec<(&'static str, String)>;

/// One series: what was counted since the last flush, and since the process started.
#[derive(Debug, Default)]
struct Series {
    /// Observations since the last EMF flush (one per call for times; a single sum for counts).
    recent: Vec<u64>,
    total: u64,
    observations: u64,
}

#[derive(Default)]
struct Registry {
    series: BTreeMap<(&'static str, Labels), Series>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    series: BTreeMap::new(),
});
static FUNCTION: OnceLock<&'static str> = OnceLock::new();

/// The label that names the function counting. A count may give it (a process that does the
/// work of several functions, as serve does, counts each one's as the stack does); otherwise it
/// is the process's own.
pub const FUNCTION_LABEL: &str = "function";

/// Names the process in every metric (`earn`, `serve`, ...); the first call wins.
pub fn set_function(name: &'static str) {
    let _ = FUNCTION.set(name);
}

fn function() -> &'static str {
    FUNCTION.get().copied().unwrap_or("loyalty")
}

fn labels(given: &[(&'static str, &str)]) -> Labels {
    let mut labels: Labels = given
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (*name, (*value).to_string()))
        .collect();
    labels.sort();
    labels
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while counting cannot leave the map half-written; keep counting.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds `n` to a count.
pub fn add(metric: Metric, given: &[(&'static str, &str)], n: u64) {
    registry().add(metric, given, n);
}

/// Records one observation of a time, to the microsecond: a job run of a small program takes
/// well under a millisecond, which whole milliseconds would record as nothing.
pub fn observe(metric: Metric, given: &[(&'static str, &str)], took: std::time::Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    registry().observe(metric, given, micros);
}

/// What was counted since the last call, as EMF lines, and forgets it (the totals stay).
pub fn drain_emf(timestamp_millis: i64) -> Vec<String> {
    registry().drain_emf(timestamp_millis)
}

/// The totals since the process started, in Prometheus's text format (counts as counters,
/// times as summaries without quantiles: a sum and a count).
pub fn prometheus() -> String {
    registry().prometheus()
}

/// Writes what was counted since the last flush to standard output as EMF lines.
pub fn flush_emf() {
    let now = chrono::Utc::now().timestamp_millis();
    let lines = drain_emf(now);
    if lines.is_empty() {
        return;
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn metric(name: &str) -> Option<Metric> {
    ALL.iter().copied().find(|m| m.name == name)
}

/// CloudWatch's dimension sets for a line's labels: the function alone, the function with the
/// labels other than the program (totals across programs, which alarms read), and all of them.
fn dimension_sets(labels: &Labels) -> Vec<Vec<&'static str>> {
    let mut sets = vec![vec!["function"]];
    let names = || {
        labels
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| *name != "function")
    };
    let without_program: Vec<&'static str> = names().filter(|name| *name != "program").collect();
    if !without_program.is_empty() {
        sets.push([vec!["function"], without_program].concat());
    }
    if labels.iter().any(|(name, _)| *name == "program") {
        sets.push([vec!["function"], names().collect()].concat());
    }
    sets
}

/// The level of the EMF lines: the one Lambda's logging configuration keeps
/// (`AWS_LAMBDA_LOG_LEVEL`), so that metrics pass its filter at any level; INFO without one.
fn emf_level() -> &'static str {
    static LEVEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    LEVEL.get_or_init(|| {
        let configured = std::env::var("AWS_LAMBDA_LOG_LEVEL").unwrap_or_default();
        lambda_level_name(&configured)
    })
}

/// Lambda's name of a level (TRACE, DEBUG, INFO, WARN, ERROR, FATAL); INFO for anything else.
fn lambda_level_name(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "TRACE",
        "DEBUG" => "DEBUG",
        "WARN" => "WARN",
        "ERROR" => "ERROR",
        "FATAL" => "FATAL",
        _ => "INFO",
    }
}

/// EMF allows at most 100 values of one metric in one line.
const EMF_MAX_VALUES: usize = 100;

impl Registry {
    fn add(&mut self, metric: Metric, given: &[(&'static str, &str)], n: u64) {
        let series = self.series.entry((metric.name, labels(given))).or_default();
        // A count of nothing starts the series at zero for `/metrics` (a rate sees the first
        // failure only from a zero before it) and sends no EMF value.
        if n == 0 {
            return;
        }
        match series.recent.first_mut() {
            Some(sum) => *sum += n,
            None => series.recent.push(n),
        }
        series.total += n;
        series.observations += 1;
    }

    /// Times are kept in microseconds and shown in milliseconds, with their fraction.
    fn observe(&mut self, metric: Metric, given: &[(&'static str, &str)], micros: u64) {
        let series = self.series.entry((metric.name, labels(given))).or_default();
        // Drained by each invocation's EMF lines; a process that is only scraped (serve)
        // keeps the sum and the count, and no more than the latest values.
        if series.recent.len() >= MAX_RECENT {
            series.recent.drain(..MAX_RECENT / 2);
        }
        series.recent.push(micros);
        series.total = series.total.saturating_add(micros);
        series.observations += 1;
    }

    fn drain_emf(&mut self, timestamp_millis: i64) -> Vec<String> {
        let mut by_labels: BTreeMap<Labels, Vec<(Metric, Vec<u64>)>> = BTreeMap::new();
        for ((name, labels), series) in self.series.iter_mut() {
            let recent = std::mem::take(&mut series.recent);
            if let (Some(metric), false) = (metric(name), recent.is_empty()) {
                by_labels
                    .entry(labels.clone())
                    .or_default()
                    .push((metric, recent));
            }
        }
        let mut lines = Vec::new();
        for (labels, metrics) in by_labels {
            let chunks = metrics
                .iter()
                .map(|(_, values)| values.len().div_ceil(EMF_MAX_VALUES))
                .max()
                .unwrap_or(0);
            for chunk in 0..chunks {
                let line = emf_line(timestamp_millis, &labels, &metrics, chunk);
                lines.push(line.to_string());
            }
        }
        lines
    }

    fn prometheus(&self) -> String {
        let mut out = String::new();
        for metric in ALL {
            let base = snake(metric.name);
            let (family, kind) = match metric.unit {
                Unit::Count => (format!("{base}_total"), "counter"),
                Unit::Milliseconds => (format!("{base}_milliseconds"), "summary"),
            };
            let _ = writeln!(out, "# HELP {family} {}", metric.help);
            let _ = writeln!(out, "# TYPE {family} {kind}");
            let series = self
                .series
                .iter()
                .filter(|((name, _), _)| *name == metric.name);
            for ((_, labels), s) in series {
                // A series counted for another function (see [`FUNCTION_LABEL`]) names it.
                let mut all = Vec::new();
                if !labels.iter().any(|(name, _)| *name == FUNCTION_LABEL) {
                    all.push((FUNCTION_LABEL, function().to_string()));
                }
                all.extend(labels.iter().cloned());
                let text: Vec<String> = all
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let text = text.join(",");
                match metric.unit {
                    Unit::Count => {
                        let _ = writeln!(out, "{family}{{{text}}} {}", s.total);
                    }
                    Unit::Milliseconds => {
                        let _ = writeln!(out, "{family}_sum{{{text}}} {}", as_millis(s.total));
                        let _ = writeln!(out, "{family}_count{{{text}}} {}", s.observations);
                    }
                }
            }
        }
        out
    }
}

fn emf_line(
    timestamp_millis: i64,
    labels: &Labels,
    metrics: &[(Metric, Vec<u64>)],
    chunk: usize,
) -> serde_json::Value {
    let mut line = serde_json::Map::new();
    // Lambda's log-level filter reads these two: a line without a level, or without a valid
    // RFC 3339 time, is INFO, and a function set to log at WARN would drop every metric.
    line.insert("level".into(), emf_level().into());
    if let Some(time) = chrono::DateTime::from_timestamp_millis(timestamp_millis) {
        let time = time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        line.insert("timestamp".into(), time.into());
    }
    line.insert("function".into(), function().into());
    for (name, value) in labels {
        line.insert((*name).into(), value.clone().into());
    }
    let mut declared = Vec::new();
    for (metric, values) in metrics {
        let start = chunk * EMF_MAX_VALUES;
        let Some(part) = values.get(start..values.len().min(start + EMF_MAX_VALUES)) else {
            continue;
        };
        let value = match (metric.unit, part) {
            (Unit::Count, [one]) => serde_json::json!(one),
            (Unit::Count, many) => serde_json::json!(many),
            (Unit::Milliseconds, [one]) => serde_json::json!(as_millis(*one)),
            (Unit::Milliseconds, many) => {
                serde_json::json!(many.iter().map(|&m| as_millis(m)).collect::<Vec<_>>())
            }
        };
        line.insert(metric.name.into(), value);
        let unit = match metric.unit {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        };
        declared.push(serde_json::json!({"Name": metric.name, "Unit": unit}));
    }
    line.insert(
        "_aws".into(),
        serde_json::json!({
            "Timestamp": timestamp_millis,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimension_sets(labels),
                "Metrics": declared,
            }],
        }),
    );
    serde_json::Value::Object(line)
}

/// Microseconds as milliseconds (`150` as `0.15`): exact for any time shorter than 285 years.
fn as_millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `PointsIssued` as `loyalty_points_issued`.
fn snake(name: &str) -> String {
    let mut out = String::from("loyalty");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test counts in a registry of its own (the process's is shared by parallel tests).

    fn lines_of(program: &str, lines: &[String]) -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["program"] == program)
            .collect()
    }

    #[test]
    fn counts_become_one_emf_line_per_label_set_and_start_again_from_zero() {
        let mut r = Registry::default();
        // GIVEN three applied events and one rejected one in a program
        r.add(EVENTS, &[("program", "emf-a"), ("outcome", "applied")], 1);
        r.add(EVENTS, &[("program", "emf-a"), ("outcome", "applied")], 2);
        r.add(EVENTS, &[("program", "emf-a"), ("outcome", "rejected")], 1);
        r.add(
            POINTS_ISSUED,
            &[("program", "emf-a"), ("outcome", "applied")],
            150,
        );
        // WHEN the registry is drained
        let lines = lines_of("emf-a", &r.drain_emf(1_700_000_000_000));
        // THEN each label set is one line, with its sums and its EMF declaration
        assert_eq!(lines.len(), 2, "{lines:?}");
        let applied = lines.iter().find(|l| l["outcome"] == "applied").unwrap();
        assert_eq!(applied["Events"], 3);
        assert_eq!(applied["PointsIssued"], 150);
        let declared = &applied["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(declared["Namespace"], "Loyalty");
        assert_eq!(
            declared["Dimensions"],
            serde_json::json!([
                ["function"],
                ["function", "outcome"],
                ["function", "outcome", "program"]
            ])
        );
        assert_eq!(applied["_aws"]["Timestamp"], 1_700_000_000_000i64);
        // AND the level and time Lambda's log-level filter reads (INFO with no level set)
        assert_eq!(applied["level"], "INFO");
        assert_eq!(applied["timestamp"], "2023-11-14T22:13:20.000Z");
        // AND a second drain has nothing of them
        assert!(lines_of("emf-a", &r.drain_emf(1)).is_empty());
    }

    #[test]
    fn times_are_sent_as_values_at_most_a_hundred_per_line() {
        let mut r = Registry::default();
        // GIVEN 150 observations of a time
        for ms in 0..150 {
            r.observe(
                JOB_DURATION,
                &[("program", "emf-b"), ("job", "expire")],
                ms * 1000,
            );
        }
        // WHEN drained THEN two lines carry 100 and 50 values, in Milliseconds
        let lines = lines_of("emf-b", &r.drain_emf(0));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["JobDuration"].as_array().unwrap().len(), 100);
        assert_eq!(lines[1]["JobDuration"].as_array().unwrap().len(), 50);
        assert_eq!(
            lines[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"],
            "Milliseconds"
        );
    }

    #[test]
    fn a_time_under_a_millisecond_is_kept_with_its_fraction() {
        let mut r = Registry::default();
        // GIVEN job runs of 0.15 ms and 2.5 ms (a small program's run; before: 0 and 2)
        let labels = [("program", "emf-f"), ("job", "expire")];
        r.observe(JOB_DURATION, &labels, 150);
        r.observe(JOB_DURATION, &labels, 2_500);
        // WHEN read in both formats
        let text = r.prometheus();
        let lines = lines_of("emf-f", &r.drain_emf(0));
        // THEN both say milliseconds with their fraction
        assert_eq!(lines[0]["JobDuration"], serde_json::json!([0.15, 2.5]));
        let series = "{function=\"loyalty\",job=\"expire\",program=\"emf-f\"}";
        assert!(
            text.contains(&format!(
                "loyalty_job_duration_milliseconds_sum{series} 2.65"
            )),
            "{text}"
        );
        // AND the public call takes a duration to the microsecond
        let labels = [("program", "emf-g"), ("job", "expire")];
        observe(
            JOB_DURATION,
            &labels,
            std::time::Duration::from_nanos(1_234_567),
        );
        let series = series.replace("emf-f", "emf-g");
        let text = prometheus();
        assert!(
            text.contains(&format!(
                "loyalty_job_duration_milliseconds_sum{series} 1.234\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_count_made_for_another_function_names_it_once() {
        let mut r = Registry::default();
        // GIVEN a tier check counted as tier-recalc's by a process that is not tier-recalc
        let given = [
            ("program", "fn-a"),
            ("outcome", "applied"),
            (FUNCTION_LABEL, "tier-recalc"),
        ];
        r.add(EVENTS, &given, 1);
        r.add(EVENTS, &[("program", "fn-a"), ("outcome", "applied")], 1);
        // WHEN it is read in both formats
        let text = r.prometheus();
        let lines = lines_of("fn-a", &r.drain_emf(0));
        // THEN its series names that function, once, beside the process's own
        assert!(
            text.contains(
                "loyalty_events_total{function=\"tier-recalc\",outcome=\"applied\",program=\"fn-a\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "loyalty_events_total{function=\"loyalty\",outcome=\"applied\",program=\"fn-a\"} 1"
            ),
            "{text}"
        );
        let tier = lines
            .iter()
            .find(|l| l["function"] == "tier-recalc")
            .unwrap();
        assert_eq!(
            tier["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([
                ["function"],
                ["function", "outcome"],
                ["function", "outcome", "program"]
            ])
        );
    }

    #[test]
    fn prometheus_shows_totals_that_draining_does_not_reset() {
        let mut r = Registry::default();
        // GIVEN counts and times, drained once as EMF
        r.add(POINTS_REDEEMED, &[("program", "prom-c")], 500);
        r.add(POINTS_REDEEMED, &[("program", "prom-c")], 250);
        r.observe(OUTBOX_LAG, &[("program", "prom-c")], 40_000);
        let _ = r.drain_emf(0);
        // WHEN the text format is read
        let text = r.prometheus();
        // THEN the counter has its total and the time its sum and count
        assert!(text.contains("# TYPE loyalty_points_redeemed_total counter"));
        let series = "{function=\"loyalty\",program=\"prom-c\"}";
        assert!(
            text.contains(&format!("loyalty_points_redeemed_total{series} 750")),
            "{text}"
        );
        assert!(text.contains(&format!("loyalty_outbox_lag_milliseconds_sum{series} 40")));
        assert!(text.contains(&format!("loyalty_outbox_lag_milliseconds_count{series} 1")));
    }

    #[test]
    fn a_process_never_drained_keeps_its_totals_and_a_bounded_number_of_times() {
        let mut r = Registry::default();
        // GIVEN a time observed far more often than it is drained (serve is only scraped)
        let n = 3 * MAX_RECENT as u64;
        for _ in 0..n {
            r.observe(
                JOB_DURATION,
                &[("program", "kept"), ("job", "notices")],
                2_000,
            );
        }
        // THEN it keeps at most MAX_RECENT values, and its sum and count are whole
        let kept: usize = r.series.values().map(|s| s.recent.len()).sum();
        assert!(kept <= MAX_RECENT, "{kept}");
        let text = r.prometheus();
        assert!(text.contains(&format!(" {}", 2 * n)), "{text}");
        assert!(text.contains(&format!(" {n}")), "{text}");
    }

    #[test]
    fn a_count_of_nothing_starts_its_series_at_zero_without_an_emf_value() {
        let mut r = Registry::default();
        // GIVEN a job run that did not fail, counted as zero failed runs
        r.add(
            JOB_RUN_FAILED,
            &[("program", "prom-e"), ("job", "expire")],
            0,
        );
        // WHEN the metrics are read THEN the series is there at zero (a rate sees the first
        // failure), and no EMF line is written for it
        let series = "{function=\"loyalty\",job=\"expire\",program=\"prom-e\"}";
        let text = r.prometheus();
        assert!(
            text.contains(&format!("loyalty_job_run_failed_total{series} 0")),
            "{text}"
        );
        assert!(lines_of("prom-e", &r.drain_emf(0)).is_empty());
    }

    #[test]
    fn lambda_s_level_names_are_kept_and_anything_else_is_info() {
        for (given, name) in [("warn", "WARN"), (" Error ", "ERROR"), ("FATAL", "FATAL")] {
            assert_eq!(lambda_level_name(given), name);
        }
        assert_eq!(lambda_level_name("verbose"), "INFO");
        assert_eq!(lambda_level_name(""), "INFO");
    }

    #[test]
    fn label_values_are_escaped_and_empty_labels_left_out() {
        let mut r = Registry::default();
        r.add(EVENTS, &[("program", "prom-\"d\""), ("outcome", "")], 1);
        let text = r.prometheus();
        assert!(
            text.contains(
                "loyalty_events_total{function=\"loyalty\",program=\"prom-\\\"d\\\"\"} 1"
            ),
            "{text}"
        );
    }
}
