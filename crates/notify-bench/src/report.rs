//! The verdict every scenario gives: one client's [`Verdict`], their sum ([`Totals`]), the
//! named checks that failed, and the run's [`Outcome`] — the JSON line on stdout and the exit
//! status — plus the number formatting the reports share.

use std::process::ExitCode;

use serde::Serialize;
use serde_json::{json, Map, Value};

/// What one client got, judged against what it had to get.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Messages it had to get.
    pub expected: u64,
    /// Distinct messages of its region it got.
    pub delivered: u64,
    /// Messages it got exactly once, in order, with a rising id; `None` for scenarios whose
    /// messages carry no id.
    pub exactly_once: Option<u64>,
    /// Expected messages it never got.
    pub lost: u64,
    /// Frames repeating a message already received.
    pub duplicates: u64,
    /// Times its sequence jumped ahead.
    pub gaps: u64,
    /// Messages received after a later one, or without a rising id.
    pub out_of_order: u64,
    /// `resync` control messages received.
    pub resyncs: u64,
    /// Messages skipped right after a `resync` (the gateway said history did not reach back):
    /// not received, and not counted as lost.
    pub resynced: u64,
    /// Frames that were not exactly a published message.
    pub corrupt: u64,
    /// Frames of another region.
    pub wrong_region: u64,
    /// Valid notifications this run did not publish.
    pub unexpected: u64,
    /// Messages that came without an `id`.
    pub missing_id: u64,
    /// Whether the gateway closed the connection before the client left.
    pub dropped_by_server: bool,
}

/// Sums of every client's verdict.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Totals {
    /// Clients judged.
    pub clients: u64,
    /// Messages published, when the scenario counts them here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u64>,
    /// Deliveries that had to happen.
    pub expected_deliveries: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Deliveries exactly once, in order, with a rising id (scenarios with ids only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exactly_once: Option<u64>,
    /// Required deliveries that never happened.
    pub lost: u64,
    /// Repeated frames.
    pub duplicates: u64,
    /// Skips in a client's sequence.
    pub gaps: u64,
    /// Messages received after a later one, or without a rising id.
    pub out_of_order: u64,
    /// `resync` control messages received.
    pub resyncs: u64,
    /// Messages skipped right after a `resync`.
    pub resynced: u64,
    /// Frames that were not exactly a published message.
    pub corrupt: u64,
    /// Frames of another region.
    pub wrong_region: u64,
    /// Valid notifications this run did not publish (another publisher on the same gateway).
    pub unexpected: u64,
    /// Messages without an `id` where one was due.
    pub missing_id: u64,
    /// Clients the gateway disconnected before they left.
    pub dropped_by_server: u64,
}

impl Totals {
    /// Adds one client's verdict.
    pub fn add(&mut self, verdict: &Verdict) {
        self.clients += 1;
        self.expected_deliveries += verdict.expected;
        self.delivered += verdict.delivered;
        if let Some(exactly_once) = verdict.exactly_once {
            *self.exactly_once.get_or_insert(0) += exactly_once;
        }
        self.lost += verdict.lost;
        self.duplicates += verdict.duplicates;
        self.gaps += verdict.gaps;
        self.out_of_order += verdict.out_of_order;
        self.resyncs += verdict.resyncs;
        self.resynced += verdict.resynced;
        self.corrupt += verdict.corrupt;
        self.wrong_region += verdict.wrong_region;
        self.unexpected += verdict.unexpected;
        self.missing_id += verdict.missing_id;
        self.dropped_by_server += u64::from(verdict.dropped_by_server);
    }

    /// `exactly_once / expected_deliveries` in percent, rounded down (see [`percentage`]).
    pub fn exactly_once_pct(&self) -> Option<f64> {
        percentage(self.exactly_once?, self.expected_deliveries)
    }

    /// The delivery checks that failed, by name; empty when every delivery was right.
    /// `allow_resyncs`: a `resync` (and the messages it announced as gone) is an accepted
    /// answer, counted, not a failure.
    pub fn failures(&self, allow_resyncs: bool) -> Vec<String> {
        let mut failed = Vec::new();
        let expected = if allow_resyncs {
            self.expected_deliveries.saturating_sub(self.resynced)
        } else {
            self.expected_deliveries
        };
        if let Some(exactly_once) = self.exactly_once {
            if exactly_once != expected {
                failed.push(format!(
                    "exactly once: {exactly_once} of {expected} deliveries"
                ));
            }
        }
        let resyncs = if allow_resyncs { 0 } else { self.resyncs };
        for (name, count) in [
            ("lost", self.lost),
            ("duplicates", self.duplicates),
            ("gaps", self.gaps),
            ("out of order", self.out_of_order),
            ("resyncs", resyncs),
            ("corrupt", self.corrupt),
            ("wrong region", self.wrong_region),
            ("without id", self.missing_id),
            ("dropped by the gateway", self.dropped_by_server),
        ] {
            if count > 0 {
                failed.push(format!("{name}: {count}"));
            }
        }
        failed
    }

