//! The data plane: HTTP/1.1 on the ingress address, `Host: <app>.<domain>` to the app's
//! replicas through the gateway's routing table; NodePort Services' listeners
//! ([`NodePorts`], bound and unbound as the reconciler asks) and containers' published
//! ports ([`published`], bound as the container supervisor asks): every listener of
//! an app is bound here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use skiff_runtime::{Guarded, HandleError, RequestInfo, ResponseBody, Workload};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

mod node_ports;
pub(crate) mod published;

pub(crate) use node_ports::NodePorts;

use crate::container::Container;
use crate::metrics::Metrics;
use crate::route::LOCAL_ROUTE;
use skiff_gateway::Endpoint as _;

/// Serves `target` on `listener` until `shutdown`, then lets in-flight requests finish
/// (up to `drain`).
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Ingress>,
    target: Target,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let limits = shared.limits;
    let what = match target {
        Target::ByHost => "ingress",
        Target::Fixed(_) => "published port",
        Target::Route(_) => "node port",
    };
    crate::listener::serve(
        listener,
        limits,
        shutdown,
        drain,
        what,
        move |req, remote, local| {
            let (shared, target) = (shared.clone(), target.clone());
            async move { handle(&shared, &target, req, &RequestInfo { remote, local }).await }
        },
    )
    .await
}

fn plain(status: StatusCode, text: String) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(text + "\n"))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What every ingress listener shares: the domain, the routing table, the metrics.
pub(crate) struct Ingress {
    pub(crate) domain: String,
    pub(crate) table: Arc<skiff_gateway::RoutingTable<Container>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Bounds on every connection to the ingress and published ports.
    pub(crate) limits: crate::listener::ListenerLimits,
    /// Where NodePort Services listen (the ingress's address).
    pub(crate) node_port_ip: std::net::IpAddr,
    /// Checks the marks of requests other nodes forward here.
    pub(crate) forward_key: skiff_runtime::ForwardKey,
}

/// What a listener serves.
#[derive(Clone)]
pub(crate) enum Target {
    /// Every app and container, by `Host: <name>.<domain>` (the ingress).
    ByHost,
    /// One route, whatever the Host (a NodePort Service's port).
    Route(String),
    /// One container, whatever the Host (a port published with `-p`).
    Fixed(Arc<Container>),
}

/// A route's label and backends, or the answer saying why there is none.
type Picked = (
    String,
    Arc<skiff_gateway::Backends<Container>>,
    Arc<Container>,
);

/// The container a request goes to, or the answer saying why there is none.
fn pick<B>(
    shared: &Ingress,
    req: &Request<B>,
    info: &RequestInfo,
    fixed: Option<&str>,
) -> Result<Picked, (StatusCode, String)> {
    if let Some(label) = fixed {
        let backends = shared.table.get(label).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("skiff: service {label} is gone"),
            )
        })?;
        return match pick_from(&backends, req, info) {
            Some(c) => Ok((label.to_string(), backends, c)),
            None => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("skiff: service {label} has no ready pods"),
            )),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("")
        .to_string();
    let domain = &shared.domain;
    let Some(label) = skiff_gateway::host_label(&host, domain) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "skiff: no app is served at host {host:?}; apps answer at http://<app>.{domain}:{}/",
                info.local.port()
            ),
        ));
    };
    let label = label.to_ascii_lowercase();
    // A redeploy swaps the route, then drains the old replicas: a request that loaded the
    // old set just before the swap may find none of it ready. The table already holds the
    // new set by then, so look once more before answering 503.
    for _ in 0..2 {
        let Some(backends) = shared.table.get(&label) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("skiff: no app named {label:?} on this node"),
            ));
        };
        if let Some(container) = pick_from(&backends, req, info) {
            return Ok((label, backends, container));
        }
    }
    Err((
        StatusCode::SERVICE_UNAVAILABLE,
        format!("skiff: app {label} has no ready replicas"),
    ))
}

/// The endpoint `backends` picks for `req`.
fn pick_from<B>(
    backends: &skiff_gateway::Backends<Container>,
    req: &Request<B>,
    info: &RequestInfo,
) -> Option<Arc<Container>> {
    backends.pick_for(info.remote.ip(), |h| {
        req.headers().get(h).map(HeaderValue::as_bytes)
    })
}

