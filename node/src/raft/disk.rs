//! What Raft's storage does when the disk is full: it waits for space.
//!
//! openraft treats any error of its storage as fatal: the core stops, and the `Raft`
//! handle answers every call with that error until the process starts again. A full
//! disk is the common storage error and a passing one, so it is not reported to
//! openraft at all: a write to the log (`log.rs`) or the state machine (`machine.rs`)
//! that finds no space opens its redb database again (redb refuses every write after a
//! failed commit until then) and tries again, backing off up to 2 s, until it goes
//! through. To openraft that is a slow disk, which Raft's safety never depends on:
//! nothing is acknowledged before it is durable (an entry is reported flushed, a vote
//! answered, an entry's reply given, only once its commit returned), and a commit that
//! failed wrote nothing (redb's commit is atomic; the state machine undoes its change
//! in memory). Meanwhile the node serves what it runs, `/healthz` says what waits and
//! where, and writes are refused before they are proposed (`Consensus::write` checks
//! the free space), so little ever reaches this wait; one proposed just before the disk
//! filled answers "outcome unknown" when its time is up, and is applied once space is
//! back. Shutting down ends the wait (the storage then reports the error, which stops
//! the core, as the node is stopping anyway).
//!
//! Any other storage error stays fatal. Restarting Raft in place would race the old
//! core's state machine worker, which may still be applying, so the node exits instead
//! (`lib.rs`), with one line saying why, for its supervisor to restart it: a restart
//! recovers from what is on disk, which is what Raft is built for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where Raft's storage waits for space, and what waits.
pub struct DiskWait {
    /// The data dir, for messages.
    dir: PathBuf,
    /// What waits now (the Raft log, the desired state), and why.
    waiting: Mutex<BTreeMap<&'static str, String>>,
    /// Cancelled when the node stops: waiting ends then.
    shutdown: CancellationToken,
}

impl DiskWait {
    /// Waits on the disk of `dir` until `shutdown`.
    pub fn new(dir: &Path, shutdown: CancellationToken) -> Self {
        Self {
            dir: dir.to_path_buf(),
            waiting: Mutex::default(),
            shutdown,
        }
    }

    /// `Err(why)` while some of Raft's storage waits for space.
    pub fn health(&self) -> Result<(), String> {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.values().next() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Runs `attempt` until it succeeds, fails for another reason than a full disk
    /// (`is_full` tells), or the node shuts down; the last two give its error.
    pub async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &'static str,
        mut attempt: impl FnMut() -> F,
        is_full: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let mut backoff = Duration::from_millis(50);
        let mut waited = false;
        loop {
            let result = attempt().await;
            let e = match result {
                Err(e) if is_full(&e) && !self.shutdown.is_cancelled() => e,
                done => {
                    if waited {
                        self.lock().remove(what);
                        info!(what, data_dir = %self.dir.display(), "the disk has room again");
                    }
                    return done;
                }
            };
            if !waited {
                waited = true;
                let why = format!(
                    "disk full at {}: {what} waits for space ({e})",
                    self.dir.display()
                );
                warn!(what, data_dir = %self.dir.display(), error = %e, "the disk is full: waiting for space");
                self.lock().insert(what, why);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.cancelled() => {
                    self.lock().remove(what);
                    return Err(e);
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;

    /// Waits (up to 10 s) until `wait` reports something waiting; returns what.
    async fn waiting(wait: &DiskWait) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Err(why) = wait.health() {
                return why;
            }
            assert!(Instant::now() < deadline, "nothing waited");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_full_disk_is_waited_out_other_errors_are_not() {
        let shutdown = CancellationToken::new();
        let wait = Arc::new(DiskWait::new(Path::new("/data"), shutdown.clone()));
        let full = Arc::new(AtomicBool::new(true));
        // Full until the test frees it: the write goes through then, and health says
        // what waited meanwhile.
        let task = {
            let (wait, full) = (wait.clone(), full.clone());
            tokio::spawn(async move {
                wait.retry(
                    "the Raft log",
                    || {
                        let full = full.load(Ordering::SeqCst);
                        async move { if full { Err("no space") } else { Ok("written") } }
                    },
                    |e| *e == "no space",
                )
                .await
            })
        };
        let why = waiting(&wait).await;
        assert!(
            why.contains("disk full at /data: the Raft log waits"),
            "{why}"
        );
        assert!(!task.is_finished());
        full.store(false, Ordering::SeqCst);
        assert_eq!(task.await.unwrap(), Ok("written"));
        assert!(wait.health().is_ok());

        // Another error is given back at once.
        let other: Result<(), &str> = wait
            .retry(
                "the Raft log",
                || async { Err("bad block") },
                |e| *e == "no space",
            )
            .await;
        assert_eq!(other, Err("bad block"));

        // Shutting down ends a wait with the error.
        let task = {
            let wait = wait.clone();
            tokio::spawn(async move {
                wait.retry(
                    "the desired state",
                    || async { Err::<(), _>("no space") },
                    |e| *e == "no space",
                )
                .await
            })
        };
        waiting(&wait).await;
        shutdown.cancel();
        assert_eq!(task.await.unwrap(), Err("no space"));
        assert!(wait.health().is_ok());
    }
}
