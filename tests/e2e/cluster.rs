//! A cluster of nodes on loopback: joining with the join token, gossip membership,
//! failure detection, rejoining, and gossip that is not the cluster's.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Node, err, ok, skiff, wait_for};

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

async fn wait_ready(node: &Node, ready: usize, total: usize, what: &str) -> Vec<(String, bool)> {
    wait_for(what, Duration::from_secs(30), || async {
        let n = nodes(node).await;
        (n.len() == total && n.iter().filter(|(_, r)| *r).count() == ready).then_some(n)
    })
    .await
}

fn join_args(first: &Node) -> Vec<String> {
    let token = std::fs::read_to_string(first.dir.join("join-token")).unwrap();
    vec![
        "--join".into(),
        first.api.trim_start_matches("http://").into(),
        "--join-token".into(),
        token.trim().into(),
    ]
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

    // Everyone sees everyone; one admin token works on every node.
    for n in [&first, &second, &third] {
        let seen = wait_ready(n, 3, 3, "three ready nodes").await;
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["one", "three", "two"]);
        assert_eq!(
            n.token, first.token,
            "joining adopts the cluster's admin token"
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
    let gossip = {
        let cluster: Value =
            serde_json::from_str(&std::fs::read_to_string(first.dir.join("cluster.json")).unwrap())
                .unwrap();
        assert!(cluster["node_id"].is_string());
        // The first node's gossip address is the seed the others were given.
        let c2: Value = serde_json::from_str(
            &std::fs::read_to_string(second.dir.join("cluster.json")).unwrap(),
        )
        .unwrap();
        c2["seeds"][0].as_str().unwrap().to_string()
    };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for payload in [&b"junk"[..], &[7u8; 200][..], &[0u8; 60_000][..]] {
        udp.send_to(payload, &gossip).unwrap();
    }
    let m = wait_for(
        "the forged datagrams to be counted",
        Duration::from_secs(10),
        || async {
            let m = first.metrics().await;
            let forged =
                crate::harness::metric(&m, "skiff_gossip_dropped_datagrams{reason=\"forged\"}");
            let short =
                crate::harness::metric(&m, "skiff_gossip_dropped_datagrams{reason=\"truncated\"}");
            (forged + short >= 3.0).then_some(m)
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
    let o = tokio::process::Command::new(crate::harness::SKIFF)
        .args([
            "up",
            "--api-addr",
            "127.0.0.1:0",
            "--ingress-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--gossip-addr",
            "127.0.0.1:0",
            "--join",
            &join[1],
            "--join-token",
            "wrong",
        ])
        .arg("--data-dir")
        .arg(dir4.path())
        .output()
        .await
        .unwrap();
    let e = err(&o);
    assert!(e.contains("join token is wrong"), "{e}");
    // The join endpoint answers without the admin token: its body is bounded.
    let r = first
        .http
        .post(format!("{}/v1/cluster/join", first.api))
        .header("content-type", "application/json")
        .body(vec![b' '; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        !dir4.path().join("cluster.json").exists(),
        "nothing kept of a refused join"
    );
    assert_eq!(nodes(&first).await.len(), 3);
}
