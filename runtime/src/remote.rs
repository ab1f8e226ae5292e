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

/// The header that marks a request forwarded by another node, naming its route:
/// `<route>.<unix ms>.<hex HMAC-SHA256(key, ms "\n" route "\n" host)>` with the cluster's
/// [`ForwardKey`]. A receiving node honours it only when it verifies (a peer sent it
/// within the last [`FORWARD_WINDOW`]) and strips it from every request either way, so a
/// client cannot steer its request with it.
pub const FORWARDED: &str = "x-skiff-forwarded";

/// How old a forwarded mark may be.
pub const FORWARD_WINDOW: Duration = Duration::from_secs(30);

/// The key that marks requests forwarded between the cluster's nodes.
#[derive(Clone)]
pub struct ForwardKey(hmac::Hmac<sha2::Sha256>);

impl ForwardKey {
    /// A key from 32 bytes (the node derives them from the join secret). The keyed
    /// state is made once: each mark then costs only its own bytes' hashing.
    pub fn new(key: [u8; 32]) -> Self {
        Self(<hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&key).expect("any length"))
    }

    fn mac(&self, ms: u64, route: &str, host: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac as _;
        let mut mac = self.0.clone();
        mac.update(ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(route.as_bytes());
        mac.update(b"\n");
        mac.update(host);
        mac
    }

    /// The header value marking a request for `route` with Host `host`, sent at `ms`.
    pub fn sign(&self, route: &str, host: &[u8], ms: u64) -> Option<HeaderValue> {
        use hmac::Mac as _;
        let mac = hex::encode(self.mac(ms, route, host).finalize().into_bytes());
        HeaderValue::from_str(&format!("{route}.{ms}.{mac}")).ok()
    }

    /// The route a header value names, if it is a peer's mark for a request with Host
    /// `host`, made within the window of our time `now_ms` (a mark seen on the wire
    /// serves no other Host, and not for long).
    pub fn verify<'a>(&self, value: &'a str, host: &[u8], now_ms: u64) -> Option<&'a str> {
        use hmac::Mac as _;
        let (rest, mac) = value.rsplit_once('.')?;
        let (route, ms) = rest.rsplit_once('.')?;
        let ms: u64 = ms.parse().ok()?;
        if ms.abs_diff(now_ms) > FORWARD_WINDOW.as_millis() as u64 {
            return None;
        }
        let mac = hex::decode(mac).ok()?;
        self.mac(ms, route, host).verify_slice(&mac).ok()?;
        Some(route)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The header a node puts on its answer to a forwarded request it could not give to any
/// pod (none ready, the route gone): nothing reached an app, so the forwarding node may
/// send the request elsewhere.
pub const UNSERVED: &str = "x-skiff-unserved";

/// Pods of one route on one other node.
pub struct RemoteWorkload {
    target: SocketAddr,
    route: String,
    key: ForwardKey,
    body_timeout: Duration,
    client: ProxyClient,
}

impl RemoteWorkload {
    /// Forwards requests for `route` to the ingress at `target`, marked with `key`; a
    /// request body that sends nothing for `body_timeout` fails. `client` is shared by
    /// every remote endpoint of the node, so connections are pooled per peer.
    pub fn new(
        target: SocketAddr,
        route: &str,
        key: ForwardKey,
        body_timeout: Duration,
        client: ProxyClient,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        HeaderValue::from_str(route)?;
        Ok(Self {
            target,
            route: route.to_string(),
            key,
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
        let host = req.headers().get(http::header::HOST);
        let mark = self
            .key
            .sign(
                &self.route,
                host.map_or(&b""[..], |h| h.as_bytes()),
                now_ms(),
            )
            .ok_or_else(|| HandleError::BadRequest("the route is not a header value".into()))?;
        req.headers_mut().insert(FORWARDED, mark);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_mark_holds_for_its_route_key_and_time_only() {
        let key = ForwardKey::new([7; 32]);
        let now = 1_000_000_000;
        let host = b"web.localhost:7780";
        let mark = key.sign("web", host, now).unwrap();
        let mark = mark.to_str().unwrap();
        assert_eq!(key.verify(mark, host, now + 1_000), Some("web"));
        assert_eq!(ForwardKey::new([8; 32]).verify(mark, host, now), None);
        assert_eq!(key.verify(&mark.replacen("web", "api", 1), host, now), None);
        assert_eq!(
            key.verify(mark, b"other.localhost", now),
            None,
            "another Host"
        );
        assert_eq!(key.verify(mark, host, now + 31_000), None, "too old");
        for forged in ["web", "web.1.00", "", "..", "web.x.y"] {
            assert_eq!(key.verify(forged, host, now), None, "{forged}");
        }
    }
}
