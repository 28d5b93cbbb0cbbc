//! Administration of the chat service from the admin socket (`waxwing
//! ctl room list|destroy`): requests queued to the service's task, which
//! owns every room, and answered on a oneshot. Only `ctl` and a cluster
//! node's reaper reach this queue; nothing from the network does.

use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

/// Requests the admin socket queues; none waits inside the service.
pub enum Control {
    /// Every room: (JID, occupants, persistent).
    List(oneshot::Sender<Vec<(String, usize, bool)>>),
    /// Destroys a room (§10.9) with an optional reason; false when absent.
    Destroy {
        room: String,
        reason: Option<String>,
        done: oneshot::Sender<bool>,
    },
    /// A cluster node's reaper: a room whose holder died is taken over
    /// now (claimed, loaded, its dead occupants removed), not at its next
    /// stanza, so its survivors see them leave within the liveness TTL.
    Adopt(String),
}

/// Requests queued at once; more are refused as busy.
const QUEUE: usize = 16;

/// The sending side, kept by the `Muc` feature once its task runs.
#[derive(Default)]
pub struct ControlQueue {
    tx: Mutex<Option<mpsc::Sender<Control>>>,
}

impl ControlQueue {
    /// Opens the queue for the service's task.
    pub fn open(&self) -> mpsc::Receiver<Control> {
        let (tx, rx) = mpsc::channel(QUEUE);
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    fn sender(&self) -> Result<mpsc::Sender<Control>, String> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| "the chat service is not running".to_string())
    }

    /// The rooms, sorted by JID.
    pub async fn list(&self) -> Result<Vec<(String, usize, bool)>, String> {
        let (done, answer) = oneshot::channel();
        self.sender()?
            .try_send(Control::List(done))
            .map_err(|_| "the chat service is busy".to_string())?;
        let mut rooms = answer
            .await
            .map_err(|_| "the chat service stopped".to_string())?;
        rooms.sort();
        Ok(rooms)
    }

    /// Has the service take over `room`, whose holder died (waits for
    /// room in the queue: the reaper has many rooms to hand over).
    pub async fn adopt(&self, room: String) -> Result<(), String> {
        self.sender()?
            .send(Control::Adopt(room))
            .await
            .map_err(|_| "the chat service stopped".to_string())
    }

    /// Destroys `room` (a bare room JID); false when there is no such room.
    pub async fn destroy(&self, room: String, reason: Option<String>) -> Result<bool, String> {
        let (done, answer) = oneshot::channel();
        self.sender()?
            .try_send(Control::Destroy { room, reason, done })
            .map_err(|_| "the chat service is busy".to_string())?;
        answer
            .await
            .map_err(|_| "the chat service stopped".to_string())
    }
}
