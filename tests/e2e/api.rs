//! The API: uploads, app objects, bad input, auth.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::Value;

use crate::harness::{Node, hello_wasm, ok, skiff, wat};

#[tokio::test]
async fn upload_serves_and_redeploy_bumps_generation() {
    let node = Node::start().await;
    let resp = node
        .deploy(
            "hello",
            hello_wasm(),
            "env=GREETING=hi&memory=64MiB&timeout=2s&replicas=2",
        )
        .await;
    assert_eq!(resp.status(), 201);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(status["kind"], "http");
    assert_eq!(status["ready"], 2);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["limits"]["memory_bytes"], 64 << 20);
    assert_eq!(status["limits"]["timeout_ms"], 2000);
    assert_eq!(status["env_keys"][0], "GREETING");
    assert_eq!(status["containers"].as_array().unwrap().len(), 2);

    assert_eq!(
        node.get("hello", "/").await,
        (200, "hi from skiff\n".to_string())
    );

    let again = node
        .deploy("hello", hello_wasm(), "env=GREETING=bonjour")
        .await;
    assert_eq!(again.status(), 200, "a redeploy is an update, not a create");
    let status: Value = again.json().await.unwrap();
    assert_eq!(status["generation"], 2);
    assert_eq!(
        node.get("hello", "/").await,
        (200, "bonjour from skiff\n".to_string())
    );

    let list: Value = node.api_get("/v1/apps").await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "hello");
}

#[tokio::test]
async fn replicas_share_the_load() {
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "replicas=3").await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = node
            .app(reqwest::Method::GET, "hello", "/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        seen.insert(
            r.headers()["x-skiff-container"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 3, "round-robin reaches every replica: {seen:?}");
}

#[tokio::test]
async fn remove_stops_serving_and_rmi_frees_the_image() {
    let node = Node::start().await;
    let status = node.deploy_ok("gone", hello_wasm(), "").await;
    let digest = status["image"].as_str().unwrap().to_string();
    let blobs = node.dir.join("images/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        3,
        "manifest, config and the wasm layer"
    );
    let images: Value = node.api_get("/v1/images").await.json().await.unwrap();
    assert_eq!(images[0]["tags"][0], "gone:latest");
    assert_eq!(images[0]["id"], digest.as_str());
    assert_eq!(images[0]["used_by"][0], "app gone");

    // An image in use keeps its last name unless forced.
    assert_eq!(node.api_delete("/v1/images?ref=gone").await, 409);
    assert_eq!(node.api_delete("/v1/apps/gone").await, 204);
    assert_eq!(node.get("gone", "/").await.0, 404);
    assert_eq!(node.api_get("/v1/apps/gone").await.status(), 404);
    assert_eq!(node.api_delete("/v1/apps/gone").await, 404);
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        3,
        "removing an app keeps its image, as docker rm does"
    );

    assert_eq!(node.api_delete("/v1/images?ref=gone").await, 204);
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        0,
        "an image nothing names or runs is deleted"
    );
}

