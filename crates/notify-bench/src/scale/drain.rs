//! When a phase of `scale` is over, and how its deliveries are judged.
//!
//! After a phase's last publish the run polls its client processes until every client has
//! every message of its region, or until the clients' missing count has not moved for
//! `--drain-grace` (or the run's `--timeout` ends). A saturated box delivers seconds after
//! the last publish, and that is late, not lost: the wait goes on for as long as deliveries
//! progress. What is still missing when it ends is lost, reported by gateway and region
//! (clients, messages, `seq` range) and failing the run. Each phase also reports its drain
//! time: from the last publish to the last delivery.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::report::round3;
use crate::scale::wire::{Deliveries, LostGroup};
use crate::scale::workers::Workers;

/// How often the run asks the client processes what they still miss.
const POLL: Duration = Duration::from_millis(100);
/// The wait ends this long before the run's `--timeout`, so the deliveries can still be
/// collected and reported.
const REPORT_MARGIN: Duration = Duration::from_secs(5);

/// Why the wait after a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainEnd {
    /// Every client had every message.
    AllDelivered,
    /// Nothing arrived for `--drain-grace` while messages were missing.
    NoProgress,
    /// The run's `--timeout` ended first.
    Timeout,
}

/// A phase's deliveries once its wait is over.
#[derive(Debug)]
pub struct Drained {
    /// Summed over every client process; `lost` is what was still missing.
    pub deliveries: Deliveries,
    /// From the phase's last publish (when Redis answered it) to the last delivery seen,
    /// seconds; 0 when every delivery came before that answer.
    pub drain_secs: f64,
    /// How long the wait lasted, seconds.
    pub waited_secs: f64,
    /// Why it ended.
    pub ended: DrainEnd,
    /// The grace it was given.
    pub grace: Duration,
}

/// Waits until the clients have `counts` (published per region, the last at wall clock
/// `last_publish_ns`) or nothing arrived for `grace`, then collects the deliveries.
pub async fn drain(
    workers: &mut Workers,
    counts: &[u64],
    last_publish_ns: u64,
    grace: Duration,
    deadline: Instant,
) -> Result<Drained> {
    let started = Instant::now();
    let mut last_missing = u64::MAX;
    let mut last_progress = started;
    let ended = loop {
        let progress = workers.progress(counts, deadline).await?;
        let now = Instant::now();
        if progress.missing == 0 {
            break DrainEnd::AllDelivered;
        }
        if progress.missing != last_missing {
            last_missing = progress.missing;
            last_progress = now;
        } else if now - last_progress >= grace {
            break DrainEnd::NoProgress;
        }
        if now + REPORT_MARGIN >= deadline {
            break DrainEnd::Timeout;
        }
        tokio::time::sleep(POLL).await;
    };
    let waited_secs = started.elapsed().as_secs_f64();
    let deliveries = workers.expect(counts, deadline).await?;
    let drain_secs = deliveries.last_delivery_ns.saturating_sub(last_publish_ns) as f64 / 1e9;
    Ok(Drained {
        deliveries,
        drain_secs,
        waited_secs,
        ended,
        grace,
    })
}

impl Drained {
    /// The checks the phase fails: anything lost, duplicated, skipped or resynced.
    pub fn failures(&self, phase: &str) -> Vec<String> {
        let deliveries = &self.deliveries;
        let mut failures = Vec::new();
        if deliveries.lost > 0 {
            failures.push(format!(
                "{phase}: lost: {} deliveries to {} clients ({})",
                deliveries.lost,
                deliveries
                    .lost_detail
                    .iter()
                    .map(|group| group.clients)
                    .sum::<u64>(),
                self.why_ended(),
            ));
        }
        for (what, count) in [
            ("duplicates", deliveries.duplicates),
            ("gaps", deliveries.gaps),
            ("resyncs", deliveries.resyncs),
        ] {
            if count > 0 {
                failures.push(format!("{phase}: {what}: {count}"));
            }
        }
        failures
    }

    /// Prints the phase's drain and, when something was lost, one line per gateway and region.
    pub fn print(&self, phase: &str) {
        let deliveries = &self.deliveries;
        eprintln!(
            "scale: {phase}: drained {:.3} s after the last publish (waited {:.3} s, {}); \
             lost {}, arrived after being reported lost {}",
            self.drain_secs,
            self.waited_secs,
            self.why_ended(),
            deliveries.lost,
            deliveries.arrived_after_reported_lost,
        );
        for group in &deliveries.lost_detail {
            eprintln!("scale: {phase}: lost: {}", describe(group));
        }
    }

    /// The phase's deliveries, drain and losses as the report gives them.
    pub fn to_json(&self) -> Value {
        let deliveries = &self.deliveries;
        json!({
            "clients": deliveries.clients,
            "expected": deliveries.expected,
            "received": deliveries.received,
            "lost": deliveries.lost,
            "duplicates": deliveries.duplicates,
            "gaps": deliveries.gaps,
            "resyncs": deliveries.resyncs,
            "arrived_after_reported_lost": deliveries.arrived_after_reported_lost,
            "drain_secs": round3(self.drain_secs),
            "waited_secs": round3(self.waited_secs),
            "wait_ended": self.ended,
            "drain_grace_secs": self.grace.as_secs_f64(),
            "lost_detail": deliveries.lost_detail,
        })
    }

    fn why_ended(&self) -> String {
        match self.ended {
            DrainEnd::AllDelivered => "every message delivered".into(),
            DrainEnd::NoProgress => format!("nothing arrived for {:?}", self.grace),
            DrainEnd::Timeout => "--timeout ended the wait".into(),
        }
    }
}

/// One line for a group of lost messages.
fn describe(group: &LostGroup) -> String {
    let first = if group.from_seq == group.from_seq_highest {
        group.from_seq.to_string()
    } else {
        format!("{}..={}", group.from_seq, group.from_seq_highest)
    };
    format!(
        "gateway {}, region {}: {} clients ({} connected) miss {} messages, seq {}..={} \
         (first missing seq {first})",
        group.gateway,
        group.region,
        group.clients,
        group.connected,
        group.messages,
        group.from_seq,
        group.to_seq,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(lost_detail: Vec<LostGroup>) -> Drained {
        Drained {
            deliveries: Deliveries {
                lost: lost_detail.iter().map(|group| group.messages).sum(),
                lost_detail,
                ..Deliveries::default()
            },
            drain_secs: 1.5,
            waited_secs: 3.5,
            ended: DrainEnd::NoProgress,
            grace: Duration::from_secs(2),
        }
    }

    #[test]
    fn lost_messages_fail_the_phase_and_name_gateway_region_and_seqs() {
        assert!(drained(Vec::new()).failures("fan-out").is_empty());
        let group = LostGroup {
            gateway: 3,
            region: "AE".into(),
            clients: 4,
            connected: 4,
            messages: 10,
            from_seq: 95,
            from_seq_highest: 97,
            to_seq: 99,
        };
        let phase = drained(vec![group.clone()]);
        assert_eq!(
            phase.failures("fan-out at 10/s"),
            ["fan-out at 10/s: lost: 10 deliveries to 4 clients (nothing arrived for 2s)"]
        );
        assert_eq!(
            describe(&group),
            "gateway 3, region AE: 4 clients (4 connected) miss 10 messages, seq 95..=99 \
             (first missing seq 95..=97)"
        );
        let report = phase.to_json();
        assert_eq!(report["lost"], 10);
        assert_eq!(report["wait_ended"], "no_progress");
        assert_eq!(report["lost_detail"][0]["gateway"], 3);
    }
}
