//! Docker's own CLI (and its wire protocol) against a skiff node's Docker API socket.

use std::time::Duration;

use crate::harness::{Node, free_port, ok, wait_for};
use crate::oci::{busybox_layer, docker_save, load, need_root_and_runc, outcome};

/// The `docker` CLI with `DOCKER_HOST` on `node`'s socket.
async fn docker(node: &Node, args: &[&str]) -> std::process::Output {
    let socket = node.dir.join("docker.sock");
    let run = tokio::process::Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", node.dir.join("docker-cli"))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("docker {args:?} did not return within 60 s"))
        .expect("Docker's CLI is installed (./test installs docker.io where it is missing)")
}

fn stdout_of(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "docker failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockers_cli_negotiates_and_runs_lists_logs_stops_starts_and_removes() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;

    let version =
        stdout_of(&docker(&node, &["version", "--format", "{{.Server.APIVersion}}"]).await);
    assert_eq!(
        version.trim(),
        "1.45",
        "negotiated down to the node's version"
    );
    let images = stdout_of(&docker(&node, &["images"]).await);
    assert!(images.contains("bb") && images.contains("v1"), "{images}");

    let port = free_port();
    let publish = format!("{port}:80");
    let id = stdout_of(
        &docker(
            &node,
            &[
                "run", "-d", "--name", "web", "-p", &publish, "bb:v1", "httpd", "-f", "-v", "-p",
                "80", "-h", "/www",
            ],
        )
        .await,
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    let url = format!("http://127.0.0.1:{port}/");
    let page = wait_for(
        "the published port to answer",
        Duration::from_secs(20),
        || async { reqwest::get(&url).await.ok()?.text().await.ok() },
    )
    .await;
    assert!(page.contains("busybox httpd"), "{page}");

    let ps = stdout_of(&docker(&node, &["ps"]).await);
    assert!(
        ps.contains("web")
            && ps.contains("Up ")
            && ps.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "{ps}"
    );
    let (_, _, logs) = outcome(&docker(&node, &["logs", "web"]).await);
    assert!(
        logs.contains("response:200"),
        "httpd -v logs to stderr: {logs}"
    );
    let state = stdout_of(
        &docker(
            &node,
            &["inspect", "--format", "{{.State.Status}} {{.Name}}", "web"],
        )
        .await,
    );
    assert_eq!(state.trim(), "running /web");

    ok(&docker(&node, &["stop", "-t", "1", "web"]).await);
    let ps = stdout_of(&docker(&node, &["ps", "-a", "--filter", "status=exited"]).await);
    assert!(ps.contains("web") && ps.contains("Exited ("), "{ps}");
    assert!(!stdout_of(&docker(&node, &["ps"]).await).contains("web"));
    ok(&docker(&node, &["start", "web"]).await);
    assert!(stdout_of(&docker(&node, &["ps", "--filter", "name=web"]).await).contains("web"));
    ok(&docker(&node, &["rm", "-f", "web"]).await);
    assert!(!stdout_of(&docker(&node, &["ps", "-a"]).await).contains("web"));

    // Errors as Docker's: the CLI prints the daemon's message.
    let (code, _, e) = outcome(&docker(&node, &["rm", "nothing-here"]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("No such container: nothing-here"), "{e}");
    let (code, _, e) = outcome(&docker(&node, &["create", "--name", "x", "bb:v1", "true"]).await);
    assert_eq!(code, Some(0), "{e}");
    let (code, _, e) = outcome(&docker(&node, &["create", "--name", "x", "bb:v1", "true"]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("already in use"), "{e}");
}
