//! Trust boundaries, tried as an attacker would: a packet capture of a cluster joining
//! and working (no secret, token or key in clear), joins to the wrong cluster or under a
//! live node's name, a flood of join attempts, 2,000 silent connections from one client.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

use crate::harness::{Node, SKIFF, hello_wasm, skiff_env, wait_for};

/// A client of `node`'s API over TLS, trusting only the cluster CA in its data dir.
pub(crate) fn https(node: &Node) -> reqwest::Client {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(node.dir.join("tls/ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

/// `node`'s API as an https URL.
pub(crate) fn https_api(node: &Node) -> String {
    node.api.replace("http://", "https://")
}

/// The `skiff` CLI against `node` over TLS (the token never in clear).
async fn skiff_tls(node: &Node, args: &[&str]) -> std::process::Output {
    let ca = node.dir.join("tls/ca.crt");
    skiff_env(
        node,
        args,
        &[
            ("SKIFF_API", &https_api(node)),
            ("SKIFF_CA", ca.to_str().unwrap()),
        ],
    )
    .await
}

/// Ready nodes `node` lists, asked over TLS.
async fn ready_nodes(node: &Node, client: &reqwest::Client) -> usize {
    let Ok(resp) = client
        .get(format!("{}/api/v1/nodes", https_api(node)))
        .bearer_auth(&node.token)
        .send()
        .await
    else {
        return 0;
    };
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    v["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|n| {
                n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count()
    })
}

/// Deploys the hello app through `node` over TLS, a write its leader takes (asked again
/// while the cluster answers 503).
async fn upload_hello(node: &Node) {
    let upload = https(node);
    wait_for(
        "an upload through the node",
        Duration::from_secs(30),
        || async {
            let resp = upload
                .put(format!("{}/v1/apps/hello?replicas=1", https_api(node)))
                .bearer_auth(&node.token)
                .body(hello_wasm())
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                503 => None,
                s if (200..300).contains(&s) => Some(()),
                s => panic!("{s}: {:?}", resp.text().await),
            }
        },
    )
    .await;
}

/// A packet capture of the loopback interface, from start until [`Capture::bytes`].
struct Capture {
    child: tokio::process::Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    /// `None` (with the reason printed) where tcpdump cannot run.
    async fn start() -> Option<Capture> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut child = match tokio::process::Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-n", "-s", "0", "-w"])
            .arg(file.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!("skipped: tcpdump cannot run here ({e}); ./test installs it");
                return None;
            }
        };
        // tcpdump says so once it is capturing.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on") {
                    return true;
                }
            }
            false
        })
        .await;
        if listening != Ok(true) {
            println!("skipped: tcpdump did not start capturing on lo");
            return None;
        }
        Some(Capture { child, file })
    }

    /// What was captured to or from `nodes`' API and ingress ports (other tests share
    /// loopback). tcpdump flushes each packet (-U).
    async fn bytes(mut self, nodes: &[&Node]) -> Vec<u8> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let ports: Vec<String> = nodes
            .iter()
            .flat_map(|n| {
                let api = n.api.rsplit(':').next().unwrap().to_string();
                [api, n.ingress.port().to_string()]
            })
            .map(|p| format!("tcp port {p}"))
            .collect();
        let filtered = tempfile::NamedTempFile::new().unwrap();
        let out = tokio::process::Command::new("tcpdump")
            .arg("-r")
            .arg(self.file.path())
            .arg("-w")
            .arg(filtered.path())
            .arg(ports.join(" or "))
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read(filtered.path()).unwrap()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_cluster_joins_and_works_with_no_secret_token_or_key_in_clear_on_the_wire() {
    let Some(capture) = Capture::start().await else {
        return;
    };
    let first = Node::start_with(&["--node-name", "one"]).await;
    let client = https(&first);

    // The command `skiff cluster join-token` prints is the one the others run.
    let out = skiff_tls(&first, &["cluster", "join-token"]).await;
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stderr).unwrap();
    let command = printed
        .lines()
        .find_map(|l| {
            l.split_once("join another node: ")
                .map(|(_, rest)| rest.to_string())
        })
        .unwrap_or_else(|| panic!("no command in {printed:?}"));
    let words: Vec<&str> = command.split_whitespace().collect();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("SK1"), "{token}");
    // The token goes in the environment, where other users cannot read it (`ps`).
    assert_eq!(words[0], format!("SKIFF_JOIN_TOKEN={token}"));
    assert_eq!(words[1..4], ["skiff", "up", "--join"]);
    let join = words[4].to_string();
    let (dir2, dir3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let joined = |dir: &Path, name: &str| {
        let join = join.clone();
        let token = token.clone();
        let dir = dir.to_path_buf();
        let name = name.to_string();
        async move {
            Node::start_customised(&dir, &["--join", &join, "--node-name", &name], |c| {
                c.env("SKIFF_JOIN_TOKEN", &token);
            })
            .await
        }
    };
    let second = joined(dir2.path(), "two").await;
    let third = joined(dir3.path(), "three").await;
    for n in [&first, &second, &third] {
        let client = https(n);
        wait_for("3 ready nodes", Duration::from_secs(30), || async {
            (ready_nodes(n, &client).await == 3).then_some(())
        })
        .await;
    }

    // Work that crosses between nodes: an upload through a follower (forwarded to the
    // leader, its image copied to a peer), pods listed from every node, requests
    // forwarded between ingresses.
    upload_hello(&third).await;
    for n in [&first, &second, &third] {
        wait_for("hello served", Duration::from_secs(60), || async {
            let (status, body) = n.get("hello", "/").await;
            (status == 200 && !body.is_empty()).then_some(())
        })
        .await;
        let pods: Value = https(n)
            .get(format!("{}/api/v1/namespaces/default/pods", https_api(n)))
            .bearer_auth(&n.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(pods["items"].as_array().is_some_and(|p| !p.is_empty()));
    }

    // One kubeconfig (the first node's) works against every node: one cluster CA.
    let config = skiff_tls(&first, &["kubeconfig"]).await;
    assert!(config.status.success(), "{config:?}");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, &config.stdout).unwrap();
    for n in [&first, &second, &third] {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--server", &https_api(n), "get", "nodes"])
            .env("HOME", dir.path())
            .output()
            .await;
        match out {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.contains("three"),
                    "kubectl against {}: {text}{}",
                    n.api,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(e) => {
                println!("kubectl not run ({e}): the kubeconfig is checked with curl's peers above")
            }
        }
    }
    let _ = client;

    // The local CLI over the node's unix socket: no token anywhere, and only the data
    // dir's owner may open it.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(second.dir.join("api.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "api.sock is {mode:o}");
    let out = tokio::process::Command::new(SKIFF)
        .args(["apps"])
        .env("SKIFF_DATA_DIR", &second.dir)
        .env_remove("SKIFF_API")
        .env_remove("SKIFF_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello"),
        "{out:?}"
    );

    let wire = capture.bytes(&[&first, &second, &third]).await;
    // The capture saw the cluster at work: the app's answers cross the ingresses.
    assert!(
        contains(&wire, b"x-skiff-forwarded"),
        "the capture holds no forwarded request: is it capturing loopback?"
    );
    let secret = token.split_once("::").unwrap().1;
    let ca_key = std::fs::read_to_string(first.dir.join("tls/ca.key")).unwrap();
    let key_line = ca_key.lines().nth(1).unwrap();
    for (what, needle) in [
        ("the join secret", secret.as_bytes()),
        ("the admin token", first.token.as_bytes()),
        ("the CA key", key_line.as_bytes()),
        ("a bearer header", b"Bearer ".as_slice()),
        ("a private key", b"PRIVATE KEY".as_slice()),
    ] {
        assert!(!contains(&wire, needle), "{what} crossed loopback in clear");
    }
}