/// A replayed request's body: none, typed as the ingress's own bodies are.
type NoBody =
    http_body_util::combinators::MapErr<Empty<Bytes>, fn(std::convert::Infallible) -> hyper::Error>;

fn never(e: std::convert::Infallible) -> hyper::Error {
    match e {}
}

/// What a retry needs of a request: it is idempotent and sent no body, so it can be
/// sent again as it was.
fn replayable<B>(req: &Request<B>) -> Option<Request<NoBody>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    let no_body = !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if !idempotent || !no_body {
        return None;
    }
    let mut copy = Request::new(Empty::new().map_err(never as fn(_) -> _));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

async fn handle(
    shared: &Ingress,
    target: &Target,
    mut req: Request<Incoming>,
    info: &RequestInfo,
) -> Response<ResponseBody> {
    // Two Host headers could route by one and be read by the app as the other.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return plain(
            StatusCode::BAD_REQUEST,
            "skiff: the request has more than one Host header".into(),
        );
    }
    let start = Instant::now();
    // Another node forwarded it for one of its routes: served from this node's own pods
    // of that route only, so it is never forwarded again. Only a peer's mark counts; a
    // client's is dropped.
    let mark = req.headers_mut().remove(skiff_runtime::FORWARDED);
    let forwarded = mark.and_then(|v| {
        let v = v.to_str().ok()?;
        let host = req
            .headers()
            .get(header::HOST)
            .map_or(&b""[..], |h| h.as_bytes());
        let route = shared.forward_key.verify(v, host, crate::clock::now_ms())?;
        Some(crate::route::local(route))
    });
    let (container, service) = match target {
        Target::ByHost | Target::Route(_) => {
            let fixed = match (target, &forwarded) {
                (_, Some(local)) => Some(local.as_str()),
                (Target::Route(label), None) => Some(label.as_str()),
                _ => None,
            };
            match pick(shared, &req, info, fixed) {
                Ok((label, backends, c)) => {
                    // Counted under the Service's name, forwarded or not.
                    let label = match label.strip_prefix(LOCAL_ROUTE) {
                        Some(service) => service.to_string(),
                        None => label,
                    };
                    (c, backends.is_service().then_some((label, backends)))
                }
                Err((status, text)) => {
                    let mut response = plain(status, text);
                    if forwarded.is_some() {
                        response.headers_mut().insert(
                            skiff_runtime::UNSERVED,
                            HeaderValue::from_static("no-ready-pod"),
                        );
                    }
                    return response;
                }
            }
        }
        Target::Fixed(c) if c.is_ready() => (c.clone(), None),
        Target::Fixed(c) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("skiff: container {} is not running", c.name),
            );
        }
    };
    let Some((service, backends)) = service else {
        let (response, _) = attempt(shared, &container, req, info, None).await;
        return response;
    };
    // A Service's request that failed before any byte of an answer is sent again, once,
    // to another endpoint when that cannot do harm: idempotent, no body.
    let replay = (backends.endpoints().len() > 1)
        .then(|| replayable(&req))
        .flatten();
    let (mut response, mut failed) = attempt(shared, &container, req, info, Some(&service)).await;
    let mut served_by = container;
    if failed && let Some(again) = replay {
        // The balancer's choice when it offers another endpoint; else the first other
        // ready one (a latency-aware balancer may keep offering the one that failed fast).
        let other = (0..4)
            .filter_map(|_| pick_from(&backends, &again, info))
            .find(|c| !Arc::ptr_eq(c, &served_by))
            .or_else(|| {
                backends
                    .endpoints()
                    .iter()
                    .find(|c| {
                        !Arc::ptr_eq(c, &served_by)
                            && c.is_ready()
                            && !c.load().ejected(Instant::now())
                    })
                    .cloned()
            });
        if let Some(other) = other {
            shared.metrics.service_retry(&service);
            (response, failed) = attempt(shared, &other, again, info, Some(&service)).await;
            served_by = other;
        }
    }
    let _ = failed;
    shared.metrics.service_request(
        &service,
        &served_by.name,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Sends `req` to `container`: the answer, and whether it failed in a way another
/// endpoint might not (no permit, a crashed instance, no connection).
async fn attempt<B>(
    shared: &Ingress,
    container: &Arc<Container>,
    req: Request<B>,
    info: &RequestInfo,
    service: Option<&str>,
) -> (Response<ResponseBody>, bool)
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    let label = container.app.to_string();
    if !container.serves(req.uri().path()) {
        return (
            plain(
                StatusCode::NOT_FOUND,
                format!("skiff: app {label} has no route for {}", req.uri().path()),
            ),
            false,
        );
    }
    let Some(permit) = container.try_permit() else {
        shared.metrics.request(&label, 503, 0.0);
        return (
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("skiff: app {label} is at its concurrency limit"),
            ),
            true,
        );
    };
    let start = Instant::now();
    // Counted in the container's load until the response head is ready (what the
    // latency-aware balancers weigh); a failed request only ends the count.
    let flight = container.load().start(start);
    let result = container.workload().handle(req, info).await;
    let now = Instant::now();
    // Another node that had no pod for it (its pods just stopped) served nothing.
    // Only another node's word counts: an app's own response cannot claim it.
    let unserved = matches!(container.workload(), Workload::Remote(_))
        && matches!(&result, Ok(r) if r.headers().contains_key(skiff_runtime::UNSERVED));
    match &result {
        Ok(_) if !unserved => {
            flight.finish(now);
            container.load().succeeded();
        }
        // Its quick "nothing here" is no latency sample: a failure, so the balancers
        // stop sending there until the route catches up.
        Ok(_)
        | Err(
            HandleError::Instantiate(_) | HandleError::Trap { .. } | HandleError::BadResponse(_),
        ) => {
            drop(flight);
            // A crashed instance or a container that does not answer: passive health.
            if container.load().failed(now)
                && let Some(service) = service
            {
                warn!(service, endpoint = %container.name, "endpoint ejected after failing requests");
                shared.metrics.ejection(service, &container.name);
            }
        }
        Err(_) => drop(flight),
    }
    let elapsed = start.elapsed().as_secs_f64();
    if container.workload().instantiates() && !matches!(result, Err(HandleError::Instantiate(_))) {
        shared.metrics.instance_start(&label);
    }
    let retryable = unserved
        || matches!(
            result,
            Err(HandleError::Instantiate(_)
                | HandleError::Trap { .. }
                | HandleError::BadResponse(_)
                | HandleError::Overloaded(_))
        );
    let mut response = match result {
        // A static file streams from the disk without the app's work: the permit goes
        // once the response is ready, so clients that read slowly (or not at all) cannot
        // hold every permit of a site; the listener's write timeout drops them.
        Ok(response) if matches!(container.workload(), Workload::Static(_)) => {
            drop(permit);
            response
        }
        Ok(response) => {
            // The permit is held until the body is finished, so concurrency and draining
            // count streaming responses too.
            response.map(|body| Guarded::new(body, permit).boxed_unsync())
        }
        Err(e) => {
            let (status, text) = match &e {
                HandleError::Timeout(t) => {
                    shared.metrics.trap(&label, "timeout");
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("skiff: app {label} did not answer within {t:?}"),
                    )
                }
                HandleError::Trap { kind, .. } => {
                    shared.metrics.trap(&label, kind.as_str());
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!(
                            "skiff: app {label} failed while handling the request ({})",
                            kind.as_str()
                        ),
                    )
                }
                HandleError::BadResponse(why) => (
                    StatusCode::BAD_GATEWAY,
                    format!("skiff: app {label} gave an invalid response: {why}"),
                ),
                HandleError::BodyTooLarge(cap) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("skiff: request body is larger than {cap} bytes"),
                ),
                HandleError::BadRequest(why) => (StatusCode::BAD_REQUEST, format!("skiff: {why}")),
                HandleError::Overloaded(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("skiff: app {label} cannot start another instance now: {why}"),
                ),
                HandleError::Instantiate(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("skiff: app {label} could not be started for this request"),
                ),
            };
            warn!(app = %label, container = %container.name, status = status.as_u16(), error = %e, "request failed");
            plain(status, text)
        }
    };
    // A pod of another node names itself; an error of ours names the endpoint.
    let named = matches!(container.workload(), Workload::Remote(_))
        && response.headers().contains_key("x-skiff-container");
    if !named && let Ok(v) = HeaderValue::from_str(&container.name) {
        response.headers_mut().insert("x-skiff-container", v);
    }
    shared
        .metrics
        .request(&label, response.status().as_u16(), elapsed);
    (response, retryable)
}
