//! Helpers of the router tests: requests through the API's router in process (no
//! socket), as kubectl sends them.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;

/// Sends one request through the API's router (no socket), with the token.
pub(super) async fn call(
    router: &axum::Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let (status, _, value) = answer(router, req).await;
    (status, value)
}

/// Sends a request through the router; its status, headers and JSON body (null
/// when it is not JSON).
pub(super) async fn answer(
    router: &axum::Router,
    req: Request<Body>,
) -> (StatusCode, http::HeaderMap, Value) {
    let resp = tower::ServiceExt::oneshot(router.clone(), req)
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls `check` until it gives a value; panics after 10 s.
pub(super) async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// One request with headers; the status, headers and body.
pub(super) async fn send(
    router: &axum::Router,
    token: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    answer(router, req).await
}

/// A POST of `body` with the token.
pub(super) async fn post(
    router: &axum::Router,
    token: &str,
    path: &str,
    body: Value,
) -> (StatusCode, http::HeaderMap, Value) {
    send(router, token, "POST", path, &[], Some(body)).await
}

/// A GET with the token.
pub(super) async fn get(
    router: &axum::Router,
    token: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, Value) {
    send(router, token, "GET", path, &[], None).await
}

/// Watch events from `path` until `done` holds of those read (within 10 s).
pub(super) async fn watch_until(
    router: &axum::Router,
    token: &str,
    path: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let req = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if done(&events) {
            return events;
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("watch events not in 10 s: {events:?}"))
            .expect("the watch goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

/// At least `n` watch events from `path`.
pub(super) async fn watch_lines(
    router: &axum::Router,
    token: &str,
    path: &str,
    n: usize,
) -> Vec<Value> {
    watch_until(router, token, path, |events| events.len() >= n).await
}

/// A node of its own for a test, in a temporary data dir (kept as long as the first
/// value lives), and its API's router.
pub(super) async fn served() -> (tempfile::TempDir, crate::RunningNode, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::start(crate::NodeConfig::for_test(dir.path().to_path_buf()))
        .await
        .unwrap();
    let router = crate::api::router(node.shared.clone());
    (dir, node, router)
}

/// A Deployment as a client writes it (nothing defaulted): `web`, one container with a
/// port and a readiness probe.
pub(super) fn stored_deployment() -> Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:v1",
                    "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"port": 80}}}]}
            }
        }
    })
}
