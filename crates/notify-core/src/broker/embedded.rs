//! The embedded broker: publishing goes straight into this process's ingest path. One node,
//! no Redis, always ready. The default when no Redis URL is configured.
//!
//! Every publish gets an id from the region's in-process history, which is also what `?since=`
//! resumes from: the same guarantees as with Redis, for as long as this process lives. A
//! restart starts a new history; a client resuming from the old one is told to resync.

use std::sync::Arc;

use notify_proto::{Notification, Region, StreamId};

use super::{count_resume, PublishReceipt, Replay, ResumeSource};
use crate::history::Lookup;
use crate::ingest::Ingest;

/// In-process broker over one [`Ingest`].
#[derive(Debug)]
pub struct EmbeddedBroker<T> {
    ingest: Arc<Ingest<T>>,
}

impl<T> EmbeddedBroker<T>
where
    T: From<String> + Clone + Send + Sync + 'static,
{
    /// A broker delivering into `ingest`.
    pub fn new(ingest: Arc<Ingest<T>>) -> Self {
        EmbeddedBroker { ingest }
    }

    /// Gives the notification the region's next id and delivers it to this node's clients;
    /// the receipt counts them.
    pub fn publish(&self, notification: &Notification) -> PublishReceipt {
        let mut notification = notification.clone();
        let (id, queued) = self.ingest.deliver_new(&mut notification);
        PublishReceipt {
            subscribers: queued as u64,
            id,
        }
    }

    /// Messages after `since` from the in-process history, or a resync when it does not
    /// reach back that far.
    pub fn replay(&self, region: Region, since: StreamId) -> Replay<T> {
        match self.ingest.replay_from_memory(region, since) {
            Lookup::Entries(entries) => {
                count_resume(ResumeSource::Memory);
                Replay::Entries(entries)
            }
            Lookup::NotCovered => {
                count_resume(ResumeSource::Resync);
                Replay::Resync {
                    latest: self.ingest.last_id(region),
                    reason: "since is not in the retained history",
                }
            }
        }
    }
}
