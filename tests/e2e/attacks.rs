//! Attacks on real nodes, shaped as an attacker would make them: a signed peer write
//! replayed by someone holding a member's data dir, a JSON-patch bomb and oversized
//! patches through kubectl, and registries that send a manifest or a token without end.
//! Each is refused naming what was wrong, and the node stays small and serving.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::bounds::vm_kib;
use crate::harness::{Node, err, ok, skiff, wait_for};

/// Most a node's resident memory may ever reach in these tests (its peak, `VmHWM`).
const MAX_RSS_KIB: u64 = 300 << 10;

/// The node's peak resident memory, asserted under [`MAX_RSS_KIB`] after `what`.
fn peak_rss_within_bound(node: &Node, what: &str) -> u64 {
    let peak = vm_kib(node.pid(), "VmHWM:");
    assert!(
        peak < MAX_RSS_KIB,
        "the node's peak RSS reached {} MiB after {what}",
        peak >> 10
    );
    peak
}

/// A node's id (16 hex digits) from its data dir.
fn node_id(node: &Node) -> String {
    let identity: Value =
        serde_json::from_slice(&std::fs::read(node.dir.join("cluster.json")).unwrap()).unwrap();
    identity["node_id"].as_str().unwrap().to_string()
}

/// 32 random hex digits, as a peer request id is.
fn random_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new();
    (0..2u64)
        .map(|i| {
            let mut h = random.build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// What an attacker holding member `stolen`'s data dir can make: its cluster's peer key
/// (from the join secret and cluster id there) and a client certificate for it (from
/// the CA key there).
struct Member {
    id: u64,
    key: skiff_node::raft::peer::PeerKey,
    tls: tokio_rustls::TlsConnector,
}

impl Member {
    fn stolen(stolen: &Node) -> Member {
        let token = std::fs::read_to_string(stolen.dir.join("join-token")).unwrap();
        let secret = token.trim().split_once("::").unwrap().1.to_string();
        let identity: Value =
            serde_json::from_slice(&std::fs::read(stolen.dir.join("cluster.json")).unwrap())
                .unwrap();
        let id = node_id(stolen);
        Member {
            id: u64::from_str_radix(&id, 16).unwrap(),
            key: skiff_node::raft::peer::PeerKey::new(
                &secret,
                identity["cluster_id"].as_str().unwrap(),
            ),
            tls: tokio_rustls::TlsConnector::from(
                skiff_node::member_client(&stolen.dir, &id).unwrap(),
            ),
        }
    }

    /// The bytes of a peer request to `path` addressed to node `to`, with `body`, signed
    /// by the node's own signer.
    fn request(&self, to: u64, path: &str, body: &[u8]) -> Vec<u8> {
        let id = random_id();
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let envelope = skiff_node::raft::peer::Envelope {
            ms,
            id: &id,
            from: self.id,
            to,
            path,
        };
        let signature = self.key.sign(&envelope, body);
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{}: {signature}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            skiff_node::raft::peer::HEADER,
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends `bytes` to `node`'s API over mutual TLS: the status and body of the answer.
    async fn send(&self, node: &Node, bytes: &[u8]) -> (u16, String) {
        let addr = node.api.trim_start_matches("http://");
        let exchange = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
                std::net::Ipv4Addr::LOCALHOST.into(),
            );
            let mut tls = self.tls.connect(name, tcp).await.unwrap();
            tls.write_all(bytes).await.unwrap();
            // Until the node closes (`connection: close`), at most 1 MiB.
            let mut answer = Vec::new();
            let mut buf = vec![0u8; 16 << 10];
            while answer.len() < 1 << 20 {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("the node answers a peer request within 30 s");
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }
}

/// A Deployment's generation and first container image, as `node` has it.
async fn generation_and_image(node: &Node, name: &str) -> (i64, String) {
    let d: Value = node
        .api_get(&format!(
            "/apis/apps/v1/namespaces/default/deployments/{name}"
        ))
        .await
        .json()
        .await
        .unwrap();
    (
        d["metadata"]["generation"].as_i64().unwrap(),
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// A Deployment of no pods (nothing to pull) of `image`, as JSON.
fn idle_deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            // (A rolling update's 25% of no pods is 0 and 0, which skiff refuses.)
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    })
}

#[tokio::test]
async fn a_stolen_members_signed_write_is_served_once_and_only_by_the_node_it_names() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let (one, two, three) =
        crate::cluster::three_nodes([dirs[0].path(), dirs[1].path(), dirs[2].path()]).await;
    let roles = crate::cluster::roles(&one).await;
    let mut nodes = vec![("one", one), ("two", two), ("three", three)];
    let at = nodes
        .iter()
        .position(|(name, _)| roles[*name] == "leader")
        .unwrap();
    // A (the leader) serves the write; the attacker holds B's data dir; C is the other.
    let (_, a) = nodes.remove(at);
    let (_, b) = nodes.remove(0);
    let (_, c) = nodes.remove(0);
    let a_id = u64::from_str_radix(&node_id(&a), 16).unwrap();
    let c_id = u64::from_str_radix(&node_id(&c), 16).unwrap();

    // A Deployment with two revisions: each rollback swaps them, so a write applied
    // twice shows.
    let create = a
        .http
        .post(format!(
            "{}/apis/apps/v1/namespaces/default/deployments",
            a.api
        ))
        .bearer_auth(&a.token)
        .json(&idle_deployment("target", "attack/target:v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 201, "{:?}", create.text().await);
    let bump = a
        .http
        .patch(format!(
            "{}/apis/apps/v1/namespaces/default/deployments/target",
            a.api
        ))
        .bearer_auth(&a.token)
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"attack/target:v2"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bump.status(), 200, "{:?}", bump.text().await);
    assert_eq!(
        generation_and_image(&a, "target").await,
        (2, "attack/target:v2".into())
    );

    let b_member = Member::stolen(&b);
    let rollback = serde_json::to_vec(&skiff_node::desired::Versioned::V1(
        skiff_node::desired::Command::Rollback {
            name: "target".into(),
            to_revision: None,
            at: "2030-01-01T00:00:00Z".into(),
        },
    ))
    .unwrap();
    let captured = b_member.request(a_id, "/v1/raft/write", &rollback);

    // The first time, signed by B for A over B's certificate, it is a member's write.
    let (status, body) = b_member.send(&a, &captured).await;
    assert_eq!(status, 200, "{body}");
    let rolled_back = (3, "attack/target:v1".to_string());
    assert_eq!(generation_and_image(&a, "target").await, rolled_back);

    // The same bytes again: refused by its id, and not applied a second time.
    let (status, body) = b_member.send(&a, &captured).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("a replayed request"), "{body}");
    assert_eq!(generation_and_image(&a, "target").await, rolled_back);

    // A fresh one addressed to C, sent to A (the leader, which would apply it): not
    // addressed to A.
    let to_c = b_member.request(c_id, "/v1/raft/write", &rollback);
    let (status, body) = b_member.send(&a, &to_c).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("the request is addressed to another node"),
        "{body}"
    );
    // And the captured bytes at another member, which has not seen their id.
    let (status, body) = b_member.send(&c, &captured).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("the request is addressed to another node"),
        "{body}"
    );
    assert_eq!(generation_and_image(&a, "target").await, rolled_back);
    // C follows the leader's log: it reaches the one rollback, and no other.
    wait_for("C at the rollback", Duration::from_secs(10), || async {
        (generation_and_image(&c, "target").await == rolled_back).then_some(())
    })
    .await;
}

