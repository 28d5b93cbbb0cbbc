//! The queue in front of an in-process service's task (the chat service,
//! the upload service): `Feature::deliver_to_service` must not wait, so a
//! stanza for the service goes into a bounded channel its task reads.

use std::sync::OnceLock;

use tokio::sync::mpsc;

use crate::sessions::DeliveryError;
use crate::xml::Element;

/// Set once, at the feature's start.
#[derive(Debug, Default)]
pub struct ServiceInbox {
    tx: OnceLock<mpsc::Sender<Element>>,
}

impl ServiceInbox {
    /// Opens the queue with room for `capacity` stanzas; the receiver for
    /// the service's task. None if it was opened already.
    pub fn open(&self, capacity: usize) -> Option<mpsc::Receiver<Element>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.tx.set(tx).ok().map(|()| rx)
    }

    /// Queues `stanza` without waiting: a full queue and a service that
    /// is not running are the router's bounces.
    pub fn deliver(&self, stanza: &Element) -> Result<(), DeliveryError> {
        let tx = self.tx.get().ok_or(DeliveryError::Offline)?;
        tx.try_send(stanza.clone()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DeliveryError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => DeliveryError::Offline,
        })
    }
}
