//! Containers: one running replica of an app, the unit the gateway balances over.

use std::fmt;
use std::sync::{Arc, Mutex};

use skiff_gateway::{Endpoint, Load};
use skiff_runtime::Workload;
use skiff_spec::AppName;
use skiff_spec::api::ContainerStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A container's lifecycle. Transitions go forward only; see [`ContainerState::can_move_to`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Being linked.
    Starting,
    /// Taking requests.
    Ready,
    /// Replaced or removed: finishing the requests it has, taking no new ones.
    Draining,
    /// Done.
    Stopped,
    /// Could not start, with the reason.
    Failed(String),
}

impl ContainerState {
    /// Whether moving from `self` to `next` is a legal step.
    pub fn can_move_to(&self, next: &ContainerState) -> bool {
        use ContainerState::*;
        matches!(
            (self, next),
            (Starting, Ready)
                | (Starting, Failed(_))
                | (Ready, Draining)
                | (Draining, Stopped)
                | (Starting, Stopped)
        )
    }

    fn label(&self) -> String {
        match self {
            ContainerState::Starting => "starting".into(),
            ContainerState::Ready => "ready".into(),
            ContainerState::Draining => "draining".into(),
            ContainerState::Stopped => "stopped".into(),
            ContainerState::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// An illegal lifecycle step: a bug, reported rather than ignored.
#[derive(Debug, thiserror::Error)]
#[error("container {container}: cannot go from {from:?} to {to:?}")]
pub struct TransitionError {
    container: String,
    from: ContainerState,
    to: ContainerState,
}

/// One replica: its workload, its concurrency permits and its state.
pub struct Container {
    /// 64 random hex digits, as Docker's ids.
    pub id: String,
    /// `<app>-<spec hash>-<n>` for replicas, the container's own name otherwise.
    pub name: String,
    /// The app it belongs to.
    pub app: AppName,
    /// When it started (Unix ms).
    pub started_ms: u64,
    workload: Workload,
    permits: Arc<Semaphore>,
    concurrency: u32,
    state: Mutex<ContainerState>,
    /// Paths it answers (empty: all), from its image.
    routes: Vec<String>,
    /// Requests in flight and latency, for the balancers.
    load: Load,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

impl Container {
    /// A container in state `Starting`.
    pub fn new(
        name: String,
        app: AppName,
        workload: Workload,
        concurrency: u32,
        started_ms: u64,
        routes: Vec<String>,
    ) -> Self {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).expect("the OS has randomness");
        Self {
            id: hex::encode(id),
            name,
            app,
            started_ms,
            workload,
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            state: Mutex::new(ContainerState::Starting),
            routes,
            load: Load::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> ContainerState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Moves to `next`, refusing illegal steps.
    pub fn transition(&self, next: ContainerState) -> Result<(), TransitionError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.can_move_to(&next) {
            return Err(TransitionError {
                container: self.name.clone(),
                from: state.clone(),
                to: next,
            });
        }
        *state = next;
        Ok(())
    }

    /// Whether `path` is one of the routes it answers.
    pub fn serves(&self, path: &str) -> bool {
        skiff_spec::route_matches(&self.routes, path)
    }

    /// The code it runs.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// A slot for one request, or `None` at the concurrency limit (the caller answers
    /// 503 at once rather than queueing without end).
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Requests it serves at once, at most.
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> u32 {
        self.concurrency - self.permits.available_permits() as u32
    }

    /// Stops taking requests, waits (up to `grace`) for those in flight, then stops.
    pub async fn drain(&self, grace: std::time::Duration) {
        if self.transition(ContainerState::Draining).is_err() {
            // Never became ready: nothing in flight.
            let _ = self.transition(ContainerState::Stopped);
            return;
        }
        // Every in-flight request holds a permit until its response body is done.
        let all = tokio::time::timeout(grace, self.permits.acquire_many(self.concurrency)).await;
        if all.is_err() {
            tracing::warn!(container = %self.name, "drain grace period over with requests in flight");
        }
        let _ = self.transition(ContainerState::Stopped);
    }

    /// The API's view of it.
    pub fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            state: self.state().label(),
            started_ms: self.started_ms,
            in_flight: self.in_flight(),
        }
    }
}

impl Endpoint for Container {
    fn is_ready(&self) -> bool {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) == ContainerState::Ready
    }

    fn load(&self) -> &Load {
        &self.load
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerState::*;

    #[test]
    fn lifecycle_only_moves_forward() {
        assert!(Starting.can_move_to(&Ready));
        assert!(Ready.can_move_to(&Draining));
        assert!(Draining.can_move_to(&Stopped));
        assert!(Starting.can_move_to(&Failed("x".into())));
        assert!(!Ready.can_move_to(&Starting));
        assert!(!Stopped.can_move_to(&Ready));
        assert!(!Draining.can_move_to(&Ready));
        assert!(!Failed("x".into()).can_move_to(&Ready));
    }
}