/// The oversized body of a merge patch: one annotation of `bytes` bytes.
fn annotation_patch(bytes: usize) -> String {
    json!({"metadata": {"annotations": {"big": "x".repeat(bytes)}}}).to_string()
}

#[tokio::test]
async fn a_json_patch_bomb_and_oversized_merge_patches_through_kubectl_are_refused() {
    let Some((_, newest)) = crate::kubectl::kubectls() else {
        eprintln!("SKIPPED: no kubectl.1.NN beside a kubectl on the PATH");
        return;
    };
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, ok(&skiff(&node, &["kubeconfig"]).await)).unwrap();
    let k = crate::kubectl::Kubectl {
        bin: newest,
        config,
        home: dir.path().to_path_buf(),
    };
    let manifest = dir.path().join("target.json");
    std::fs::write(
        &manifest,
        idle_deployment("target", "attack/target:v1").to_string(),
    )
    .unwrap();
    k.ok(&["apply", "-f", manifest.to_str().unwrap()]).await;
    let get = || async {
        serde_json::from_str::<Value>(&k.ok(&["get", "deployment", "target", "-o", "json"]).await)
            .unwrap()
    };
    let before = get().await;
    let rss_before = vm_kib(node.pid(), "VmRSS:");

    // 4 KB of operations, each doubling the annotations: 2^48 times 512 bytes if applied.
    let mut bomb =
        vec![json!({"op": "add", "path": "/metadata/annotations/seed", "value": "x".repeat(512)})];
    bomb.extend((0..48).map(|i| {
        json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/k{i}")})
    }));
    let bomb = Value::Array(bomb).to_string();
    assert!(bomb.len() < 5_000, "{}", bomb.len());
    let e = k
        .fails(&[
            "patch",
            "deployment",
            "target",
            "--type",
            "json",
            "-p",
            &bomb,
        ])
        .await;
    assert!(
        e.contains("RequestEntityTooLarge")
            && e.contains("larger than 4194304 bytes (4 MiB)")
            && e.contains("(JSON patch operation "),
        "{e}"
    );

    // A strategic merge patch over the request bound: refused as it is read.
    let over = dir.path().join("over.json");
    std::fs::write(&over, annotation_patch(5 << 20)).unwrap();
    let e = k
        .fails(&[
            "patch",
            "deployment",
            "target",
            "--type",
            "strategic",
            "--patch-file",
            over.to_str().unwrap(),
        ])
        .await;
    assert!(
        e.contains("RequestEntityTooLarge")
            && e.contains("the request body is larger than 4194304 bytes (4 MiB)"),
        "{e}"
    );
    // A merge patch within the request bound whose object, merged, is over it.
    let merged = dir.path().join("merged.json");
    let patch = annotation_patch((4 << 20) - 200);
    assert!(patch.len() < 4 << 20);
    std::fs::write(&merged, patch).unwrap();
    let e = k
        .fails(&[
            "patch",
            "deployment",
            "target",
            "--type",
            "merge",
            "--patch-file",
            merged.to_str().unwrap(),
        ])
        .await;
    assert!(
        e.contains("RequestEntityTooLarge") && e.contains("larger than 4194304 bytes (4 MiB)"),
        "{e}"
    );

    let peak = peak_rss_within_bound(&node, "the patches");
    eprintln!(
        "node RSS before the patches {} MiB, peak {} MiB",
        rss_before >> 10,
        peak >> 10
    );
    // Still answering, and the Deployment is as it was.
    let after = get().await;
    for field in ["/spec", "/metadata/annotations", "/metadata/generation"] {
        assert_eq!(after.pointer(field), before.pointer(field), "{field}");
    }
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

