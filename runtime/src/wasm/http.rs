//! `wasi:http/incoming-handler` components: one fresh instance per request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView as _};

use super::guest::{HttpState, Limiter, RunError, bound_store, classify, wasi_builder};
use super::outbound::OutboundPolicy;
use super::{Compiled, ContainerConfig, NodeMemory};
use crate::{BoxError, HandleError, ResponseBody};

/// A container of an http app: its pre-instantiated component and settings.
pub struct HttpWorkload {
    pre: ProxyPre<HttpState>,
    config: ContainerConfig,
    /// Keeps the code in the runtime's shared cache while this container lives.
    _code: Arc<Compiled>,
    memory: NodeMemory,
    usage: Arc<crate::Usage>,
}

impl HttpWorkload {
    pub(crate) fn new(
        pre: ProxyPre<HttpState>,
        config: ContainerConfig,
        code: Arc<Compiled>,
        memory: NodeMemory,
    ) -> Self {
        Self {
            pre,
            config,
            _code: code,
            memory,
            usage: Arc::default(),
        }
    }

    /// The most memory one instance may have.
    pub fn instance_memory(&self) -> u64 {
        self.config.limits.memory_bytes
    }

    /// What it has used so far.
    pub fn usage(&self) -> &Arc<crate::Usage> {
        &self.usage
    }

    pub(crate) async fn handle<B>(
        &self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, HandleError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let timeout = self.config.limits.timeout();
        let deadline = Instant::now() + timeout;
        // The instance may grow to its limit: that much of the node's budget is held
        // until the store (in the guest's task) is gone.
        let reservation = self
            .memory
            .reserve(self.config.limits.memory_bytes)
            .map_err(|e| HandleError::Overloaded(e.to_string()))?;
        self.usage.request();
        let (limiter, memory_hit) =
            Limiter::new(self.config.limits.memory_bytes, self.usage.clone());
        let state = HttpState {
            wasi: wasi_builder(&self.config).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter,
            outbound: OutboundPolicy {
                allowed: self.config.allowed_hosts.clone(),
            },
        };
        let mut store = Store::new(self.pre.engine(), state);
        bound_store(&mut store, deadline, |s: &mut HttpState| &mut s.limiter);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| HandleError::BadRequest(format!("{e:#}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| HandleError::Instantiate(format!("{e:#}")))?;
        let pre = self.pre.clone();
        let usage = self.usage.clone();

        // The guest runs in its own task so it can keep streaming the body after the head
        // is sent. The task, and with it the store, ends at the deadline whatever the guest
        // is doing: computing (epoch interrupt) or waiting in a host call (this timeout).
        let task = tokio::spawn(async move {
            let _reservation = reservation;
            let run = async {
                let proxy = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(RunError::Instantiate)?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
                    .map_err(RunError::Guest)
            };
            let run = crate::usage::CpuTimed::new(run, usage);
            match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(Ok(())) => Ok(()),
                // Instantiation failed: not the guest's doing.
                Ok(Err(RunError::Instantiate(e))) => {
                    Err(HandleError::Instantiate(format!("{e:#}")))
                }
                Ok(Err(RunError::Guest(e))) => {
                    Err(classify(&e, memory_hit.load(Ordering::Relaxed), timeout))
                }
                Err(_) => Err(HandleError::Timeout(timeout)),
            }
        });

        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(Ok(response))) => {
                Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
            }
            Ok(Ok(Err(code))) => Err(HandleError::BadResponse(format!(
                "guest answered with error code {code:?}"
            ))),
            // The guest dropped the response outparam: the task says why.
            Ok(Err(_)) => match task.await {
                Ok(Ok(())) => Err(HandleError::BadResponse(
                    "guest returned without setting a response".into(),
                )),
                Ok(Err(e)) => Err(e),
                Err(join) => Err(HandleError::Instantiate(format!(
                    "guest task failed: {join}"
                ))),
            },
            Err(_) => {
                task.abort();
                Err(HandleError::Timeout(timeout))
            }
        }
    }
}
