//! State across restarts, crashes, and redeploys under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Node, hello_wasm, metric, wagi_wasm, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_drains_then_serves_the_same_apps_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_in(dir.path(), &[]).await;
    node.deploy_ok("hello", hello_wasm(), "env=GREETING=persisted&replicas=2")
        .await;
    node.deploy_ok("cgi", wagi_wasm(), "").await;
    let before = node.get("hello", "/").await;
    assert_eq!(before, (200, "persisted from skiff\n".to_string()));

    // A request in flight when the node is told to stop still completes.
    let (http, ingress) = (node.http.clone(), node.ingress);
    let in_flight = tokio::spawn(async move {
        let r = http
            .get(format!("http://{ingress}/sleep?ms=700"))
            .header("host", "hello.localhost")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    node.wait_in_flight("hello").await;
    node.stop().await;
    assert_eq!(
        in_flight.await.unwrap(),
        (200, "slept\n".to_string()),
        "Ctrl-C drains in-flight requests"
    );

    let node = Node::start_in(dir.path(), &[]).await;
    assert_eq!(node.get("hello", "/").await, before);
    let (s, cgi) = node.get("cgi", "/").await;
    assert_eq!(s, 200);
    assert!(cgi.starts_with("wagi hello"), "{cgi}");
    let status: serde_json::Value = node.api_get("/v1/apps/hello").await.json().await.unwrap();
    assert_eq!(status["ready"], 2);
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_compile_duration_seconds_count{cache="hit"}"#),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"skiff_compile_duration_seconds_count{cache="miss"}"#),
        0.0,
        "nothing recompiled: {m}"
    );
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_in(dir.path(), &[]).await;
    node.deploy_ok("one", hello_wasm(), "env=GREETING=first")
        .await;
    node.deploy_ok("two", hello_wasm(), "env=GREETING=second")
        .await;
    node.deploy_ok("one", hello_wasm(), "env=GREETING=updated")
        .await;
    node.kill9();

    let node = Node::start_in(dir.path(), &[]).await;
    assert_eq!(
        node.get("one", "/").await,
        (200, "updated from skiff\n".to_string())
    );
    assert_eq!(
        node.get("two", "/").await,
        (200, "second from skiff\n".to_string())
    );
    let status: serde_json::Value = node.api_get("/v1/apps/one").await.json().await.unwrap();
    assert_eq!(status["generation"], 2);
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_compile_duration_seconds_count{cache="miss"}"#),
        0.0,
        "not recompiled: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_redeploy_finishes_on_the_old_version() {
    let node = Arc::new(Node::start().await);
    node.deploy_ok("app", hello_wasm(), "env=GREETING=old")
        .await;
    let slow = {
        let node = node.clone();
        tokio::spawn(async move { node.get("app", "/sleep?ms=800").await })
    };
    node.wait_in_flight("app").await;
    node.deploy_ok("app", hello_wasm(), "env=GREETING=new")
        .await;
    assert_eq!(
        node.get("app", "/").await,
        (200, "new from skiff\n".to_string())
    );
    assert_eq!(slow.await.unwrap(), (200, "slept\n".to_string()));
}

#[tokio::test]
async fn only_code_the_node_sealed_is_loaded_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_in(dir.path(), &[]).await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    node.stop().await;

    // Tamper with every cached artifact: a different byte of native code.
    let mut tampered = 0;
    for engine_dir in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        for entry in std::fs::read_dir(engine_dir.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            tampered += 1;
        }
    }
    assert_eq!(tampered, 1);

    let node = Node::start_in(dir.path(), &[]).await;
    assert_eq!(
        node.get("hello", "/").await,
        (200, "hello from skiff\n".to_string())
    );
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_compile_duration_seconds_count{cache="hit"}"#),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"skiff_compile_duration_seconds_count{cache="miss"}"#),
        1.0,
        "recompiled: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploys_under_continuous_load_fail_no_request() {
    let node = Arc::new(Node::start().await);
    node.deploy_ok("live", hello_wasm(), "env=GREETING=v0")
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (node, stop) = (node.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut results: Vec<(u16, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && results.len() < 20_000
            {
                results.push(node.get("live", "/").await);
            }
            results
        }));
    }
    for round in 1..=4 {
        // Let some requests land on the current version before switching.
        wait_for("traffic", Duration::from_secs(10), || async {
            let m = node.metrics().await;
            (metric(&m, r#"skiff_requests_total{app="live",status="200"}"#) >= (round * 300) as f64)
                .then_some(())
        })
        .await;
        node.deploy_ok(
            "live",
            hello_wasm(),
            &format!("env=GREETING=v{round}&replicas={}", 1 + round % 2),
        )
        .await;
    }
    wait_for(
        "traffic on the last version",
        Duration::from_secs(10),
        || async {
            let m = node.metrics().await;
            (metric(&m, r#"skiff_requests_total{app="live",status="200"}"#) >= 1500.0).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        for (status, body) in c.await.unwrap() {
            assert_eq!(status, 200, "a request failed during a redeploy: {body}");
            versions.insert(body);
            total += 1;
        }
    }
    assert!(total >= 1500, "only {total} requests were made");
    assert!(versions.contains("v4 from skiff\n"), "{versions:?}");
    assert!(
        versions.len() >= 2,
        "requests spanned the redeploys: {versions:?}"
    );
}
