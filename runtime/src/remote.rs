//! A pod on another node, as a workload: requests go to that node's ingress over a
//! pooled keep-alive connection, marked with the route they are for, so the other node
//! serves them from its own pods and never forwards them again.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{BoxError, HandleError, ResponseBody};

/// The header that marks a request forwarded by another node, naming its route. It can
/// only narrow where a request goes (to the receiving node's own pods of a route the
/// client could name by Host anyway), so it needs no proof of origin.
pub const FORWARDED: &str = "x-skiff-forwarded";

/// The header a node puts on its answer to a forwarded request it could not give to any
/// pod (none ready, the route gone): nothing reached an app, so the forwarding node may
/// send the request elsewhere.
pub const UNSERVED: &str = "x-skiff-unserved";

/// Pods of one route on one other node.
pub struct RemoteWorkload {
    target: SocketAddr,
    route: HeaderValue,
    body_timeout: Duration,
    client: ProxyClient,
}

impl RemoteWorkload {
    /// Forwards requests for `route` to the ingress at `target`; a request body that
    /// sends nothing for `body_timeout` fails. `client` is shared by every remote
    /// endpoint of the node, so connections are pooled per peer.
    pub fn new(
        target: SocketAddr,
        route: &str,
        body_timeout: Duration,
        client: ProxyClient,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        Ok(Self {
            target,
            route: HeaderValue::from_str(route)?,
            body_timeout,
            client,
        })
    }

    /// A client for remote workloads: connects within 1 s, keeps connections 30 s.
    pub fn client() -> ProxyClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector)
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    pub(crate) async fn handle<B>(
        &self,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, HandleError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut req = req;
        req.headers_mut().insert(FORWARDED, self.route.clone());
        proxy(
            &self.client,
            self.target,
            req,
            self.body_timeout,
            "the node",
        )
        .await
    }
}

/// A keep-alive client for proxied requests.
pub type ProxyClient =
    Client<HttpConnector, http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>;

/// Sends `req` to `target` over `client`; a request body that sends nothing for
/// `body_timeout` fails (nothing else bounds a proxied body). `what` names the target in
/// errors.
pub(crate) async fn proxy<B>(
    client: &ProxyClient,
    target: SocketAddr,
    req: hyper::Request<B>,
    body_timeout: Duration,
    what: &str,
) -> Result<hyper::Response<ResponseBody>, HandleError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{target}{path}")
        .parse()
        .map_err(|e| HandleError::BadRequest(format!("bad request path: {e}")))?;
    let body = crate::ProgressBody::new(body.map_err(Into::into).boxed_unsync(), body_timeout);
    let req = hyper::Request::from_parts(parts, body.boxed_unsync());
    let resp = client
        .request(req)
        .await
        .map_err(|e| HandleError::BadResponse(format!("{what} at {target} did not answer: {e}")))?;
    Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
}
