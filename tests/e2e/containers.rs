//! Docker's verbs for single containers: run, ps, stop, start, restart, rm, logs, inspect.

use serde_json::Value;

use crate::harness::{Node, err, free_port, hello_wasm, ok, skiff, wait_for};

async fn on_port(port: u16, path: &str) -> Result<(u16, String), reqwest::Error> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ps_stop_start_rm_with_a_published_port() {
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "env=GREETING=app")
        .await;
    let port = free_port();
    let publish = format!("{port}:80");
    let id = ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &publish,
            "-e",
            "GREETING=box",
            "--memory",
            "64m",
            "hello",
        ],
    )
    .await);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");

    assert_eq!(
        on_port(port, "/").await.unwrap(),
        (200, "box from skiff\n".to_string()),
        "the published port"
    );
    assert_eq!(
        node.get("web", "/").await,
        (200, "box from skiff\n".to_string()),
        "the ingress host route"
    );

    let ps = ok(&skiff(&node, &["ps"]).await);
    let header: Vec<&str> = ps
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "CONTAINER ID",
            "IMAGE",
            "KIND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES"
        ]
    );
    let row = ps
        .lines()
        .find(|l| l.ends_with(" web"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        row.starts_with(&id[..12])
            && row.contains("Up ")
            && row.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "{row}"
    );
    assert!(
        ps.lines().any(|l| l.contains(" hello-")),
        "deployment replicas are containers too: {ps}"
    );
    let quiet = ok(&skiff(&node, &["ps", "-q"]).await);
    assert!(quiet.lines().any(|l| l == &id[..12]), "{quiet}");

    let e = err(&skiff(&node, &["rm", "web"]).await);
    assert!(e.contains("is running"), "{e}");
    let e = err(&skiff(&node, &["run", "-d", "--name", "web", "hello"]).await);
    assert!(e.contains("already in use"), "{e}");
    let e = err(&skiff(&node, &["run", "-d", "--name", "hello", "hello"]).await);
    assert!(
        e.contains("already in use"),
        "an app's name is taken too: {e}"
    );
    let e = err(&skiff(&node, &["deploy", "hello", "--name", "web"]).await);
    assert!(e.contains("already used by a container"), "{e}");
    // A Wasm container has no process: what only narrows one holds already and is
    // taken; what would grant something is refused, naming it.
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "narrow",
            "-u",
            "1000",
            "--read-only",
            "--cap-drop",
            "ALL",
            "hello",
        ],
    )
    .await);
    ok(&skiff(&node, &["rm", "-f", "narrow"]).await);
    let e = err(&skiff(
        &node,
        &["run", "-d", "--name", "wide", "--tmpfs", "/tmp", "hello"],
    )
    .await);
    assert!(e.contains("tmpfs /tmp cannot be mounted"), "{e}");
    let e = err(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "wide",
            "--cap-add",
            "NET_RAW",
            "hello",
        ],
    )
    .await);
    assert!(e.contains("capability NET_RAW cannot be added"), "{e}");
    let e = err(&skiff(
        &node,
        &["run", "-d", "--name", "other", "-p", &publish, "hello"],
    )
    .await);
    assert!(
        e.contains(&port.to_string()),
        "a taken port is a clear error: {e}"
    );

    ok(&skiff(&node, &["stop", "-t", "1", "web"]).await);
    assert!(
        on_port(port, "/").await.is_err(),
        "a stopped container's port is closed"
    );
    assert_eq!(node.get("web", "/").await.0, 404);
    let ps = ok(&skiff(&node, &["ps"]).await);
    assert!(!ps.contains(" web"), "ps hides stopped containers: {ps}");
    let ps = ok(&skiff(&node, &["ps", "-a"]).await);
    assert!(
        ps.lines()
            .any(|l| l.ends_with(" web") && l.contains("Exited (0)") && l.contains("ago")),
        "{ps}"
    );

    ok(&skiff(&node, &["start", "web"]).await);
    assert_eq!(on_port(port, "/").await.unwrap().0, 200);
    ok(&skiff(&node, &["restart", &id[..12]]).await);
    assert_eq!(on_port(port, "/").await.unwrap().0, 200);

    assert_eq!(node.get("web", "/log?from=web").await.0, 200);
    let logs = ok(&skiff(&node, &["logs", "--tail", "1", "web"]).await);
    assert!(logs.contains("stderr: hello on stderr: from=web"), "{logs}");

    let inspect: Value =
        serde_json::from_str(&ok(&skiff(&node, &["inspect", "web"]).await)).unwrap();
    assert_eq!(inspect["id"], id.as_str());
    assert_eq!(inspect["limits"]["memory_bytes"], 64 << 20);
    assert_eq!(inspect["state"], "running");

    let replica = ps
        .lines()
        .find(|l| l.contains(" hello-"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let e = err(&skiff(&node, &["stop", &replica]).await);
    assert!(e.contains("deployment hello"), "{e}");

    // The image a container runs (even a stopped one) keeps its last name unless forced.
    ok(&skiff(&node, &["tag", "hello", "boxed"]).await);
    ok(&skiff(&node, &["run", "-d", "--name", "boxed", "boxed"]).await);
    ok(&skiff(&node, &["stop", "boxed"]).await);
    ok(&skiff(&node, &["rmi", "hello"]).await);
    let e = err(&skiff(&node, &["rmi", "boxed"]).await);
    assert!(
        e.contains("container boxed") && e.contains("app hello"),
        "{e}"
    );
    ok(&skiff(&node, &["rmi", "-f", "boxed"]).await);
    ok(&skiff(&node, &["start", "boxed"]).await);
    assert_eq!(
        node.get("boxed", "/").await.0,
        200,
        "a forced rmi keeps the data a container runs"
    );

    ok(&skiff(&node, &["rm", "-f", "web"]).await);
    assert!(on_port(port, "/").await.is_err());
    let ps = ok(&skiff(&node, &["ps", "-a"]).await);
    assert!(!ps.contains(" web"), "{ps}");
    let e = err(&skiff(&node, &["rm", "web"]).await);
    assert!(e.contains("not found"), "{e}");
    // Replicas of deployments with hyphenated names are recognised too (an image
    // uploaded in the same second as hello's may share its digest, so this comes last).
    node.deploy_ok("two-words", hello_wasm(), "").await;
    let ps = ok(&skiff(&node, &["ps"]).await);
    let replica = ps
        .lines()
        .find(|l| l.contains(" two-words-"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let e = err(&skiff(&node, &["rm", "-f", &replica]).await);
    assert!(e.contains("deployment two-words"), "{e}");
    assert_eq!(
        node.get("hello", "/").await,
        (200, "app from skiff\n".to_string()),
        "the deployment is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_across_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_in(dir.path(), &[]).await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    let (pa, pn, pf) = (free_port(), free_port(), free_port());
    for (name, policy, port) in [
        ("always", "always", pa),
        ("never", "no", pn),
        ("flaky", "on-failure", pf),
    ] {
        let publish = format!("{port}:80");
        ok(&skiff(
            &node,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--restart",
                policy,
                "-p",
                &publish,
                "hello",
            ],
        )
        .await);
    }
    node.stop().await;

    // A clean stop: `always` comes back, the others stay down (exit 0 is no failure).
    let node = Node::start_in(dir.path(), &[]).await;
    assert_eq!(on_port(pa, "/").await.unwrap().0, 200);
    assert!(on_port(pn, "/").await.is_err());
    assert!(on_port(pf, "/").await.is_err());
    let list: Value = node
        .api_get("/v1/containers?all=true")
        .await
        .json()
        .await
        .unwrap();
    let state = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["state"].clone())
            .unwrap()
    };
    assert_eq!(
        (state("always"), state("never"), state("flaky")),
        ("running".into(), "exited".into(), "exited".into())
    );

    // A crash (kill -9) counts as a failure: on-failure comes back too.
    ok(&skiff(&node, &["start", "flaky", "never"]).await);
    node.kill9();
    let node = Node::start_in(dir.path(), &[]).await;
    assert_eq!(on_port(pa, "/").await.unwrap().0, 200);
    assert_eq!(on_port(pf, "/").await.unwrap().0, 200);
    assert!(on_port(pn, "/").await.is_err());
    let never: Value = node
        .api_get("/v1/containers/never")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (never["state"].as_str(), never["exit_code"].as_i64()),
        (Some("exited"), Some(255))
    );
    wait_for(
        "the node to serve the app",
        std::time::Duration::from_secs(5),
        || async { (node.get("hello", "/").await.0 == 200).then_some(()) },
    )
    .await;
}
