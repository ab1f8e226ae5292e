//! A cluster of nodes on loopback: joining with the join token, gossip membership,
//! failure detection, rejoining, and gossip that is not the cluster's.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Load, Node, err, hello_wasm, ok, skiff, wait_for};

/// `get nodes -o json` as seen from `node`: (name, ready) pairs.
async fn nodes(node: &Node) -> Vec<(String, bool)> {
    let out = skiff(node, &["get", "nodes", "-o", "json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|n| {
                    let ready = n["status"]["conditions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    (n["metadata"]["name"].as_str().unwrap().to_string(), ready)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn wait_ready(
    node: &Node,
    ready: usize,
    total: usize,
    what: &str,
) -> Vec<(String, bool)> {
    wait_for(what, Duration::from_secs(30), || async {
        let n = nodes(node).await;
        (n.len() == total && n.iter().filter(|(_, r)| *r).count() == ready).then_some(n)
    })
    .await
}

pub(crate) fn join_args(first: &Node) -> Vec<String> {
    let token = std::fs::read_to_string(first.dir.join("join-token")).unwrap();
    vec![
        "--join".into(),
        first.api.trim_start_matches("http://").into(),
        "--join-token".into(),
        token.trim().into(),
    ]
}

/// A write through a node that has just joined is taken: it waits for the leader to add
/// it to the membership instead of failing for want of voters it cannot see yet.
#[tokio::test]
async fn a_write_through_a_node_that_has_just_joined_is_taken() {
    let first = Node::start().await;
    let join = join_args(&first);
    let join: Vec<&str> = join.iter().map(String::as_str).collect();
    let second = Node::start_with(&join).await;
    // At once: not waiting for it to be listed ready, nor to be added.
    let resp = second.deploy("early", hello_wasm(), "replicas=1").await;
    let status = resp.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        resp.text().await.unwrap()
    );
    wait_for(
        "the app served by the first node too",
        Duration::from_secs(30),
        || async { (first.get("early", "/").await.0 == 200).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn nodes_join_with_the_token_detect_a_dead_one_and_take_it_back() {
    let first = Node::start_with(&["--node-name", "one", "--label", "zone=a"]).await;
    let join = join_args(&first);
    let mut extra: Vec<&str> = join.iter().map(String::as_str).collect();
    extra.extend(["--node-name", "two", "--label", "zone=b"]);
    let second = Node::start_with(&extra).await;
    let dir3 = tempfile::tempdir().unwrap();
    let mut extra: Vec<&str> = join.iter().map(String::as_str).collect();
    extra.extend(["--node-name", "three"]);
    let third = Node::start_in(dir3.path(), &extra).await;
    // The token never crossed the network: a joined node holds only its hash.
    for n in [&second, &third] {
        assert!(!n.dir.join("token").exists());
        let hash = std::fs::read_to_string(n.dir.join("token.sha256")).unwrap();
        use sha2::Digest as _;
        assert_eq!(
            hash.trim(),
            hex::encode(sha2::Sha256::digest(first.token.as_bytes()))
        );
    }

    // Everyone sees everyone; one admin token works on every node.
    for n in [&first, &second, &third] {
        let seen = wait_ready(n, 3, 3, "three ready nodes").await;
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["one", "three", "two"]);
        assert_eq!(
            n.token, first.token,
            "the first node's admin token works on every node"
        );
        assert_eq!(
            n.api_get("/v1/apps").await.status(),
            200,
            "the first node's token is accepted by {}",
            n.api
        );
    }
    let table = ok(&skiff(&second, &["get", "nodes", "-l", "zone=b"]).await);
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["two"], "{table}");

    // Gossip that is not the cluster's is dropped and counted; nothing else changes.
    // The second node keeps its live peers' gossip addresses (the first's and the
    // third's) in cluster.json: forge datagrams to both.
    let seeds: Vec<String> = {
        let cluster: Value =
            serde_json::from_str(&std::fs::read_to_string(first.dir.join("cluster.json")).unwrap())
                .unwrap();
        assert!(cluster["node_id"].is_string());
        wait_for(
            "the second node to keep both peers",
            Duration::from_secs(10),
            || async {
                let c2: Value = serde_json::from_str(
                    &std::fs::read_to_string(second.dir.join("cluster.json")).unwrap(),
                )
                .unwrap();
                let seeds: Vec<String> = c2["seeds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect();
                (seeds.len() == 2).then_some(seeds)
            },
        )
        .await
    };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for gossip in &seeds {
        for payload in [&b"junk"[..], &[7u8; 200][..], &[0u8; 60_000][..]] {
            udp.send_to(payload, gossip).unwrap();
        }
    }
    let dropped = |m: &str| {
        crate::harness::metric(m, "skiff_gossip_dropped_datagrams{reason=\"forged\"}")
            + crate::harness::metric(m, "skiff_gossip_dropped_datagrams{reason=\"truncated\"}")
    };
    let m = wait_for(
        "the forged datagrams to be counted",
        Duration::from_secs(10),
        || async {
            let (m1, m3) = (first.metrics().await, third.metrics().await);
            (dropped(&m1) + dropped(&m3) >= 6.0).then_some(m1)
        },
    )
    .await;
    assert_eq!(
        crate::harness::metric(&m, "skiff_cluster_live_members"),
        3.0,
        "{m}"
    );

    // kill -9: the others see it go, then come back on its own, without flags.
    third.kill9();
    let seen = wait_ready(&first, 2, 3, "the killed node to be marked not ready").await;
    assert!(seen.contains(&("three".to_string(), false)), "{seen:?}");
    let third = Node::start_in(dir3.path(), &[]).await;
    wait_ready(&first, 3, 3, "the restarted node to be ready again").await;
    wait_ready(&third, 3, 3, "the restarted node to see the others").await;

    // A node with the wrong join token is refused, saying so.
    let dir4 = tempfile::tempdir().unwrap();
    // The CA's hash right, the secret wrong.
    let wrong = format!("{}::wrong", join[3].split_once("::").unwrap().0);
    let o = tokio::process::Command::new(crate::harness::SKIFF)
        .args(crate::harness::UP)
        .args(["--join", &join[1], "--join-token", &wrong])
        .arg("--data-dir")
        .arg(dir4.path())
        .output()
        .await
        .unwrap();
    let e = err(&o);
    assert!(e.contains("join token is wrong"), "{e}");
    // The join endpoint answers without the admin token: its body is bounded.
    let r = crate::trust::https(&first)
        .post(format!(
            "{}/v1/cluster/join",
            crate::trust::https_api(&first)
        ))
        .header("content-type", "application/json")
        .body(vec![b' '; 64 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        !dir4.path().join("cluster.json").exists(),
        "nothing kept of a refused join"
    );
    assert_eq!(nodes(&first).await.len(), 3);

    // The peer API takes only requests signed with the cluster's key: none, a forged
    // signature and a stale one are refused before the body is read as Raft's.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    for signature in [
        None,
        Some(format!("{now_ms}.{}", "00".repeat(32))),
        Some(format!("{}.{}", now_ms - 3_600_000, "ab".repeat(32))),
        Some("garbage".to_string()),
    ] {
        for path in [
            "/v1/raft/vote",
            "/v1/raft/write",
            "/v1/peer/pods",
            "/v1/peer/pods/changes",
        ] {
            let mut r = first
                .http
                .post(format!("{}{path}", first.api))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(s) = &signature {
                r = r.header("x-skiff-peer", s);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {signature:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "not_a_peer", "{v}");
        }
    }
    wait_ready(&first, 3, 3, "the cluster unaffected").await;
}

/// Three nodes on loopback named one, two and three, the others joined to the first,
/// each on its data dir in `dirs` (which outlive the processes, for restarts).
pub(crate) async fn three_nodes(dirs: [&std::path::Path; 3]) -> (Node, Node, Node) {
    let first = Node::start_in(dirs[0], &["--node-name", "one"]).await;
    let join = join_args(&first);
    let mut extra: Vec<&str> = join.iter().map(String::as_str).collect();
    extra.extend(["--node-name", "two"]);
    let second = Node::start_in(dirs[1], &extra).await;
    let mut extra: Vec<&str> = join.iter().map(String::as_str).collect();
    extra.extend(["--node-name", "three"]);
    let third = Node::start_in(dirs[2], &extra).await;
    // Formed: every node sees three ready nodes, and Raft has a leader and 3 voters.
    for n in [&first, &second, &third] {
        wait_ready(n, 3, 3, "three ready nodes").await;
    }
    wait_for("three Raft voters", Duration::from_secs(30), || async {
        let r = roles(&first).await;
        (r.values().filter(|r| *r == "leader").count() == 1
            && r.values().filter(|r| *r == "voter").count() == 2)
            .then_some(())
    })
    .await;
    (first, second, third)
}

/// Each node's Raft role, by name, as `get nodes -o json` shows it (kubectl's
/// `node-role.kubernetes.io/<role>` labels).
pub(crate) async fn roles(node: &Node) -> std::collections::BTreeMap<String, String> {
    let out = skiff(node, &["get", "nodes", "-o", "json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut roles = std::collections::BTreeMap::new();
    for n in v["items"].as_array().into_iter().flatten() {
        let role = n["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .find_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
            .unwrap_or("")
            .to_string();
        roles.insert(n["metadata"]["name"].as_str().unwrap_or("").into(), role);
    }
    roles
}

/// The pods of `selector` as `node` lists them (every node's): (name, node, ready).
async fn pods(node: &Node, selector: &str) -> Vec<(String, String, bool)> {
    let v: Value = node
        .api_get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector={selector}"
        ))
        .await
        .json()
        .await
        .unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["status"]["containerStatuses"][0]["ready"] == true,
            )
        })
        .collect()
}

/// The resourceVersion of a pods list from `node` (given a version to list from).
async fn pods_version(node: &Node, since: Option<u64>) -> u64 {
    let path = match since {
        Some(v) => format!("/api/v1/namespaces/default/pods?resourceVersion={v}"),
        None => "/api/v1/namespaces/default/pods".to_string(),
    };
    let v: Value = node.api_get(&path).await.json().await.unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Watches open at once in the spread test.
const WATCHERS: usize = 40;

/// The pod requests `node` answered to its peers so far.
async fn peer_pod_requests(node: &Node) -> u64 {
    node.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("skiff_peer_pod_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the peer pod requests counter")
}

/// Reads a pods watch until it has seen pod `gone` deleted (or terminating) and a pod
/// not in `before` ready (in either order: the new pod may be on a quicker node); panics
/// after 30 s.
async fn watch_replacement(
    mut response: reqwest::Response,
    gone: String,
    before: std::collections::BTreeSet<String>,
) {
    assert_eq!(response.status(), 200);
    let (mut went, mut came) = (false, false);
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(went && came) {
        let Ok(chunk) = tokio::time::timeout_at(deadline, response.chunk()).await else {
            panic!(
                "in 30 s the watch did not see {gone} go (seen: {went}) and another come ready (seen: {came}): {seen:#?}"
            );
        };
        let chunk = chunk.unwrap().expect("the watch stays open");
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let e: Value = serde_json::from_slice(&line).unwrap();
            let pod = &e["object"];
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            if name == gone
                && (e["type"] == "DELETED" || !pod["metadata"]["deletionTimestamp"].is_null())
            {
                went = true;
            }
            seen.push(format!(
                "{} {name} ready={} deleting={}",
                e["type"],
                pod["status"]["containerStatuses"][0]["ready"],
                !pod["metadata"]["deletionTimestamp"].is_null()
            ));
            if !before.contains(name) && pod["status"]["containerStatuses"][0]["ready"] == true {
                came = true;
            }
        }
    }
}

/// Waits until `selector` has `n` ready pods on `nodes` distinct nodes.
async fn wait_spread(
    node: &Node,
    selector: &str,
    n: usize,
    nodes: usize,
) -> Vec<(String, String, bool)> {
    wait_for(
        &format!("{n} ready pods of {selector} on {nodes} nodes"),
        Duration::from_secs(30),
        || async {
            let p = pods(node, selector).await;
            let on: std::collections::BTreeSet<&str> =
                p.iter().map(|(_, n, _)| n.as_str()).collect();
            (p.len() == n && p.iter().all(|(_, _, r)| *r) && on.len() == nodes).then_some(p.clone())
        },
    )
    .await
}

/// Waits (up to `limit`) until the nginx example's 3 pods are ready on 3 nodes, as
/// `node` lists them; returns the most pods listed at once on the way.
async fn spread_again(node: &Node, limit: Duration) -> Vec<(String, String, bool)> {
    let most = std::sync::Mutex::new(Vec::new());
    wait_for(
        "the pods to spread over three nodes again",
        limit,
        || async {
            let p = pods(node, "app=my-web-app").await;
            {
                let mut most = most.lock().unwrap();
                if p.len() > most.len() {
                    *most = p.clone();
                }
            }
            let on: std::collections::BTreeSet<&str> =
                p.iter().map(|(_, n, _)| n.as_str()).collect();
            (p.len() == 3 && p.iter().all(|(_, _, r)| *r) && on.len() == 3).then_some(())
        },
    )
    .await;
    most.into_inner().unwrap()
}

/// Which pods answer `count` requests for `app` through `node`'s ingress; `None` if any
/// request is not answered 200 (a node that joined may not have the route yet).
async fn served_by(
    node: &Node,
    app: &str,
    count: usize,
) -> Option<std::collections::BTreeSet<String>> {
    let mut by = std::collections::BTreeSet::new();
    for _ in 0..count {
        let r = node.app(reqwest::Method::GET, app, "/").send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        by.insert(
            r.headers()
                .get("x-skiff-container")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
        );
    }
    Some(by)
}

#[tokio::test]
async fn three_nodes_spread_a_deployment_route_across_nodes_and_move_pods_off_a_dead_one() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let (first, second, third) =
        three_nodes([dirs[0].path(), dirs[1].path(), dirs[2].path()]).await;
    // The image is built on one node only: the others fetch it when their pods need it.
    let dir = tempfile::tempdir().unwrap();
    crate::harness::build_nginx_site(&first, dir.path()).await;
    // Acknowledged once a second node holds it too.
    let mut holders = 0;
    for n in [&second, &third] {
        if ok(&skiff(n, &["images"]).await).contains("my-web-app") {
            holders += 1;
        }
    }
    assert_eq!(holders, 1, "the build is on exactly one other node");
    // The nginx example's two files, applied through a node that does not lead.
    let leader = roles(&first)
        .await
        .into_iter()
        .find(|(_, r)| r == "leader")
        .unwrap()
        .0;
    let follower = [&first, &second, &third]
        .into_iter()
        .zip(["one", "two", "three"])
        .find(|(_, name)| *name != leader)
        .unwrap()
        .0;
    let out = apply_nginx_files(follower).await;
    assert_eq!(
        out,
        "deployment.apps/my-web-app created\nservice/my-web-app created\n"
    );
    // The follower answered once the write was applied there: it reads it back at once.
    let got = ok(&skiff(follower, &["get", "deployment", "my-web-app", "-o", "name"]).await);
    assert_eq!(got.trim(), "deployment.apps/my-web-app");

    // One pod per node, and every node's ingress is served by all three.
    let placed = wait_spread(&first, "app=my-web-app", 3, 3).await;
    let all: std::collections::BTreeSet<String> =
        placed.iter().map(|(p, _, _)| p.clone()).collect();
    for n in [&first, &second, &third] {
        assert_eq!(
            pods(n, "app=my-web-app").await.len(),
            3,
            "every node lists every pod"
        );
        // Routes follow gossip, a moment behind the pods.
        wait_for(
            "every pod to serve through this node",
            Duration::from_secs(10),
            || async {
                (served_by(n, "my-web-app", 30).await.as_ref() == Some(&all)).then_some(())
            },
        )
        .await;
    }
    // A pod of another node is deleted through any node; its Deployment makes another.
    let elsewhere = placed
        .iter()
        .find(|(_, n, _)| n == "three")
        .unwrap()
        .0
        .clone();
    // Watchers of the pods on the first node see it go and its replacement come, pushed
    // from the node's store: the other nodes are asked for their pods once per change,
    // not once per watcher (the old way asked twice a second for every watch).
    let before = peer_pod_requests(&second).await + peer_pod_requests(&third).await;
    // Open (their answers' heads arrived: subscribed) before the pod is deleted.
    let watches = futures_util::future::join_all((0..WATCHERS).map(|_| {
        first.api_get("/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dmy-web-app")
    }))
    .await;
    let watchers: Vec<_> = watches
        .into_iter()
        .map(|w| tokio::spawn(watch_replacement(w, elsewhere.clone(), all.clone())))
        .collect();
    assert_eq!(
        first
            .api_delete(&format!("/api/v1/namespaces/default/pods/{elsewhere}"))
            .await,
        200
    );
    let placed = wait_for(
        "the deleted pod replaced",
        Duration::from_secs(30),
        || async {
            let p = wait_spread(&first, "app=my-web-app", 3, 3).await;
            (!p.iter().any(|(name, _, _)| *name == elsewhere)).then_some(p)
        },
    )
    .await;
    let status = ok(&skiff(&second, &["get", "deployment", "my-web-app"]).await);
    assert!(status.contains("3/3"), "{status}");
    for w in watchers {
        w.await.unwrap();
    }
    let asked = peer_pod_requests(&second).await + peer_pod_requests(&third).await - before;
    assert!(
        asked < WATCHERS as u64,
        "{WATCHERS} watchers made the other nodes answer {asked} requests for their pods"
    );
    // A version one node served moves another's forward: what the second node lists
    // next is newer, and a watch there from the first's version is not "too old".
    let on_first = pods_version(&first, None).await;
    assert!(pods_version(&second, Some(on_first)).await >= on_first);
    let from_first = second
        .api_get(&format!(
            "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1&resourceVersion={on_first}"
        ))
        .await
        .text()
        .await
        .unwrap();
    assert!(!from_first.contains("\"ERROR\""), "{from_first}");

    // kill -9 the third node under load through the first: its pod runs elsewhere, and
    // once the node is seen dead no request fails.
    let load = Load::start(&first, "my-web-app", 4);
    load.wait_count(200).await;
    let third_pod = placed
        .iter()
        .find(|(_, n, _)| n == "three")
        .unwrap()
        .0
        .clone();
    third.kill9();
    let killed = Instant::now();
    wait_ready(&first, 2, 3, "the killed node to be marked not ready").await;
    let detected = Instant::now();
    let moved = wait_spread(&first, "app=my-web-app", 3, 2).await;
    let moved_in = killed.elapsed();
    assert!(!moved.iter().any(|(p, _, _)| *p == third_pod));
    let before = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_count(before + 500).await;
    let failed_at = load.failed_at.lock().unwrap().clone();
    let (good, bad, errors, _) = load.finish().await;
    let after_detection = failed_at.iter().filter(|t| **t >= detected).count();
    assert_eq!(
        after_detection,
        0,
        "{after_detection} requests failed after the dead node was detected ({good} fine, {bad} bad, {errors} errors); detected {:?} after the kill, pods moved after {moved_in:?}",
        detected - killed
    );

    // It comes back on its own: pods spread again, and there are never more than
    // replicas + maxSurge (3 + 1) at once on the way.
    let third = Node::start_in(dirs[2].path(), &[]).await;
    let most = spread_again(&first, Duration::from_secs(30)).await;
    assert!(
        most.len() <= 4,
        "{} pods at once while the node rejoined: {most:?}",
        most.len()
    );
    wait_for(
        "the rejoined node to route to all three pods",
        Duration::from_secs(10),
        || async {
            served_by(&third, "my-web-app", 30)
                .await
                .filter(|by| by.len() == 3)
        },
    )
    .await;

    // Drain the third node under load: its pod is ready elsewhere before it stops, and
    // no request fails.
    let load = Load::start(&first, "my-web-app", 4);
    load.wait_count(100).await;
    let out = ok(&skiff(&second, &["drain", "three", "--timeout", "60s"]).await);
    assert!(out.contains("node/three drained"), "{out}");
    let drained = wait_spread(&first, "app=my-web-app", 3, 2).await;
    assert!(drained.iter().all(|(_, n, _)| n != "three"), "{drained:?}");
    let before = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_count(before + 200).await;
    let (good, bad, errors, _) = load.finish().await;
    assert_eq!(
        (bad, errors),
        (0, 0),
        "requests failed while draining ({good} fine)"
    );
    let table = ok(&skiff(&first, &["get", "nodes"]).await);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("three") && l.contains("Ready,SchedulingDisabled")),
        "{table}"
    );
    // Uncordoned, it takes pods again.
    ok(&skiff(&first, &["uncordon", "three"]).await);
    wait_spread(&first, "app=my-web-app", 3, 3).await;

    // A gateway joins: it takes no pods and no vote, and serves every pod.
    let gateway_dir = tempfile::tempdir().unwrap();
    let join = join_args(&first);
    let mut cmd_args = vec!["--node-name", "edge"];
    cmd_args.extend(join.iter().map(String::as_str));
    let edge = Node::start_customised(gateway_dir.path(), &cmd_args, |cmd| {
        // `skiff gateway` takes the flags `skiff up` takes.
        let args: Vec<std::ffi::OsString> = cmd.get_args().skip(1).map(Into::into).collect();
        *cmd = std::process::Command::new(crate::harness::SKIFF);
        cmd.arg("gateway")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped());
    })
    .await;
    wait_ready(&first, 4, 4, "the gateway to join").await;
    let table = wait_for(
        "the gateway to be a learner",
        Duration::from_secs(10),
        || async {
            let table = ok(&skiff(&first, &["get", "nodes"]).await);
            table
                .lines()
                .any(|l| l.starts_with("edge") && l.contains(" gateway,learner "))
                .then_some(table)
        },
    )
    .await;
    assert_eq!(
        table.matches("node-role.kubernetes.io/voter=").count(),
        2,
        "{table}"
    );
    wait_for(
        "the gateway to route to all three pods",
        Duration::from_secs(10),
        || async {
            served_by(&edge, "my-web-app", 30)
                .await
                .filter(|by| by.len() == 3)
        },
    )
    .await;
    assert!(
        pods(&first, "app=my-web-app")
            .await
            .iter()
            .all(|(_, n, _)| n != "edge"),
        "a gateway runs no pods"
    );
}