/// Runs `skiff up` with `args` in a fresh data dir, which must fail: its stderr.
async fn up_fails(dir: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(SKIFF)
            .args(crate::harness::UP)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a refused join ends within 30 s")
    .unwrap();
    assert!(!out.status.success(), "skiff up {args:?} started");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn joins_to_another_cluster_under_a_live_name_or_in_a_flood_are_refused() {
    let one = Node::start_with(&["--node-name", "one"]).await;
    let other = Node::start().await;
    let token = std::fs::read_to_string(one.dir.join("join-token")).unwrap();
    let token = token.trim();
    let hash = &token[3..67];

    // A member of another cluster shows another CA: refused before anything is sent.
    let dir = tempfile::tempdir().unwrap();
    let addr = other.api.trim_start_matches("http://");
    let e = up_fails(dir.path(), &["--join", addr, "--join-token", token]).await;
    assert!(
        e.contains("not the one the join token names") && e.contains(hash),
        "{e}"
    );
    assert!(
        !dir.path().join("cluster.json").exists(),
        "nothing is written on a refusal"
    );

    // A live node's name.
    let addr = one.api.trim_start_matches("http://");
    let e = up_fails(
        dir.path(),
        &["--join", addr, "--join-token", token, "--node-name", "one"],
    )
    .await;
    assert!(e.contains("node name \"one\" is held by live node"), "{e}");

    // A token without the CA hash (the old form) is refused naming what to give.
    let secret = token.split_once("::").unwrap().1;
    let e = up_fails(dir.path(), &["--join", addr, "--join-token", secret]).await;
    assert!(e.contains("no CA hash"), "{e}");

    // Not over plain HTTP, and not more than a few at a time from one address.
    let plain = reqwest::Client::new()
        .post(format!("{}/v1/cluster/join/challenge", one.api))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    let client = https(&one);
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = client
            .post(format!("{}/v1/cluster/join", https_api(&one)))
            .json(&serde_json::json!({
                "node_id": "00000000000000aa\nINFO forged",
                "name": "x",
                "nonce": "n",
                "proof": "p",
            }))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&400), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 400).count() <= 10,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn two_thousand_silent_connections_from_one_client_leave_others_served() {
    // This process holds the connections: room for them.
    let limit = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let node = Node::start_with(&["--header-timeout", "3s"]).await;
    let config = skiff_tls(&node, &["kubeconfig"]).await;
    assert!(config.status.success(), "{config:?}");
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("config");
    std::fs::write(&kubeconfig, &config.stdout).unwrap();
    let api: std::net::SocketAddr = node.api.trim_start_matches("http://").parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..2000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
        if let Ok(s) = socket.connect(api).await {
            silent.push(s);
        }
    }
    assert!(silent.len() >= 1000, "only {} connected", silent.len());
    // Another client is served at once, over TLS as kubectl is.
    let client = https(&node);
    let served = |what: &'static str| {
        let client = client.clone();
        let url = format!("{}/api/v1/nodes", https_api(&node));
        let token = node.token.clone();
        async move {
            let nodes = client
                .get(url)
                .bearer_auth(token)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap_or_else(|e| panic!("another client is not served {what}: {e}"));
            assert_eq!(nodes.status(), 200, "{what}");
        }
    };
    served("while one address holds 2,000 connections").await;
    // And the real kubectl, with the node's kubeconfig.
    let kubectl = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes"])
        .env("HOME", home.path())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), kubectl).await {
        Ok(Ok(out)) => assert!(
            out.status.success() && !out.stdout.is_empty(),
            "kubectl get nodes while one address holds 2,000 connections: {out:?}"
        ),
        Ok(Err(e)) => println!("kubectl not run ({e}): the TLS client above stands for it"),
        Err(_) => panic!("kubectl get nodes did not answer within 20 s during the flood"),
    }
    // Ten addresses fill the listener's cap (1,024) between them: a newcomer takes the
    // place of one of theirs.
    for i in 10..20 {
        for _ in 0..128 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(format!("127.0.0.{i}:0").parse().unwrap())
                .unwrap();
            if let Ok(s) = socket.connect(api).await {
                silent.push(s);
            }
        }
    }
    served("while ten addresses fill the listener").await;
    // The silent ones are closed: their first byte was due within the header timeout.
    wait_for(
        "every silent connection closed",
        Duration::from_secs(30),
        || {
            let silent = &silent;
            async move {
                let mut open = 0;
                for s in silent {
                    let mut byte = [0u8; 1];
                    match s.try_read(&mut byte) {
                        Ok(0) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                        _ => {}
                    }
                }
                (open == 0).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_clients_own_forwarded_mark_steers_nothing() {
    let node = Node::start().await;
    node.deploy_ok("web", hello_wasm(), "").await;
    // A forged mark naming a route with no pod here: a node would answer it "unserved"
    // (telling the forwarding node to try elsewhere) if it took the mark at its word.
    for forged in ["web", "nosuch", "nosuch.1.00"] {
        let resp = node
            .app(reqwest::Method::GET, "web", "/")
            .header("x-skiff-forwarded", forged)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{forged}");
        assert!(resp.headers().get("x-skiff-unserved").is_none());
        let resp = node
            .app(reqwest::Method::GET, "missing", "/")
            .header("x-skiff-forwarded", forged)
            .send()
            .await
            .unwrap();
        assert!(resp.headers().get("x-skiff-unserved").is_none(), "{forged}");
    }
}

/// A node that joined under the release before the cluster CA starts as it is, with no
/// flags: gossip (sealed with the secret it has) finds a member, the member proves the
/// secret back over the CA its TLS showed, and the node takes that CA.
#[tokio::test]
async fn a_node_that_joined_before_the_cluster_ca_starts_as_it_is() {
    let one = Node::start_with(&["--node-name", "one"]).await;
    let token = std::fs::read_to_string(one.dir.join("join-token")).unwrap();
    let token = token.trim().to_string();
    let addr = one.api.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let two = Node::start_in(
        dir.path(),
        &[
            "--join",
            &addr,
            "--join-token",
            &token,
            "--node-name",
            "two",
        ],
    )
    .await;
    let client = https(&one);
    wait_for("2 ready nodes", Duration::from_secs(30), || async {
        (ready_nodes(&one, &client).await == 2).then_some(())
    })
    .await;
    two.stop().await;

    // The data dir as the last release left a joined node's: no `cluster_ca` mark, the
    // secret alone in join-token, the admin token itself in token, a CA of its own.
    let path = dir.path().join("cluster.json");
    let mut identity: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    identity.as_object_mut().unwrap().remove("cluster_ca");
    std::fs::write(&path, identity.to_string()).unwrap();
    let secret = token.split_once("::").unwrap().1;
    std::fs::write(dir.path().join("join-token"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{}\n", one.token)).unwrap();
    std::fs::remove_file(dir.path().join("token.sha256")).unwrap();
    std::fs::remove_dir_all(dir.path().join("tls")).unwrap();

    let two = Node::start_in(dir.path(), &[]).await;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(
        read(&dir.path().join("tls/ca.crt")),
        read(&one.dir.join("tls/ca.crt")),
        "it took the cluster CA"
    );
    assert_eq!(read(&dir.path().join("join-token")).trim(), token);
    assert!(dir.path().join("token.sha256").exists());
    // Both see both, over TLS with the one CA; a write through it reaches the leader
    // over mutual TLS (its new certificate is a member's).
    for n in [&one, &two] {
        let client = https(n);
        wait_for("2 ready nodes", Duration::from_secs(30), || async {
            (ready_nodes(n, &client).await == 2).then_some(())
        })
        .await;
    }
    upload_hello(&two).await;
}
