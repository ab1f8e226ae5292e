//! `/livez`, `/readyz` and `/healthz?verbose`, as the API server answers them: `ok`, or
//! with `?verbose` one line per check (`[+]ping ok`) and `readyz check passed`; a
//! failed check is `[-]name failed: reason withheld` and a 500, and `/readyz/<name>` of
//! a failed check says `reason withheld` too (the reason goes to the log, at most a
//! line per 10 s: these paths are public, as Kubernetes makes them for anyone). `?exclude=name`
//! leaves a check out, and `/readyz/<name>` runs one. skiff's own `/healthz` (with the
//! reason and the restore progress) is unchanged without `verbose`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Shared;
use crate::api::error::ApiError;

/// One check: its name and what it reads.
struct Check {
    name: &'static str,
    run: fn(&Shared) -> Result<(), String>,
}

/// The node answers at all.
const PING: Check = Check {
    name: "ping",
    run: |_| Ok(()),
};

/// Raft's log can be written (not waiting for disk space, not failed).
const RAFT: Check = Check {
    name: "raft-storage",
    run: |shared| shared.consensus.health(),
};

/// The desired state's store can be written.
const STATE: Check = Check {
    name: "state-store",
    run: |shared| shared.objects.state_health(),
};

/// The node is not stopping (a stopping API server is alive but not ready).
const SHUTDOWN: Check = Check {
    name: "shutdown",
    run: |shared| {
        if shared.shutdown.is_cancelled() {
            Err("the node is shutting down".into())
        } else {
            Ok(())
        }
    },
};

/// The checks of an endpoint: `livez` and `healthz` (as Kubernetes, the same), or
/// `readyz`, which also fails while the node stops.
fn checks(endpoint: &str) -> &'static [Check] {
    match endpoint {
        "readyz" => &[PING, RAFT, STATE, SHUTDOWN],
        _ => &[PING, RAFT, STATE],
    }
}

pub(in crate::api) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for endpoint in ["livez", "readyz"] {
        router = router
            .route(
                &format!("/{endpoint}"),
                get(
                    move |State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery| async move {
                        answer(&shared, endpoint, query)
                    },
                ),
            )
            .route(
                &format!("/{endpoint}/{{check}}"),
                get(
                    move |State(shared): State<Arc<Shared>>, Path(check): Path<String>| async move {
                        one(&shared, endpoint, &check)
                    },
                ),
            );
    }
    router.route(
        "/healthz/{check}",
        get(
            |State(shared): State<Arc<Shared>>, Path(check): Path<String>| async move {
                one(&shared, "healthz", &check)
            },
        ),
    )
}

/// Whether `/healthz` was asked the API server's way (`verbose`, `exclude`), which
/// [`answer`] answers; skiff's own answer is for the bare path.
pub(in crate::api) fn wants_checks(query: Option<&str>) -> bool {
    crate::api::http::query_pairs(query.map(String::from))
        .iter()
        .any(|(k, _)| k == "verbose" || k == "exclude")
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Runs `endpoint`'s checks, less those excluded.
pub(in crate::api) fn answer(shared: &Shared, endpoint: &str, query: Option<String>) -> Response {
    let pairs = crate::api::http::query_pairs(query);
    let verbose = pairs.iter().any(|(k, _)| k == "verbose");
    let mut excluded: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut lines = String::new();
    let mut failed = Vec::new();
    for check in checks(endpoint) {
        if let Some(i) = excluded.iter().position(|e| *e == check.name) {
            excluded.remove(i);
            lines.push_str(&format!("[+]{} excluded: ok\n", check.name));
            continue;
        }
        match (check.run)(shared) {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name)),
            Err(why) => {
                log_failure(check.name, endpoint, &why);
                lines.push_str(&format!("[-]{} failed: reason withheld\n", check.name));
                failed.push(check.name);
            }
        }
    }
    if !excluded.is_empty() {
        let names: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        lines.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            names.join(",")
        ));
    }
    if !failed.is_empty() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{lines}{endpoint} check failed\n"),
        );
    }
    if verbose {
        text(StatusCode::OK, format!("{lines}{endpoint} check passed\n"))
    } else {
        text(StatusCode::OK, "ok".into())
    }
}

/// `/readyz/<check>`: `ok`, or a 500 (the reason withheld).
fn one(shared: &Shared, endpoint: &str, name: &str) -> Response {
    let Some(check) = checks(endpoint).iter().find(|c| c.name == name) else {
        return ApiError::not_found(format!("no health check {name:?} at /{endpoint}"))
            .into_response();
    };
    match (check.run)(shared) {
        Ok(()) => text(StatusCode::OK, "ok".into()),
        Err(why) => {
            log_failure(check.name, endpoint, &why);
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error: reason withheld\n".into(),
            )
        }
    }
}

/// Logs why a check failed, at most once per 10 s: anyone may ask these paths, as
/// often as they like, and must not be able to flood the log.
fn log_failure(check: &str, endpoint: &str, why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::now_ms();
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(check, endpoint, reason = %why, "health check failed (logged once per 10 s)");
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt as _;

    /// A GET without a token: the status and the text.
    async fn public_get(router: &axum::Router, path: &str) -> (StatusCode, String) {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let resp = tower::ServiceExt::oneshot(router.clone(), req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_is_answered_as_the_api_server_answers_it() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        for path in ["/readyz", "/livez", "/readyz/ping", "/livez/raft-storage"] {
            assert_eq!(
                public_get(&router, path).await,
                (StatusCode::OK, "ok".to_string()),
                "{path}"
            );
        }
        assert_eq!(
            public_get(&router, "/readyz?verbose").await.1,
            "[+]ping ok\n[+]raft-storage ok\n[+]state-store ok\n[+]shutdown ok\nreadyz check passed\n"
        );
        assert_eq!(
            public_get(&router, "/healthz?verbose").await.1,
            "[+]ping ok\n[+]raft-storage ok\n[+]state-store ok\nhealthz check passed\n"
        );
        assert_eq!(
            public_get(&router, "/livez?verbose&exclude=ping&exclude=etcd")
                .await
                .1,
            "[+]ping excluded: ok\n[+]raft-storage ok\n[+]state-store ok\nwarn: some health checks cannot be excluded: no matches for \"etcd\"\nlivez check passed\n"
        );
        // skiff's own answer stays as it was.
        let (s, own) = public_get(&router, "/healthz").await;
        assert!(s == StatusCode::OK && own.starts_with("ok\n"), "{own}");
        assert_eq!(
            public_get(&router, "/readyz/etcd").await.0,
            StatusCode::NOT_FOUND
        );

        // A stopping node is alive and not ready.
        node.shutdown_token().cancel();
        let (s, text) = public_get(&router, "/readyz?verbose").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            text.contains("[-]shutdown failed: reason withheld\n")
                && text.ends_with("readyz check failed\n"),
            "{text}"
        );
        let (s, text) = public_get(&router, "/readyz/shutdown").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            text, "internal server error: reason withheld\n",
            "an anonymous client learns nothing of the node's state"
        );
        assert_eq!(public_get(&router, "/livez").await.0, StatusCode::OK);
        node.wait().await.unwrap();
    }
}
