//! Logs and metrics.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;

use crate::harness::{Node, hello_wasm, metric, wagi_wasm};

#[tokio::test]
async fn guest_output_is_in_the_app_log_with_timestamps() {
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    node.deploy_ok("cgi", wagi_wasm(), "").await;
    assert_eq!(node.get("hello", "/log?n=1").await.0, 200);
    assert_eq!(node.get("cgi", "/log").await.0, 200);

    let text = node
        .api_get("/v1/apps/hello/logs?tail=10")
        .await
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["stream"], "stdout");
    assert_eq!(lines[0]["line"], "hello on stdout: n=1");
    assert_eq!(lines[1]["stream"], "stderr");
    assert!(
        lines[0]["container"]
            .as_str()
            .unwrap()
            .starts_with("hello-")
    );
    assert!(lines[0]["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let text = node
        .api_get("/v1/apps/cgi/logs")
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("wagi says hi on stderr"), "{text}");

    let one = node
        .api_get("/v1/apps/hello/logs?tail=1")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(one.lines().count(), 1);
    assert_eq!(
        node.api_get("/v1/apps/hello/logs?tail=x").await.status(),
        400
    );
    assert_eq!(node.api_get("/v1/apps/nope/logs").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_logs_streams_new_lines() {
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    assert_eq!(node.get("hello", "/log?n=old").await.0, 200);
    let resp = node.api_get("/v1/apps/hello/logs?tail=1&follow=true").await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("n=new") {
        if seen.contains("n=old") && !sent {
            assert_eq!(node.get("hello", "/log?n=new").await.0, 200);
            sent = true;
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("new line arrives")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        seen.contains("hello on stderr: n=old"),
        "tail first: {seen}"
    );
    assert!(seen.find("n=old").unwrap() < seen.find("n=new").unwrap());
}

#[tokio::test]
async fn metrics_count_requests_durations_instances_and_compiles() {
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    for _ in 0..3 {
        assert_eq!(node.get("hello", "/").await.0, 200);
    }
    assert_eq!(node.get("hello", "/nope").await.0, 404);
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_requests_total{app="hello",status="200"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"skiff_requests_total{app="hello",status="404"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"skiff_request_duration_seconds_count{app="hello"}"#),
        4.0
    );
    assert_eq!(
        metric(&m, r#"skiff_instance_starts_total{app="hello"}"#),
        4.0
    );
    assert_eq!(
        metric(&m, r#"skiff_compile_duration_seconds_count{cache="miss"}"#),
        1.0
    );
    assert_eq!(metric(&m, "skiff_apps"), 1.0);
    assert!(metric(&m, "process_resident_memory_bytes") > 1e6);
    assert!(metric(&m, "process_open_fds") > 0.0);
}
