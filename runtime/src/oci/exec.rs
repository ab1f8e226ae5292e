//! `docker exec`: a command run in a running container by `runc exec`, in its namespaces
//! and cgroup, under its user, capabilities and seccomp filter (runc takes them from the
//! container's own config), with its stdout and stderr as they come and its exit code.

use super::*;

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE`s added to the container's environment.
    pub env: Vec<String>,
    /// Working directory inside the container (default: the container's).
    pub workdir: Option<String>,
}

/// A chunk of an exec's output, or how it ended (last).
#[derive(Debug, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes the command wrote to stdout.
    Stdout(bytes::Bytes),
    /// Bytes the command wrote to stderr.
    Stderr(bytes::Bytes),
    /// Its exit code (126/127 when it could not be started, as Docker's), and why runc
    /// could not start it.
    Exited(i32, Option<String>),
}

/// Kills the exec'd process if its reader goes away first (its `runc exec` parent dying
/// would leave it running in the container).
struct Reaper {
    pid_file: PathBuf,
    done: bool,
}

/// How long a reader that went away waits for runc to write the command's pid.
const PID_FILE_WAIT: Duration = Duration::from_secs(5);

impl Reaper {
    /// Whether runc has written the command's pid.
    fn written(&self) -> bool {
        std::fs::read_to_string(&self.pid_file).is_ok_and(|p| p.trim().parse::<i32>().is_ok())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.done
            && let Ok(pid) = std::fs::read_to_string(&self.pid_file)
            && let Ok(pid) = pid.trim().parse::<i32>()
            && pid > 1
        {
            // SAFETY: kill(2) with a pid runc wrote for this exec; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl OciProcess {
    /// Runs `spec` in the container; its output and exit arrive on the returned
    /// channel, which holds at most 16 chunks: a reader that stops reading stops the
    /// command's output (its pipes fill), one that drops the receiver kills it.
    pub async fn exec(
        &self,
        spec: ExecSpec,
    ) -> Result<tokio::sync::mpsc::Receiver<ExecOutput>, OciError> {
        // A container started a moment ago may not be made yet.
        self.wait_created().await?;
        if self.has_exited() {
            return Err(OciError::Setup {
                step: "exec".into(),
                message: "the container is not running".into(),
            });
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // In the bundle directory, which goes with the container.
        let pid_file = self.dir.join(format!("exec-{n}.pid"));
        let mut cmd = tokio::process::Command::new(&self.runc);
        cmd.arg("--root").arg(&self.state).arg("exec");
        cmd.arg("--pid-file").arg(&pid_file);
        for e in &spec.env {
            cmd.arg("--env").arg(e);
        }
        if let Some(dir) = &spec.workdir {
            cmd.arg("--cwd").arg(dir);
        }
        // Everything after the id is the command (runc parses no flags there).
        cmd.arg(&self.runc_id).args(&spec.args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(setup("start runc exec"))?;
        let reaper = Reaper {
            pid_file,
            done: false,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            // Moved whole (a closure would capture only the field it sets).
            let mut reaper = reaper;
            let pump = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
                        err: bool,
                        tx: tokio::sync::mpsc::Sender<ExecOutput>| async move {
                let mut failure = None;
                let Some(mut pipe) = pipe else {
                    return failure;
                };
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match pipe.read(&mut buf).await {
                        Ok(0) | Err(_) => return failure,
                        Ok(n) => n,
                    };
                    let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
                    // runc's own complaint (not the command's output) becomes the error.
                    if err
                        && let Some(msg) = String::from_utf8_lossy(&chunk)
                            .lines()
                            .find_map(runc_exec_failure)
                    {
                        failure = Some(msg);
                        continue;
                    }
                    let out = if err {
                        ExecOutput::Stderr(chunk)
                    } else {
                        ExecOutput::Stdout(chunk)
                    };
                    if tx.send(out).await.is_err() {
                        return failure;
                    }
                }
            };
            type Pipe = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
            let work = async {
                let (_, failure) = tokio::join!(
                    pump(stdout.map(|s| Box::new(s) as Pipe), false, tx.clone()),
                    pump(stderr.map(|s| Box::new(s) as Pipe), true, tx.clone()),
                );
                (failure, child.wait().await)
            };
            let (failure, status) = tokio::select! {
                done = work => done,
                // Nobody reads any more: the reaper kills the command, by the pid runc
                // writes once the command runs, which may be a moment after its first
                // output: a reader gone that quickly is waited out (for a bounded time)
                // so the command is not left running in the container.
                () = tx.closed() => {
                    let deadline = tokio::time::Instant::now() + PID_FILE_WAIT;
                    while !reaper.written() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return;
                }
            };
            let code = status.ok().map_or(255, |s| {
                use std::os::unix::process::ExitStatusExt as _;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
            });
            reaper.done = true;
            let code = match &failure {
                Some(e)
                    if e.contains("executable file not found") || e.contains("no such file") =>
                {
                    127
                }
                Some(e) if e.contains("permission denied") => 126,
                _ => code,
            };
            let _ = tx.send(ExecOutput::Exited(code, failure)).await;
        });
        Ok(rx)
    }
}

/// The message of runc's `exec failed: ...` log line, if `line` is one.
fn runc_exec_failure(line: &str) -> Option<String> {
    if !line.contains("level=error") {
        return None;
    }
    let msg = line.split_once("exec failed: ")?.1;
    let msg = msg.strip_suffix('"').unwrap_or(msg);
    Some(msg.replace("\\\"", "\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn runc_failures_are_told_apart_from_output() {
        let line = r#"time="2026-12-02T08:00:00Z" level=error msg="exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH""#;
        assert_eq!(
            super::runc_exec_failure(line).as_deref(),
            Some(
                r#"unable to start container process: exec: "nope": executable file not found in $PATH"#
            )
        );
        assert_eq!(super::runc_exec_failure("plain output"), None);
    }
}