async fn refused(node: &Node, name: &str, body: Vec<u8>, query: &str) -> (u16, String, String) {
    let r = node.deploy(name, body, query).await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        status,
        v["error"]["code"].as_str().unwrap().to_string(),
        v["error"]["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn bad_uploads_are_refused_with_the_reason_and_leave_nothing() {
    let node = Node::start().await;
    let (s, code, msg) = refused(&node, "x", Vec::new(), "").await;
    assert_eq!((s, code.as_str()), (400, "invalid_wasm"));
    assert!(msg.contains("empty"), "{msg}");

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (s, _, msg) = refused(&node, "x", random, "").await;
    assert_eq!(s, 400);
    assert!(msg.contains("magic"), "{msg}");

    let hello = hello_wasm();
    let (s, _, msg) = refused(&node, "x", hello[..hello.len() / 2].to_vec(), "").await;
    assert_eq!(s, 400);
    assert!(
        msg.contains("invalid WebAssembly") && msg.contains("offset"),
        "parser message with offset: {msg}"
    );

    let other_world = wat(
        r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
        (func (export "run") (canon lift (core func $i "f"))))"#,
    );
    let (s, _, msg) = refused(&node, "x", other_world, "").await;
    assert_eq!(s, 400);
    assert!(
        msg.contains("wasi:http/incoming-handler") && msg.contains("run"),
        "{msg}"
    );

    let no_start = wat(r#"(module (func (export "main")))"#);
    let (s, _, msg) = refused(&node, "x", no_start, "").await;
    assert_eq!(s, 400);
    assert!(msg.contains("_start"), "{msg}");

    let imports_unknown =
        wat(r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#);
    let (s, code, msg) = refused(&node, "x", imports_unknown, "").await;
    assert_eq!((s, code.as_str()), (400, "unsupported_imports"), "{msg}");
    assert!(msg.contains("launch_missiles"), "{msg}");

    for bad_name in ["Hello", "a_b", "-a", &"x".repeat(64)] {
        let (s, code, msg) = refused(&node, bad_name, hello_wasm(), "").await;
        assert_eq!(
            (s, code.as_str()),
            (400, "invalid_name"),
            "{bad_name}: {msg}"
        );
    }
    for bad_param in [
        "memory=lots",
        "timeout=0s",
        "replicas=1000",
        "env=NOEQUALS",
        "colour=blue",
    ] {
        let (s, code, msg) = refused(&node, "x", hello_wasm(), bad_param).await;
        assert_eq!(
            (s, code.as_str()),
            (400, "invalid_parameter"),
            "{bad_param}: {msg}"
        );
    }

    let list: Value = node.api_get("/v1/apps").await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
    assert_eq!(
        std::fs::read_dir(node.dir.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "no blob was kept"
    );
    assert_eq!(
        std::fs::read_dir(node.dir.join("images/tmp"))
            .unwrap()
            .count(),
        0,
        "no temp file was left"
    );
}

#[tokio::test]
async fn uploads_over_the_cap_get_413_while_streaming() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let node = Node::start_with(&["--upload-limit", "1MiB"]).await;
    let authority = node.api.trim_start_matches("http://").to_string();

    // A declared length over the cap is refused before a byte of the body is sent.
    let mut sock = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!(
        "PUT /v1/apps/big HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        node.token,
        3 << 20
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), sock.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // Chunked, no length: refused once the stream passes the cap.
    let big = vec![0u8; (1 << 20) + (256 << 10)];
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let r = node
        .http
        .put(format!("{}/v1/apps/big", node.api))
        .bearer_auth(&node.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        std::fs::read_dir(node.dir.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(node.dir.join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
    // The node is fine and small uploads still work.
    node.deploy_ok("small", hello_wasm(), "").await;
}

#[tokio::test]
async fn api_needs_the_token_except_healthz() {
    let node = Node::start().await;
    let mode = std::fs::metadata(node.dir.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file is private");
    let r = node
        .http
        .get(format!("{}/healthz", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in [
        "/v1/apps",
        "/v1/apps/x",
        "/metrics",
        "/v1/apps/x/logs",
        // The Kubernetes API and the CA a kubeconfig carries are the token's too.
        "/v1/cluster/ca",
        "/api",
        "/openapi/v2",
        "/api/v1/namespaces/default/pods?watch=true",
        "/apis/apps/v1/namespaces/default/deployments",
    ] {
        let r = node
            .http
            .get(format!("{}{path}", node.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
        let r = node
            .http
            .get(format!("{}{path}", node.api))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        // kubectl reads the same answer as a Status.
        assert_eq!(body["reason"], "Unauthorized");
    }
    // A small body: the node answers 401 without reading uploads from strangers.
    let r = node
        .http
        .put(format!("{}/v1/apps/x", node.api))
        .body(&b"\0asm\x01\0\0\0"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["connection"],
        "close",
        "the unread body ends the connection"
    );
    let list: Value = node.api_get("/v1/apps").await.json().await.unwrap();
    assert!(
        list.as_array().unwrap().is_empty(),
        "the unauthenticated upload did nothing"
    );
}

#[tokio::test]
async fn unknown_hosts_and_apps_get_404() {
    let node = Node::start().await;
    let r = node
        .http
        .get(format!("http://{}/", node.ingress))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("<app>.localhost"));
    assert_eq!(node.get("nothing-here", "/").await.0, 404);
}

#[tokio::test]
async fn lists_page_as_kubernetes_pages_and_the_cli_follows_the_pages() {
    let node = Node::start().await;
    for name in ["pa", "pb", "pc"] {
        node.deploy_ok(name, hello_wasm(), "").await;
    }
    let page: Value = node.api_get("/v1/apps?limit=2").await.json().await.unwrap();
    let names = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), ["pa", "pb"]);
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let last: Value = node
        .api_get(&format!("/v1/apps?limit=2&continue={token}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names(&last), ["pc"]);
    assert!(last["metadata"]["continue"].is_null(), "{last}");
    // Without a limit: the whole list, as before.
    let all: Value = node.api_get("/v1/apps").await.json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    for bad in [
        "/v1/apps?limit=0",
        "/v1/apps?limit=x",
        "/v1/apps?limit=1&continue=zz",
    ] {
        let r = node.api_get(bad).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    // The CLI asks a page of one at a time and shows all three.
    let out = ok(&skiff(&node, &["apps", "--chunk-size", "1"]).await);
    for name in ["pa", "pb", "pc"] {
        assert!(out.contains(name), "{out}");
    }
    assert_eq!(out.lines().count(), 4, "{out}");
}
