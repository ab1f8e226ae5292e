//! The HTTP face of a Linux container: requests forwarded to its address.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::OciProcess;
use crate::{BoxError, HandleError, ResponseBody};

/// A running Linux container as a workload: its process, and requests forwarded to its
/// HTTP port over a pooled keep-alive client.
pub struct OciWorkload {
    target: SocketAddr,
    process: Arc<OciProcess>,
    client: Client<HttpConnector, http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>,
}

impl OciWorkload {
    /// Forwards to `target`, served by `process`.
    pub fn new(target: SocketAddr, process: Arc<OciProcess>) -> Self {
        Self {
            target,
            process,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The container's process.
    pub fn process(&self) -> &Arc<OciProcess> {
        &self.process
    }

    pub(crate) async fn handle<B>(
        &self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, HandleError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{}{path}", self.target)
            .parse()
            .map_err(|e| HandleError::BadRequest(format!("bad request path: {e}")))?;
        let req = hyper::Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        let resp = self.client.request(req).await.map_err(|e| {
            HandleError::BadResponse(format!("container at {} did not answer: {e}", self.target))
        })?;
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
    }
}