/// Builds the nginx example's site as `my-web-app` on `node` and applies its two files
/// through it.
async fn apply_nginx_example(node: &Node) {
    let dir = tempfile::tempdir().unwrap();
    crate::harness::build_nginx_site(node, dir.path()).await;
    apply_nginx_files(node).await;
}

/// Applies the nginx example's two files, unchanged, through `node`; what it printed.
async fn apply_nginx_files(node: &Node) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("deployment.yaml");
    let s = dir.path().join("service.yaml");
    std::fs::write(&d, include_str!("../../samples/nginx-k8s/deployment.yaml")).unwrap();
    std::fs::write(&s, include_str!("../../samples/nginx-k8s/service.yaml")).unwrap();
    ok(&skiff(
        node,
        &[
            "apply",
            "-f",
            d.to_str().unwrap(),
            "-f",
            s.to_str().unwrap(),
        ],
    )
    .await)
}

/// Waits until `node`, cut off from the others, answers 20 requests in a row for the
/// nginx example from its own pod.
async fn serves_on_its_own(node: &Node) {
    wait_for(
        "a node cut off to serve from its own pod",
        Duration::from_secs(10),
        || async {
            for _ in 0..20 {
                let r = node
                    .app(reqwest::Method::GET, "my-web-app", "/")
                    .send()
                    .await;
                if !r.is_ok_and(|r| r.status() == 200) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// A Service named `name` (one small write).
async fn write_service(node: &Node, name: &str) -> std::process::Output {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n"),
    )
    .unwrap();
    skiff(node, &["apply", "-f", file.path().to_str().unwrap()]).await
}

/// The Services `node` has, read linearizably.
async fn services(node: &Node) -> Result<Vec<String>, String> {
    let r = node
        .api_get("/api/v1/namespaces/default/services?consistent=true")
        .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(v["error"]["message"].as_str().unwrap_or("").to_string());
    }
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect())
}

#[tokio::test]
async fn acknowledged_writes_survive_a_killed_leader_and_a_minority_refuses_writes_but_serves() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let (first, second, third) =
        three_nodes([dirs[0].path(), dirs[1].path(), dirs[2].path()]).await;
    apply_nginx_example(&first).await;
    wait_spread(&first, "app=my-web-app", 3, 3).await;
    let leader = roles(&first)
        .await
        .into_iter()
        .find(|(_, r)| r == "leader")
        .unwrap()
        .0;
    let mut nodes: Vec<(String, Node, usize)> = vec![
        ("one".into(), first, 0),
        ("two".into(), second, 1),
        ("three".into(), third, 2),
    ];
    let at = nodes.iter().position(|(n, _, _)| *n == leader).unwrap();
    let (_, leader_node, leader_dir) = nodes.remove(at);

    // Writes through a follower; the leader is killed after the tenth. Every write that
    // was acknowledged is there afterwards, and writes go on once a new leader is chosen.
    let mut acknowledged = Vec::new();
    let mut leader_node = Some(leader_node);
    for i in 0..40 {
        if i == 10 {
            leader_node.take().unwrap().kill9();
        }
        let name = format!("svc-{i}");
        if write_service(&nodes[0].1, &name).await.status.success() {
            acknowledged.push(name);
        }
        if i >= 10 && acknowledged.len() >= 20 {
            break;
        }
    }
    let after_kill = acknowledged
        .iter()
        .filter(|n| n.as_str() >= "svc-10")
        .count();
    assert!(acknowledged.len() >= 10, "{acknowledged:?}");
    assert!(
        after_kill > 0 || acknowledged.len() < 20,
        "writes resumed after the new election: {acknowledged:?}"
    );
    for (_, node, _) in &nodes {
        let seen = wait_for("a linearizable read", Duration::from_secs(10), || async {
            services(node).await.ok()
        })
        .await;
        for name in &acknowledged {
            assert!(
                seen.contains(name),
                "{name} was acknowledged but is gone: {seen:?}"
            );
        }
    }

    // Kill another: the last node cannot reach a quorum. Writes and linearizable reads
    // fail at once, naming the voters; its pods keep serving.
    let (_, killed, killed_dir) = nodes.remove(1);
    killed.kill9();
    let (_, alone, _) = &nodes[0];
    wait_ready(alone, 1, 3, "two nodes to be seen dead").await;
    let started = Instant::now();
    let o = write_service(alone, "svc-minority").await;
    let e = err(&o);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}: {e}",
        started.elapsed()
    );
    assert!(
        e.contains("no quorum")
            && e.contains("1 of the cluster's 3 voters")
            && e.contains("unreachable"),
        "{e}"
    );
    let e = services(alone).await.unwrap_err();
    assert!(e.contains("no quorum"), "{e}");
    serves_on_its_own(alone).await;

    // One comes back: a quorum again, and writes are taken.
    let _back = Node::start_in(dirs[killed_dir].path(), &[]).await;
    wait_for(
        "writes to be taken again",
        Duration::from_secs(15),
        || async {
            write_service(alone, "svc-healed")
                .await
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    let _ = leader_dir;
}

#[tokio::test]
async fn a_rolling_update_across_three_nodes_under_load_fails_no_request() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let (first, second, third) =
        three_nodes([dirs[0].path(), dirs[1].path(), dirs[2].path()]).await;
    // Two versions of the hello component, built on the first node only.
    for (tag, greeting) in [("hello:v1", "one"), ("hello:v2", "two")] {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("hello.wasm"), crate::harness::hello_wasm()).unwrap();
        std::fs::write(
            ctx.path().join("skiff.toml"),
            format!("version = 1\nkind = \"wasm\"\nwasm = \"hello.wasm\"\n[env]\nGREETING = \"{greeting}\"\n"),
        )
        .unwrap();
        ok(&skiff(&first, &["build", "-t", tag, ctx.path().to_str().unwrap()]).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: hello:v1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - port: 80\n",
    )
    .unwrap();
    ok(&skiff(&third, &["apply", "-f", manifest.to_str().unwrap()]).await);
    wait_spread(&first, "app=web", 3, 3).await;

    // Load through the second node's ingress while the image changes through the third.
    let load = Load::start(&second, "web", 6);
    load.wait_count(300).await;
    let before = load.ok.load(std::sync::atomic::Ordering::Relaxed);
    ok(&skiff(&third, &["set", "image", "deployment/web", "web=hello:v2"]).await);
    let out = ok(&skiff(
        &first,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    )
    .await);
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_for(
        "3 pods of v2 on 3 nodes",
        Duration::from_secs(30),
        || async {
            let p = pods(&first, "app=web").await;
            let on: std::collections::BTreeSet<&str> =
                p.iter().map(|(_, n, _)| n.as_str()).collect();
            (p.len() == 3 && on.len() == 3 && p.iter().all(|(_, _, r)| *r)).then_some(())
        },
    )
    .await;
    load.wait_count(before + 1000).await;
    let (good, bad, errors, bodies) = load.finish().await;
    assert_eq!(
        (bad, errors),
        (0, 0),
        "failed requests during the rollout ({good} fine)"
    );
    assert!(
        bodies.get("two from skiff\n").copied().unwrap_or(0) > 0,
        "{bodies:?}"
    );
    // Every node now answers with the new version only.
    for n in [&first, &second, &third] {
        wait_for("only v2 to answer", Duration::from_secs(10), || async {
            let mut all = true;
            for _ in 0..10 {
                all &= n.get("web", "/").await.1 == "two from skiff\n";
            }
            all.then_some(())
        })
        .await;
    }

    // An app uploaded to one node answers once its pods are ready on every node they
    // were placed on, so all three serve at once.
    first
        .deploy_ok("upl", crate::harness::hello_wasm(), "replicas=3")
        .await;
    let p = pods(&second, "skiff.dev/app=upl").await;
    let on: std::collections::BTreeSet<&str> = p.iter().map(|(_, n, _)| n.as_str()).collect();
    assert!(
        p.len() == 3 && on.len() == 3 && p.iter().all(|(_, _, r)| *r),
        "{p:?}"
    );
}