    /// The one-line human summary on stderr.
    pub fn summary_line(&self) -> String {
        format!(
            "checked {} clients: {} expected, {} delivered, exactly once {} ({}), lost {}, duplicates {}, gaps {}, out of order {}, resyncs {} ({} messages resynced), corrupt {}, wrong region {}, unexpected {}, without id {}, dropped by gateway {}",
            self.clients,
            self.expected_deliveries,
            self.delivered,
            show(self.exactly_once),
            self.exactly_once_pct()
                .map_or_else(|| "n/a".to_owned(), |pct| format!("{pct:.3}%")),
            self.lost,
            self.duplicates,
            self.gaps,
            self.out_of_order,
            self.resyncs,
            self.resynced,
            self.corrupt,
            self.wrong_region,
            self.unexpected,
            self.missing_id,
            self.dropped_by_server,
        )
    }
}

/// A finished run: its JSON report and the checks that failed.
#[derive(Debug)]
pub struct Outcome {
    /// The report; `ok` and `failures` are added by [`Outcome::new`].
    pub report: Value,
    /// What failed, one named check each; empty for a passing run.
    pub failures: Vec<String>,
}

impl Outcome {
    /// Completes `report` with `"failures"` and `"ok"`.
    pub fn new(mut report: Map<String, Value>, failures: Vec<String>) -> Self {
        report.insert("failures".into(), json!(failures));
        report.insert("ok".into(), json!(failures.is_empty()));
        Outcome {
            report: Value::Object(report),
            failures,
        }
    }

    /// Prints the JSON line on stdout and, when the run failed, which checks did on stderr;
    /// exit status 1 for a failed run unless `allow_failure`, else 0.
    pub fn finish(self, allow_failure: bool) -> ExitCode {
        println!("{}", self.report);
        if self.failures.is_empty() {
            return ExitCode::SUCCESS;
        }
        eprintln!("notify-bench: FAILED: {}", self.failures.join("; "));
        if allow_failure {
            eprintln!("notify-bench: exiting 0 (--allow-loss)");
            return ExitCode::SUCCESS;
        }
        ExitCode::from(1)
    }
}

/// `part / whole` in percent, rounded *down* to three decimals (so anything short of every
/// delivery never shows as 100.000).
pub fn percentage(part: u64, whole: u64) -> Option<f64> {
    if whole == 0 {
        return None;
    }
    let thousandths = (u128::from(part) * 100_000) / u128::from(whole);
    Some(thousandths as f64 / 1000.0)
}

/// The `q` quantile of an ascending slice (nearest rank).
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// `value`, or `?` when it is unknown.
pub fn show<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |value| value.to_string())
}

/// Rounded to one decimal.
pub fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Rounded to three decimals.
pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_never_round_up_to_complete() {
        assert_eq!(percentage(10, 10), Some(100.0));
        assert_eq!(percentage(999_999, 1_000_000), Some(99.999));
        assert_eq!(percentage(9_999_999, 10_000_000), Some(99.999));
        assert_eq!(percentage(0, 0), None);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(quantile(&[1, 2, 3, 4], 0.99), Some(4));
    }

    #[test]
    fn failures_name_what_went_wrong() {
        let mut totals = Totals::default();
        totals.add(&Verdict {
            expected: 4,
            delivered: 4,
            exactly_once: Some(4),
            ..Verdict::default()
        });
        assert!(totals.failures(false).is_empty());
        totals.add(&Verdict {
            expected: 4,
            delivered: 2,
            exactly_once: Some(2),
            lost: 2,
            resyncs: 1,
            resynced: 2,
            ..Verdict::default()
        });
        let strict = totals.failures(false);
        assert!(
            strict.iter().any(|failure| failure.starts_with("resyncs")),
            "{strict:?}"
        );
        assert!(
            strict
                .iter()
                .any(|failure| failure.starts_with("exactly once")),
            "{strict:?}"
        );
        // With resyncs accepted, the 2 messages the resync announced are not owed, but the 2
        // lost ones still are.
        let lenient = totals.failures(true);
        assert!(
            lenient.iter().any(|failure| failure.starts_with("lost")),
            "{lenient:?}"
        );
        assert!(
            !lenient.iter().any(|failure| failure.starts_with("resyncs")),
            "{lenient:?}"
        );
    }
}
