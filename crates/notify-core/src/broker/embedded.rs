//! The embedded broker: publishing goes straight into this process's ingest path. One node,
//! no Redis, always ready. The default when no Redis URL is configured.

use std::sync::Arc;

use notify_proto::Notification;

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

    /// Delivers to this node's clients; the receipt counts them.
    pub fn publish(&self, notification: &Notification) -> PublishReceipt {
        let queued = self.ingest.deliver(notification);
        PublishReceipt {
            subscribers: queued as u64,
            id: notification.id.clone(),
        }
    }
}
