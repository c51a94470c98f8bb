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
    /// `counts[r]` messages of region index `r` were published: how many of them the
    /// clients still miss, now (answered at once; the run polls it while a phase drains).
    Progress {
        /// Published so far, per region index.
        counts: Vec<u64>,
    },
    /// `counts[r]` messages of region index `r` were published and the phase's wait is over:
    /// report the deliveries, what is still missing (as lost, by gateway and region) and the
    /// latencies since the last `expect`.
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
    /// The answer to [`Command::Progress`].
    Progress {
        /// Messages the clients do not have yet, in all.
        missing: u64,
        /// Wall-clock time of the latest delivery ([`wall_ns`]), 0 before the first.
        last_delivery_ns: u64,
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
    /// Messages not received when the phase's wait ended (`expected - received`): lost,
    /// detailed in [`Deliveries::lost_detail`].
    pub lost: u64,
    /// Messages reported lost by an earlier `expect` that have arrived since (in order, so
    /// they were late, not lost).
    pub arrived_after_reported_lost: u64,
    /// Wall-clock time of the latest delivery ([`wall_ns`]), 0 before the first.
    pub last_delivery_ns: u64,
    /// The lost messages by gateway and region.
    pub lost_detail: Vec<LostGroup>,
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
        self.lost += other.lost;
        self.arrived_after_reported_lost += other.arrived_after_reported_lost;
        self.last_delivery_ns = self.last_delivery_ns.max(other.last_delivery_ns);
        self.duplicates += other.duplicates;
        self.gaps += other.gaps;
        self.resyncs += other.resyncs;
        self.latency_us.extend_from_slice(&other.latency_us);
        for group in &other.lost_detail {
            self.add_lost(group);
        }
    }

    /// Adds `group` to the group of the same gateway and region (or as a new one).
    pub fn add_lost(&mut self, group: &LostGroup) {
        match self
            .lost_detail
            .iter_mut()
            .find(|known| known.gateway == group.gateway && known.region == group.region)
        {
            Some(known) => known.merge(group),
            None => {
                self.lost_detail.push(group.clone());
                self.lost_detail
                    .sort_by(|a, b| (a.gateway, &a.region).cmp(&(b.gateway, &b.region)));
            }
        }
    }
}

/// Lost messages of the clients of one region last connected to one gateway. Each client
/// misses the tail of its region's messages (a client gets them in order, and a skipped one
/// would be a gap): `from_seq..=to_seq` is the union of those tails.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostGroup {
    /// The gateway's index (the one each client is connected to, or was last).
    pub gateway: usize,
    /// The region.
    pub region: String,
    /// Clients missing messages.
    pub clients: u64,
    /// Of those, how many had an open connection when the wait ended.
    pub connected: u64,
    /// Messages missing, over those clients.
    pub messages: u64,
    /// The lowest `seq` some client misses.
    pub from_seq: u64,
    /// The highest first missing `seq` of a client (equal to `from_seq` when every client
    /// stopped at the same message).
    pub from_seq_highest: u64,
    /// The last `seq` published to the region.
    pub to_seq: u64,
}

impl LostGroup {
    /// Adds the clients and messages of `other` (same gateway and region).
    pub fn merge(&mut self, other: &LostGroup) {
        self.clients += other.clients;
        self.connected += other.connected;
        self.messages += other.messages;
        self.from_seq = self.from_seq.min(other.from_seq);
        self.from_seq_highest = self.from_seq_highest.max(other.from_seq_highest);
        self.to_seq = self.to_seq.max(other.to_seq);
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
    fn lost_groups_merge_by_gateway_and_region() {
        let group = |gateway: usize, region: &str, from_seq: u64| LostGroup {
            gateway,
            region: region.into(),
            clients: 2,
            connected: 1,
            messages: 2 * (10 - from_seq),
            from_seq,
            from_seq_highest: from_seq,
            to_seq: 9,
        };
        let mut total = Deliveries::default();
        total.add(&Deliveries {
            lost: 8,
            lost_detail: vec![group(1, "FI", 6)],
            last_delivery_ns: 5,
            ..Deliveries::default()
        });
        total.add(&Deliveries {
            lost: 20,
            lost_detail: vec![group(1, "FI", 8), group(0, "AE", 5)],
            last_delivery_ns: 3,
            ..Deliveries::default()
        });
        assert_eq!(total.lost, 28);
        assert_eq!(total.last_delivery_ns, 5);
        assert_eq!(total.lost_detail.len(), 2);
        assert_eq!(total.lost_detail[0], group(0, "AE", 5));
        let finnish = &total.lost_detail[1];
        assert_eq!(
            (finnish.clients, finnish.connected, finnish.messages),
            (4, 2, 12)
        );
        assert_eq!(
            (finnish.from_seq, finnish.from_seq_highest, finnish.to_seq),
            (6, 8, 9)
        );
    }

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