#[tokio::test]
async fn a_partitioned_node_refuses_writes_keeps_serving_and_converges_when_healed() {
    let net = match crate::netns::Net::new(3) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let first = net.start(0, dirs[0].path(), &["--node-name", "one"]).await;
    let join = format!("{}:7700", net.ip(0));
    let token = std::fs::read_to_string(dirs[0].path().join("join-token")).unwrap();
    let mut others = Vec::new();
    for (i, name) in [(1, "two"), (2, "three")] {
        let extra = [
            "--node-name",
            name,
            "--join",
            &join,
            "--join-token",
            token.trim(),
        ];
        others.push(net.start(i, dirs[i].path(), &extra).await);
    }
    let third = others.pop().unwrap();
    let second = others.pop().unwrap();
    for n in [&first, &second, &third] {
        wait_ready(n, 3, 3, "three ready nodes").await;
    }
    wait_for("three Raft voters", Duration::from_secs(30), || async {
        let r = roles(&first).await;
        (r.values()
            .filter(|r| *r == "leader" || *r == "voter")
            .count()
            == 3)
            .then_some(())
    })
    .await;
    apply_nginx_example(&second).await;
    wait_spread(&first, "app=my-web-app", 3, 3).await;

    // Cut the third off. The majority keeps taking writes and moves its pod; the third
    // refuses writes at once, naming the voters, and serves from the pod it has.
    net.partition(2);
    wait_ready(&first, 2, 3, "the majority to see the third gone").await;
    wait_for(
        "a write on the majority",
        Duration::from_secs(15),
        || async {
            write_service(&first, "during-partition")
                .await
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the third's pod to run on the majority",
        Duration::from_secs(15),
        || async {
            let p = pods(&first, "app=my-web-app").await;
            (p.len() == 3 && p.iter().all(|(_, n, r)| *r && n != "three")).then_some(())
        },
    )
    .await;
    wait_ready(&third, 1, 3, "the third to see the others gone").await;
    let started = Instant::now();
    let e = err(&write_service(&third, "on-the-minority").await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(e.contains("no quorum") && e.contains("unreachable"), "{e}");
    serves_on_its_own(&third).await;

    // Heal: within 10 s the third has the majority's writes, the pods are spread over
    // three nodes again, and there were never more than replicas + maxSurge (3 + 1),
    // counting the third's own pod, which ran on through the partition.
    net.heal(2);
    let healed = Instant::now();
    let most = spread_again(&first, Duration::from_secs(10)).await;
    let left = Duration::from_secs(10).saturating_sub(healed.elapsed());
    wait_for("the majority's writes on the third", left, || async {
        services(&third)
            .await
            .is_ok_and(|s| s.contains(&"during-partition".to_string()))
            .then_some(())
    })
    .await;
    assert!(
        most.len() <= 4,
        "{} pods at once after the heal: {most:?}",
        most.len()
    );
    eprintln!("converged {:?} after the heal", healed.elapsed());
    drop((first, second, third));
    drop(net);
}

#[tokio::test]
async fn a_dead_voter_is_replaced_by_a_learner_only_after_the_grace_period() {
    let grace = ["--voter-grace", "2s"];
    let mut first_args = vec!["--node-name", "one"];
    first_args.extend(grace);
    let first = Node::start_with(&first_args).await;
    let join = join_args(&first);
    let mut nodes = vec![first];
    for name in ["two", "three", "four"] {
        let mut extra: Vec<&str> = join.iter().map(String::as_str).collect();
        extra.extend(["--node-name", name]);
        extra.extend(grace);
        nodes.push(Node::start_with(&extra).await);
    }
    wait_ready(&nodes[0], 4, 4, "four ready nodes").await;
    let count = |r: &std::collections::BTreeMap<String, String>, role: &str| {
        r.values().filter(|v| *v == role).count()
    };
    let formed = wait_for(
        "3 voters and a learner",
        Duration::from_secs(30),
        || async {
            let r = roles(&nodes[0]).await;
            (count(&r, "leader") == 1 && count(&r, "voter") == 2 && count(&r, "learner") == 1)
                .then_some(r)
        },
    )
    .await;
    // Kill a voter that does not lead.
    let victim = formed
        .iter()
        .find(|(_, r)| *r == "voter")
        .unwrap()
        .0
        .clone();
    let at = ["one", "two", "three", "four"]
        .iter()
        .position(|n| *n == victim)
        .unwrap();
    nodes.remove(at).kill9();
    let killed = Instant::now();
    let watcher = &nodes[0];
    let replaced = wait_for(
        "the dead voter to be replaced",
        Duration::from_secs(30),
        || async {
            let r = roles(watcher).await;
            let voting = |n: &str| r.get(n).is_some_and(|v| v == "leader" || v == "voter");
            (!voting(&victim) && count(&r, "leader") == 1 && count(&r, "voter") == 2).then_some(r)
        },
    )
    .await;
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "replaced after {:?}, inside the 2 s grace: {replaced:?}",
        killed.elapsed()
    );
    assert_eq!(count(&replaced, "learner"), 1, "{replaced:?}");
    // Three live voters: one more may fail and writes go on.
    assert!(
        write_service(watcher, "after-replacement")
            .await
            .status
            .success()
    );
}