/// How a crafted registry answers a manifest (its `/v2/` answers 200, anything else 404).
#[derive(Clone, Copy)]
enum Crafted {
    /// The manifest: 200 claiming 400 MiB, then spaces for as long as they are taken.
    LongManifest,
    /// The manifest: 200, chunked, spaces without end.
    EndlessManifest,
    /// The manifest: 401 sending the client to this registry's `/token`, which answers
    /// 200 and spaces without end.
    EndlessToken,
}

/// Most bytes a crafted registry writes to one connection.
const MAX_SENT: usize = 64 << 20;

/// What a crafted registry wrote to a connection it streamed to, and whether the client
/// hung up (rather than stalling for 30 s, or taking [`MAX_SENT`]).
type Streamed = (usize, bool);

/// A registry on loopback that answers as `how`: its address, and what it streamed to
/// each connection, sent once the stream ends.
async fn crafted_registry(
    how: Crafted,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Streamed>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(crafted_connection(conn, addr, how, tx.clone()));
        }
    });
    (addr, rx)
}

async fn crafted_connection(
    mut conn: TcpStream,
    addr: std::net::SocketAddr,
    how: Crafted,
    sent: tokio::sync::mpsc::UnboundedSender<Streamed>,
) {
    loop {
        // A request head, at most 64 KiB (the client sends GETs without bodies).
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 64 << 10 || conn.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let endless = match (how, path.as_str()) {
            (_, "/v2/") => {
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                continue;
            }
            (Crafted::LongManifest, p) if p.contains("/manifests/") => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: 419430400\r\n\r\n".to_string()
            }
            (Crafted::EndlessManifest, p) if p.contains("/manifests/") => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
            }
            (Crafted::EndlessToken, p) if p.contains("/manifests/") => {
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"http://{addr}/token\",service=\"crafted\"\r\ncontent-length: 0\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
                continue;
            }
            (Crafted::EndlessToken, p) if p.starts_with("/token") => {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
            }
            _ => {
                let _ = conn
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await;
                continue;
            }
        };
        let chunked = endless.contains("chunked");
        let spaces = vec![b' '; 64 << 10];
        let chunk = if chunked {
            let mut c = format!("{:x}\r\n", spaces.len()).into_bytes();
            c.extend_from_slice(&spaces);
            c.extend_from_slice(b"\r\n");
            c
        } else {
            spaces
        };
        let (mut written, mut hung_up) = (0, conn.write_all(endless.as_bytes()).await.is_err());
        // A client that stops reading without hanging up is given 30 s per write.
        while !hung_up && written < MAX_SENT {
            match tokio::time::timeout(Duration::from_secs(30), conn.write_all(&chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                Ok(Err(_)) => hung_up = true,
                Err(_) => break,
            }
        }
        let _ = sent.send((written, hung_up));
        return;
    }
}

