//! The CLI against a real node: deploy, apps, logs, inspect, rm, and its errors.

use std::process::Output;

use crate::harness::{Node, SKIFF, hello_wasm, skiff};

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn deploy_list_logs_inspect_rm() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hello.wasm");
    std::fs::write(&wasm, hello_wasm()).unwrap();
    let w = wasm.to_str().unwrap();

    let o = skiff(
        &node,
        &[
            "deploy",
            w,
            "--name",
            "hello",
            "--env",
            "GREETING=hi",
            "--memory",
            "64MiB",
            "--timeout",
            "2s",
            "--replicas",
            "2",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("2/2 ready"), "{}", out(&o));
    assert_eq!(
        node.get("hello", "/").await,
        (200, "hi from skiff\n".to_string())
    );

    // The name defaults to the file stem, made a DNS label.
    let other = dir.path().join("My_App.wasm");
    std::fs::write(&other, hello_wasm()).unwrap();
    let o = skiff(&node, &["deploy", other.to_str().unwrap()]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("my-app "), "{}", out(&o));

    let o = skiff(&node, &["apps"]).await;
    let table = out(&o);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "KIND", "IMAGE", "REPLICAS", "READY", "AGE"]
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("hello "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], ["hello", "http", "hello:latest", "2", "2"]);

    assert_eq!(node.get("hello", "/log?from=cli").await.0, 200);
    let o = skiff(&node, &["logs", "hello", "--tail", "1"]).await;
    let logs = out(&o);
    assert_eq!(logs.lines().count(), 1, "{logs}");
    assert!(logs.contains("stderr: hello on stderr: from=cli"), "{logs}");
    assert!(logs.starts_with("20"), "timestamped: {logs}");

    let o = skiff(&node, &["inspect", "hello"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["replicas"], 2);

    let o = skiff(&node, &["rm", "hello", "hello"]).await;
    assert!(!o.status.success(), "second rm of the same app fails");
    assert!(
        err(&o).starts_with("error: app hello not found"),
        "{}",
        err(&o)
    );
    assert_eq!(node.get("hello", "/").await.0, 404);
}

#[tokio::test]
async fn errors_are_one_line_and_exit_non_zero() {
    let node = Node::start().await;
    let o = skiff(&node, &["deploy", "/etc/hostname", "--name", "x"]).await;
    assert!(!o.status.success());
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    assert!(err(&o).contains("not a WebAssembly binary"), "{}", err(&o));

    let o = skiff(&node, &["deploy", "/nonexistent.wasm"]).await;
    assert!(
        err(&o).starts_with("error: failed to read /nonexistent.wasm"),
        "{}",
        err(&o)
    );

    let mut cmd = tokio::process::Command::new(SKIFF);
    let o = cmd
        .args(["apps"])
        .env("SKIFF_API", &node.api)
        .env("SKIFF_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(err(&o).contains("bearer token"), "{}", err(&o));

    let mut cmd = tokio::process::Command::new(SKIFF);
    let o = cmd
        .args(["apps"])
        .env("SKIFF_API", "http://127.0.0.1:1")
        .env("SKIFF_TOKEN", "t")
        .output()
        .await
        .unwrap();
    assert!(
        err(&o).contains("cannot reach the skiff API"),
        "{}",
        err(&o)
    );
}
