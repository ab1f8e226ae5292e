//! A running container: its runc process, how it ended (exit code, OOM kill), stopping
//! it, and cleaning up after it.

use super::*;

/// How a container's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code (128+signal when killed; 127 or 126 when runc could not start
    /// the command, as Docker's).
    pub code: i32,
    /// The kernel's OOM killer killed a process of it (its memory limit was reached).
    pub oom_killed: bool,
    /// Why runc could not start it, as runc said.
    pub error: Option<String>,
}

impl Exit {
    pub(super) fn code(code: i32) -> Self {
        Self {
            code,
            oom_killed: false,
            error: None,
        }
    }
}

/// The message of a `runc run failed: ...` log line on runc's stderr, if `line` is one.
pub(super) fn runc_failure(line: &str) -> Option<String> {
    let msg = line.split_once("msg=\"runc run failed: ")?.1;
    let msg = msg.strip_suffix('"').unwrap_or(msg);
    Some(msg.replace("\\\"", "\""))
}

/// How many processes of container `runc_id` the OOM killer has killed: `oom_kill` of
/// its memory cgroup (cgroup v1 `memory.oom_control`, v2 `memory.events`), read while
/// `runc run --keep` keeps the cgroup after the exit.
pub(super) fn oom_kills(runc_id: &str) -> u64 {
    let candidates = [
        format!("/sys/fs/cgroup/memory/skiff/{runc_id}/memory.oom_control"),
        format!("/sys/fs/cgroup/skiff/{runc_id}/memory.events"),
    ];
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A started (or startable) container: `spawn` runs it, `stop` ends it, `cleanup`
/// leaves nothing behind.
pub struct OciProcess {
    pub(super) runc: PathBuf,
    pub(super) state: PathBuf,
    pub(super) runc_id: String,
    pub(super) dir: PathBuf,
    /// Its network namespace (`None` with host networking, or once cleaned up).
    pub(super) net: std::sync::Mutex<Option<Net>>,
    pub(super) exit: Option<watch::Receiver<Option<Exit>>>,
    pub(super) mounted: std::sync::atomic::AtomicBool,
}

impl OciProcess {
    /// Its address on the bridge (`None` with host networking).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.net.lock().expect("net lock").as_ref().map(Net::ip)
    }

    /// The path of its network namespace (`None` with host networking).
    pub fn netns(&self) -> Option<PathBuf> {
        self.net.lock().expect("net lock").as_ref().map(Net::path)
    }

    /// Starts `runc run` in the foreground; stdout and stderr go to `log` line by line.
    pub fn spawn(&mut self, name: Arc<str>, log: Arc<LogBook>) -> Result<(), OciError> {
        let mut child = tokio::process::Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            // --keep: the stopped container (and its cgroup, which says whether the
            // kernel's OOM killer struck) stays until `cleanup` deletes it.
            .args(["run", "--keep", "--bundle"])
            .arg(&self.dir)
            .arg(&self.runc_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            .spawn()
            .map_err(setup("start runc"))?;
        let mut readers = Vec::new();
        for (pipe, stream) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                LogStream::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                LogStream::Stderr,
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let (log, name) = (log.clone(), name.clone());
            readers.push(tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                let mut failure = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if stream == LogStream::Stderr {
                        failure = failure.or_else(|| runc_failure(&line));
                    }
                    log.push(&name, stream, &line);
                }
                failure
            }));
        }
        let (tx, rx) = watch::channel(None);
        let runc_id = self.runc_id.clone();
        tokio::spawn(async move {
            let mut code = match child.wait().await {
                Ok(status) => status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    128 + status.signal().unwrap_or(9)
                }),
                Err(e) => {
                    warn!(error = %e, "lost the runc process");
                    255
                }
            };
            // What runc said if it could not start the process (the pipes close with
            // the container; a second is plenty).
            let mut error = None;
            for reader in readers {
                if let Ok(Ok(Some(failure))) =
                    tokio::time::timeout(Duration::from_secs(1), reader).await
                {
                    error = Some(failure);
                }
            }
            if let Some(e) = &error {
                // Docker's codes for a command that is missing or not executable.
                if e.contains("executable file not found") || e.contains("no such file") {
                    code = 127;
                } else if e.contains("permission denied") {
                    code = 126;
                }
            }
            let oom_killed = oom_kills(&runc_id) > 0;
            let _ = tx.send(Some(Exit {
                code,
                oom_killed,
                error,
            }));
        });
        self.exit = Some(rx);
        Ok(())
    }

    /// Waits (up to 10 s) until runc has made the container (its state file exists), or
    /// it already exited: until then `runc kill` would not find it. Polls a `stat`, not
    /// `runc state`, so it costs no runc process. A start does not wait for this (the
    /// container is routed while runc builds it, and answers once its process listens);
    /// a stop does.
    pub(super) async fn wait_created(&self) -> Result<(), OciError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let state = self.state.join(&self.runc_id).join("state.json");
        loop {
            if self.exit.as_ref().is_some_and(|rx| rx.borrow().is_some()) || state.exists() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OciError::Setup {
                    step: "start the container".into(),
                    message: "runc did not create it within 10 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// What it uses now (its cgroup and network interface), while it has a cgroup.
    pub fn usage(&self) -> Option<crate::CgroupUsage> {
        let host_if = self
            .net
            .lock()
            .expect("net lock")
            .as_ref()
            .map(Net::host_if);
        crate::usage::cgroup_usage(&self.runc_id, host_if.as_deref())
    }

    /// Whether its process has ended.
    pub fn has_exited(&self) -> bool {
        self.exit.as_ref().is_none_or(|rx| rx.borrow().is_some())
    }

    /// Waits for the container to exit.
    pub async fn wait(&self) -> Exit {
        let lost = Exit::code(255);
        let Some(mut rx) = self.exit.clone() else {
            return lost;
        };
        loop {
            if let Some(exit) = rx.borrow().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return lost;
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it exited.
    pub async fn stop(&self, grace: Duration) -> Exit {
        let kill = |sig: &'static str| {
            let (runc, state, id) = (self.runc.clone(), self.state.clone(), self.runc_id.clone());
            async move {
                let _ = tokio::process::Command::new(runc)
                    .arg("--root")
                    .arg(state)
                    .args(["kill", &id, sig])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
        };
        if let Err(e) = self.wait_created().await {
            warn!(container = %self.runc_id, error = %e, "stopping a container runc never made");
        }
        kill("TERM").await;
        if let Ok(exit) = tokio::time::timeout(grace, self.wait()).await {
            return exit;
        }
        kill("KILL").await;
        match tokio::time::timeout(Duration::from_secs(10), self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                warn!(container = %self.runc_id, "container did not die after SIGKILL");
                Exit::code(137)
            }
        }
    }

    /// Removes everything the container had: runc state, cgroup, mount, network
    /// namespace (and with it the veth pair), directory. Each step first looks whether
    /// there is anything to remove, so cleaning up after nothing costs a few `stat`s.
    pub async fn cleanup(&self) {
        if self.state.join(&self.runc_id).exists() {
            let _ = tokio::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "--force", &self.runc_id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        if self
            .mounted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            && let Err(e) = unmount(&self.dir.join("rootfs"))
        {
            warn!(error = %e, "failed to unmount a container rootfs");
        }
        let net = self.net.lock().expect("net lock").take();
        if let Some(net) = net {
            // The kernel removes the veth pair with the namespace, but later, from a
            // work queue; deleting it here means it is gone when `rm` answers.
            let host_if = net.host_if();
            if Path::new("/sys/class/net").join(&host_if).exists() {
                let _ = run("ip", &["link", "del", &host_if]).await;
            }
            // Dropping the namespace removes it, then frees its address.
            drop(net);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
