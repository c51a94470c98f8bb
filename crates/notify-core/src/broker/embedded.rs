//! The embedded broker: publishing goes straight into this process's ingest path. One node,
//! no Redis, always ready. The default when no Redis URL is configured.
//!
//! Every publish gets an id from the region's in-process history, which is also what `?since=`
//! resumes from, a page at a time: the same guarantees as with Redis, for as long as this
//! process lives. A restart starts a new history; a client resuming from the old one is told
//! to resync.

use std::sync::Arc;

use notify_proto::{Notification, Reach};

use super::replay::{ReplayCursor, ReplayStep};
use super::PublishReceipt;
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
            reach: Reach::Clients(queued as u64),
            id,
        }
    }

    /// The ingest path it delivers into.
    pub fn ingest(&self) -> &Ingest<T> {
        &self.ingest
    }

    /// The next page of `cursor`'s replay from the in-process history, or a resync when it
    /// does not reach back to the cursor (any more).
    pub fn replay_step(&self, cursor: &mut ReplayCursor) -> ReplayStep<T> {
        if cursor.finished() {
            return ReplayStep::Done;
        }
        match cursor.memory_page(&self.ingest) {
            Some(step) => step,
            None => {
                let latest = self.ingest.last_id(cursor.region());
                cursor.resync(latest, "since is not in the retained history")
            }
        }
    }
}
