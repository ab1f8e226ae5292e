//! The HTTP face of a Linux container: requests forwarded to its address.
//!
//! A container is routed as soon as runc is spawned, before its process listens.
//! Requests that arrive in that window are held, not failed: the first one probes the
//! port (a TCP connect every 2 ms, for up to 10 s, or until the process exits) and
//! forwards once it accepts; after that the probe is skipped. This is what makes the
//! first request after `skiff run` succeed, as a gateway's cold start does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::OciProcess;
use crate::{BoxError, HandleError, ResponseBody};

/// A running Linux container as a workload: its process, and requests forwarded to its
/// HTTP port over a pooled keep-alive client.
pub struct OciWorkload {
    target: SocketAddr,
    process: Arc<OciProcess>,
    /// Longest wait for the next piece of a request body on its way to the container
    /// (the node's `--body-timeout`).
    body_timeout: Duration,
    /// The port has accepted a connection once: no more probing.
    listening: AtomicBool,
    client: crate::remote::ProxyClient,
}

impl OciWorkload {
    /// Forwards to `target`, served by `process`; a request body that sends nothing for
    /// `body_timeout` fails.
    pub fn new(target: SocketAddr, process: Arc<OciProcess>, body_timeout: Duration) -> Self {
        Self {
            target,
            process,
            body_timeout,
            listening: AtomicBool::new(false),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The container's process.
    pub fn process(&self) -> &Arc<OciProcess> {
        &self.process
    }

    /// Whether the container's port accepts a connection now (one attempt, up to 1 s):
    /// a Linux pod's readiness when its template has no probe.
    pub async fn accepts(&self) -> bool {
        if self.listening.load(Ordering::Relaxed) {
            return true;
        }
        let attempt = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(self.target),
        )
        .await;
        let ok = matches!(attempt, Ok(Ok(_)));
        if ok {
            self.listening.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// Waits (up to 10 s) until the container's port accepts connections, unless it
    /// did before or the process has ended.
    async fn wait_listening(&self) -> Result<(), HandleError> {
        const START: Duration = Duration::from_secs(10);
        if self.listening.load(Ordering::Relaxed) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + START;
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(self.target),
            )
            .await;
            let error = match attempt {
                Ok(Ok(_)) => {
                    self.listening.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_string(),
            };
            if self.process.has_exited() {
                return Err(HandleError::BadResponse(format!(
                    "container at {} exited without accepting connections",
                    self.target
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HandleError::BadResponse(format!(
                    "container at {} did not accept connections within {} s: {error}",
                    self.target,
                    START.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub(crate) async fn handle<B>(
        &self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, HandleError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.wait_listening().await?;
        // A client that stops sending its body mid-way fails the request instead of
        // holding the container's slot.
        crate::remote::proxy(
            &self.client,
            self.target,
            req,
            self.body_timeout,
            "container",
        )
        .await
    }
}
