//! skiff's runtime: turns an image into something that answers HTTP requests, and keeps
//! every guest inside its bounds.
//!
//! Three lifetimes, made explicit in the types:
//!
//! - process: one [`Runtime`] per node holds the wasmtime `Engine`, the two linkers (WASI
//!   0.2 + `wasi:http` for components, WASI preview1 for WAGI modules), the epoch ticker,
//!   the bounded compile pool and the on-disk code cache.
//! - deploy: [`Runtime::compile`] turns an image into [`Compiled`] code (off the request
//!   path, cached on disk by digest + engine, deduplicated in memory by digest), and
//!   [`Runtime::prepare`] links it into one container's [`Workload`] (an `InstancePre`
//!   with that container's env, limits and log).
//! - request: [`Workload::handle`] makes a fresh `Store` with a memory limiter and an
//!   epoch deadline, instantiates, runs, and maps every way a guest can fail to a
//!   [`HandleError`] that the ingress turns into a status code.
//!
//! Only `wasm/` imports wasmtime. Static sites ([`StaticSite`], module `site`: `static`
//! is a keyword) are served by the node itself from an extracted image through a
//! `cap_std` directory; Linux containers ([`oci`]) are run by runc and reached over
//! HTTP.

#![deny(missing_docs)]

mod body;
mod log;
pub mod oci;
mod remote;
mod site;
mod usage;
mod wasm;
mod workload;

pub use body::{BodyStalled, Guarded, ProgressBody};
pub use log::{LogBook, LogStream};
pub use remote::{FORWARDED, ForwardKey, ProxyClient, RemoteWorkload, UNSERVED};
pub use site::StaticSite;
pub use usage::{CgroupUsage, Usage};
pub use wasm::{
    CompileError, Compiled, CompilerCommand, ContainerConfig, MemoryError, MemoryReservation,
    PrepareError, Runtime, RuntimeConfig, RuntimeError, compile_worker, machine_memory, parse_cgi,
};
pub use workload::{BoxError, HandleError, RequestInfo, ResponseBody, TrapKind, Workload};