/// `POST /images/create` (`docker pull`) of `image:tag` on `node`: the stream's lines.
async fn docker_pull(node: &Node, image: &str, tag: &str) -> String {
    let pull = async {
        node.http
            .post(format!(
                "{}/v1.45/images/create?fromImage={image}&tag={tag}",
                node.api
            ))
            .bearer_auth(&node.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    tokio::time::timeout(Duration::from_secs(60), pull)
        .await
        .expect("a pull from a crafted registry ends within 60 s")
}

#[tokio::test]
async fn a_registry_sending_an_endless_manifest_or_token_is_cut_off_and_the_node_serves() {
    let node = Node::start().await;
    let images_before = node.api_get("/v1/images").await.text().await.unwrap();
    for how in [
        Crafted::LongManifest,
        Crafted::EndlessManifest,
        Crafted::EndlessToken,
    ] {
        let (addr, mut sent) = crafted_registry(how).await;
        let answer = docker_pull(&node, &format!("{addr}/x"), "1").await;
        let bound = match how {
            Crafted::EndlessToken => {
                format!("the token from http://{addr}/token is larger than 64 KiB: refusing it")
            }
            _ => format!("manifest 1 of {addr}/x is larger than 4 MiB: refusing it"),
        };
        let error = answer
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no error in {answer}"));
        assert!(error.contains(&bound), "{error}");
        // The registry sees the node hang up: what it wrote is what the node read (at
        // most the bound) and what the sockets between them held (a send buffer of up to
        // 4 MiB, a receive buffer the kernel grows while the node reads), not its 64 MiB.
        let (wrote, hung_up) = tokio::time::timeout(Duration::from_secs(60), sent.recv())
            .await
            .expect("the crafted registry's stream ends")
            .unwrap();
        eprintln!("the crafted registry wrote {} KiB", wrote >> 10);
        assert!(hung_up, "the node did not hang up after {wrote} bytes");
        assert!(wrote < 24 << 20, "the registry wrote {wrote} bytes");
        let peak = peak_rss_within_bound(&node, "a crafted pull");
        eprintln!("node peak RSS {} MiB", peak >> 10);
    }
    // The CLI's own pull (in its process) is refused the same way.
    let (addr, _sent) = crafted_registry(Crafted::EndlessManifest).await;
    let e = err(&skiff(&node, &["pull", &format!("{addr}/x:1")]).await);
    assert!(
        e.contains(&format!(
            "manifest 1 of {addr}/x is larger than 4 MiB: refusing it"
        )),
        "{e}"
    );
    // Still serving, and nothing was added.
    let images_after = node.api_get("/v1/images").await;
    assert_eq!(images_after.status(), 200);
    assert_eq!(images_after.text().await.unwrap(), images_before);
}
