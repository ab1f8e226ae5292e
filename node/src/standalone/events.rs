//! What happened to `skiff run` containers (`create`, `start`, `die`, `destroy`), in
//! order, for `docker events`: the last [`KEPT`] for `--since`, then as they happen.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::state::ContainerRecord;

/// Events kept for clients that ask for past ones.
pub(crate) const KEPT: usize = 1024;

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContainerEvent {
    /// Nanoseconds since the Unix epoch.
    pub(crate) at_ns: u128,
    /// `create`, `start`, `die`, `destroy`.
    pub(crate) action: &'static str,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    /// For `die`.
    pub(crate) exit_code: Option<i32>,
}

/// The node's container events.
pub(crate) struct ContainerEvents {
    kept: Mutex<VecDeque<Arc<ContainerEvent>>>,
    live: broadcast::Sender<Arc<ContainerEvent>>,
}

impl Default for ContainerEvents {
    fn default() -> Self {
        Self {
            kept: Mutex::new(VecDeque::with_capacity(KEPT)),
            live: broadcast::channel(KEPT).0,
        }
    }
}

impl ContainerEvents {
    pub(crate) fn record(&self, action: &'static str, r: &ContainerRecord, exit_code: Option<i32>) {
        let at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let event = Arc::new(ContainerEvent {
            at_ns,
            action,
            id: r.id.clone(),
            name: r.spec.name.to_string(),
            image: r.image_ref.clone(),
            labels: r.labels.clone(),
            exit_code,
        });
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(event.clone());
        // Sent under the lock, so a subscriber that read `kept` misses nothing.
        let _ = self.live.send(event);
    }

    /// The events kept, and every later one.
    pub(crate) fn subscribe(
        &self,
    ) -> (
        Vec<Arc<ContainerEvent>>,
        broadcast::Receiver<Arc<ContainerEvent>>,
    ) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        (kept.iter().cloned().collect(), self.live.subscribe())
    }
}
