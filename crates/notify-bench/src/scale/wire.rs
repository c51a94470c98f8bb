//! What the `scale` run and its client processes say to each other: one JSON object per
//! line, commands on the child's stdin, answers on its stdout (its stderr is for people).
//! Every command gets exactly one answer, so the run reads one line per child per command.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// From the run to a client process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// How many clients are connected now, and how many reconnects they made so far.
    Status,
    /// `counts[r]` messages of region index `r` were published: wait until every client has
    /// them (bounded), then report the deliveries and latencies since the last `expect`.
    Expect {
        /// Published so far, per region index.
        counts: Vec<u64>,
    },
    /// Close every client and exit.
    Stop,
}

/// From a client process to the run.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every client made its first connection attempt (the answer to starting up).
    Connected {
        /// Clients whose first handshake succeeded.
        ok: u64,
        /// Clients whose first handshake failed (they keep retrying).
        failed: u64,
        /// A few of the errors.
        errors: Vec<String>,
    },
    /// The answer to [`Command::Status`].
    Status {
        /// Clients with an open connection.
        connected: u64,
        /// Connections opened after a client's first one.
        reconnects: u64,
    },
    /// The answer to [`Command::Expect`].
    Delivered(Deliveries),
    /// The answer to [`Command::Stop`].
    #[default]
    Stopped,
}

/// Deliveries of one phase, summed over a process's clients (and then over processes).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Deliveries {
    /// Clients counted.
    pub clients: u64,
    /// Messages the clients should have, in all (their region's published count each).
    pub expected: u64,
    /// Messages received exactly once, in order (cumulative since the start).
    pub received: u64,
    /// Messages not received by the end of the wait (`expected - received`).
    pub missing: u64,
    /// Frames of a message already received.
    pub duplicates: u64,
    /// Messages skipped (a later `seq` arrived first).
    pub gaps: u64,
    /// `resync` control messages.
    pub resyncs: u64,
    /// Publish-to-client latency of this phase's deliveries: `(microseconds, count)` of each
    /// non-empty HDR histogram bucket, so the run can add up the processes' histograms.
    pub latency_us: Vec<(u64, u64)>,
}

impl Deliveries {
    /// Adds another process's deliveries.
    pub fn add(&mut self, other: &Deliveries) {
        self.clients += other.clients;
        self.expected += other.expected;
        self.received += other.received;
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.gaps += other.gaps;
        self.resyncs += other.resyncs;
        self.latency_us.extend_from_slice(&other.latency_us);
    }
}

/// Nanoseconds since the Unix epoch: the clock publish times are stamped with, shared by every
/// process on the machine (unlike [`crate::messages::now_ns`], which is per process).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_events_are_one_json_line_each() {
        let line = serde_json::to_string(&Command::Expect { counts: vec![3, 4] }).unwrap();
        assert_eq!(line, r#"{"cmd":"expect","counts":[3,4]}"#);
        let event = Event::Delivered(Deliveries {
            clients: 2,
            latency_us: vec![(150, 2)],
            ..Deliveries::default()
        });
        let line = serde_json::to_string(&event).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Event>(&line).unwrap() {
            Event::Delivered(deliveries) => assert_eq!(deliveries.latency_us, [(150, 2)]),
            other => panic!("{other:?}"),
        }
    }
}
