use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

use crate::oci::OciWorkload;
use crate::site::StaticSite;
use crate::wasm::{HttpWorkload, WagiWorkload};

/// Errors inside response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response a workload gives.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the ingress knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The address the ingress accepted the connection on.
    pub local: SocketAddr,
}

/// One container's runnable code. A closed set: every backend answers the same verbs.
pub enum Workload {
    /// A `wasi:http/incoming-handler` component.
    Http(HttpWorkload),
    /// A WAGI command module.
    Wagi(WagiWorkload),
    /// Files served from an image.
    Static(StaticSite),
    /// A Linux container run by runc, reached over HTTP.
    Oci(OciWorkload),
    /// Pods on another node, reached through its ingress.
    Remote(crate::RemoteWorkload),
}

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Http(_) => f.write_str("Workload::Http"),
            Workload::Wagi(_) => f.write_str("Workload::Wagi"),
            Workload::Static(_) => f.write_str("Workload::Static"),
            Workload::Oci(_) => f.write_str("Workload::Oci"),
            Workload::Remote(r) => write!(f, "Workload::Remote({})", r.target()),
        }
    }
}

impl Workload {
    /// Whether each request creates a Wasm instance (static sites do not).
    pub fn instantiates(&self) -> bool {
        matches!(self, Workload::Http(_) | Workload::Wagi(_))
    }

    /// Whether it can take a request now: a Linux container once its port accepts
    /// connections; everything else at once (it was linked or opened when made).
    pub async fn accepts(&self) -> bool {
        match self {
            Workload::Oci(w) => w.accepts().await,
            _ => true,
        }
    }

    /// A Wasm container's running totals (requests, CPU, memory).
    pub fn usage(&self) -> Option<&std::sync::Arc<crate::Usage>> {
        match self {
            Workload::Http(w) => Some(w.usage()),
            Workload::Wagi(w) => Some(w.usage()),
            _ => None,
        }
    }

    /// The most memory one Wasm instance of it may have.
    pub fn instance_memory(&self) -> Option<u64> {
        match self {
            Workload::Http(w) => Some(w.instance_memory()),
            Workload::Wagi(w) => Some(w.instance_memory()),
            _ => None,
        }
    }

    /// The process behind a Linux container.
    pub fn oci_process(&self) -> Option<&std::sync::Arc<crate::oci::OciProcess>> {
        match self {
            Workload::Oci(w) => Some(w.process()),
            _ => None,
        }
    }

    /// Serves one request in a fresh instance, bounded by the container's limits.
    pub async fn handle<B>(
        &self,
        req: hyper::Request<B>,
        info: &RequestInfo,
    ) -> Result<hyper::Response<ResponseBody>, HandleError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error> + Into<BoxError>,
    {
        match self {
            Workload::Http(w) => w.handle(req).await,
            Workload::Wagi(w) => w.handle(req, info).await,
            Workload::Static(site) => Ok(site.handle(req.method(), req.uri(), req.headers()).await),
            Workload::Oci(w) => w.handle(req).await,
            Workload::Remote(w) => w.handle(req).await,
        }
    }
}

/// How a trap ended a guest, for logs and the `skiff_traps_total{kind}` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrapKind {
    /// The guest tried to grow memory past its limit and then failed.
    MemoryLimit,
    /// Call stack exhausted.
    StackOverflow,
    /// `unreachable`, which is how Rust panics and aborts end.
    Unreachable,
    /// Out-of-bounds memory or table access.
    OutOfBounds,
    /// Integer division by zero or overflow, bad conversion.
    Arithmetic,
    /// The guest exited with a non-zero status.
    Exit,
    /// Anything else.
    Other,
}

impl TrapKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::MemoryLimit => "memory_limit",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Unreachable => "unreachable",
            TrapKind::OutOfBounds => "out_of_bounds",
            TrapKind::Arithmetic => "arithmetic",
            TrapKind::Exit => "exit",
            TrapKind::Other => "other",
        }
    }
}

/// Why a request did not get an answer from the guest. The ingress maps each variant
/// to one status code.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The request ran past the app's timeout (guest CPU or host waits): 504.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The guest trapped: 500.
    #[error("guest trapped ({}): {message}", kind.as_str())]
    Trap {
        /// What kind of trap.
        kind: TrapKind,
        /// wasmtime's description, with the guest backtrace when there is one.
        message: String,
    },
    /// The guest answered something that is not HTTP (malformed CGI, no response): 502.
    #[error("bad response from guest: {0}")]
    BadResponse(String),
    /// The request body was larger than the workload accepts: 413.
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    /// Reading the request body failed (client went away): 400.
    #[error("failed to read request body: {0}")]
    BadRequest(String),
    /// The node's memory budget has no room for another instance now: 503.
    #[error("{0}")]
    Overloaded(String),
    /// The instance could not be created (e.g. the node's instance pool is exhausted): 503.
    #[error("failed to instantiate: {0}")]
    Instantiate(String),
}
