//! Deployments and Services: `apply -f`, pods, rollouts and balancers on a real node.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Load, Node, err, hello_wasm, ok, skiff, wait_for};

/// The nginx example's two manifests, as people write them (samples/nginx-k8s).
const DEPLOYMENT: &str = include_str!("../../samples/nginx-k8s/deployment.yaml");
const SERVICE: &str = include_str!("../../samples/nginx-k8s/service.yaml");

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Builds the hello component as image `tag`, greeting with `greeting`.
pub(crate) async fn build_hello(node: &Node, tag: &str, greeting: &str) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.wasm"), hello_wasm()).unwrap();
    std::fs::write(
        ctx.path().join("skiff.toml"),
        format!("version = 1\nkind = \"wasm\"\nwasm = \"hello.wasm\"\n[env]\nGREETING = \"{greeting}\"\n"),
    )
    .unwrap();
    ok(&skiff(node, &["build", "-t", tag, path(ctx.path())]).await);
}

/// A Deployment of `image` labelled `app: <app>`, with `extra` YAML lines under the
/// container and `spec_extra` under the spec.
fn deployment(
    name: &str,
    app: &str,
    image: &str,
    replicas: i32,
    extra: &str,
    spec_extra: &str,
) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n{spec_extra}  selector:\n    matchLabels:\n      app: {app}\n      deploy: {name}\n  template:\n    metadata:\n      labels:\n        app: {app}\n        deploy: {name}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n{extra}"
    )
}

fn service(name: &str, app: &str, balancer: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations:\n    skiff.dev/load-balancer: {balancer}\n    skiff.dev/hash-on: x-user\nspec:\n  selector:\n    app: {app}\n  ports:\n  - port: 80\n"
    )
}

/// Writes `text` into a new file in `dir` and applies it.
async fn apply_doc(node: &Node, dir: &tempfile::TempDir, text: &str) -> String {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile_in(dir.path())
        .unwrap();
    std::fs::write(file.path(), text).unwrap();
    ok(&skiff(node, &["apply", "-f", path(file.path())]).await)
}

async fn pods(node: &Node, selector: &str) -> Vec<Value> {
    let v: Value = node
        .api_get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector={selector}"
        ))
        .await
        .json()
        .await
        .unwrap();
    v["items"].as_array().unwrap().clone()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["containerStatuses"][0]["ready"] == true
        && pod["metadata"]["deletionTimestamp"].is_null()
}

/// Waits until exactly `n` pods match `selector`, all ready and none stopping.
async fn wait_pods(node: &Node, selector: &str, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} ready pods of {selector}"),
        Duration::from_secs(30),
        || async {
            let p = pods(node, selector).await;
            (p.len() == n && p.iter().all(ready)).then_some(p)
        },
    )
    .await
}

/// The pod a response came from.
fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-skiff-container")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_nginx_example_applies_unchanged_scales_and_deletes() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    crate::harness::build_nginx_site(&node, dir.path()).await;
    let (d, s) = (
        dir.path().join("deployment.yaml"),
        dir.path().join("service.yaml"),
    );
    std::fs::write(&d, DEPLOYMENT).unwrap();
    std::fs::write(&s, SERVICE).unwrap();
    let out = ok(&skiff(&node, &["apply", "-f", path(&d), "-f", path(&s)]).await);
    assert_eq!(
        out,
        "deployment.apps/my-web-app created\nservice/my-web-app created\n"
    );
    let three = wait_pods(&node, "app=my-web-app", 3).await;
    for p in &three {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("my-web-app-"), "{name}");
        assert_eq!(p["status"]["phase"], "Running");
        assert!(p["spec"]["nodeName"].is_string());
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    }
    // The Service serves the site, and every pod takes a share.
    let mut by_pod: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let r = node
            .app(reqwest::Method::GET, "my-web-app", "/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let pod = served_by(&r);
        assert_eq!(r.text().await.unwrap(), "<h1>my web app</h1>\n");
        *by_pod.entry(pod).or_default() += 1;
    }
    let names: Vec<&str> = three
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        by_pod.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut n = names.clone();
            n.sort_unstable();
            n
        },
        "each pod serves some requests: {by_pod:?}"
    );

    // kubectl's output shapes.
    let table = ok(&skiff(&node, &["get", "pods"]).await);
    assert!(
        table.starts_with("NAME") && table.contains("1/1") && table.contains("Running"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&ok(
            &skiff(&node, &["get", "deployments", "-o", "json"]).await
        ))
        .unwrap();
    assert_eq!(json["kind"], "List");
    let status = &json["items"][0]["status"];
    for field in [
        "replicas",
        "readyReplicas",
        "updatedReplicas",
        "availableReplicas",
    ] {
        assert_eq!(status[field], 3, "{field} in {status}");
    }
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True")
    );
    let yaml = ok(&skiff(&node, &["get", "service", "my-web-app", "-o", "yaml"]).await);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("app: my-web-app"),
        "{yaml}"
    );
    assert!(
        yaml.contains("loadBalancer: {}"),
        "a Service has a status: {yaml}"
    );

    // Applying again changes nothing.
    let out = ok(&skiff(&node, &["apply", "-f", path(&d), "-f", path(&s)]).await);
    assert_eq!(
        out,
        "deployment.apps/my-web-app unchanged\nservice/my-web-app unchanged\n"
    );

    // A directory of manifests, and standard input, read the same.
    let out = ok(&skiff(&node, &["apply", "-f", path(dir.path())]).await);
    assert_eq!(
        out,
        "deployment.apps/my-web-app unchanged\nservice/my-web-app unchanged\n"
    );
    let mut child = tokio::process::Command::new(crate::harness::SKIFF)
        .args(["apply", "-f", "-"])
        .env("SKIFF_API", &node.api)
        .env("SKIFF_TOKEN", &node.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(SERVICE.as_bytes()).await.unwrap();
    }
    let out = ok(&child.wait_with_output().await.unwrap());
    assert_eq!(out, "service/my-web-app unchanged\n");

    // Scale 3 -> 5 -> 1, watched by `skiff get pods -w`.
    let mut watcher = tokio::process::Command::new(crate::harness::SKIFF)
        .args(["get", "pods", "-w"])
        .env("SKIFF_API", &node.api)
        .env("SKIFF_TOKEN", &node.token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        watcher.stdout.take().unwrap(),
    ));
    ok(&skiff(
        &node,
        &["scale", "deployment/my-web-app", "--replicas", "5"],
    )
    .await);
    let five = wait_pods(&node, "app=my-web-app", 5).await;
    ok(&skiff(
        &node,
        &["scale", "deployment/my-web-app", "--replicas", "1"],
    )
    .await);
    let one = wait_pods(&node, "app=my-web-app", 1).await;
    let left = one[0]["metadata"]["name"].as_str().unwrap().to_string();
    // The watch (the server's, pushed) shows every pod that came, and again each that
    // went, under one header (not one per change).
    let went: Vec<String> = five
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .filter(|n| *n != left)
        .collect();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !went.iter().all(|p| {
        seen.iter()
            .filter(|l: &&String| l.starts_with(p.as_str()))
            .count()
            >= 2
    }) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the watch did not show {went:?} go: {seen:#?}"))
            .unwrap()
            .expect("the watch keeps printing");
        seen.push(line);
    }
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("NAME")).count(),
        1,
        "one header: {seen:#?}"
    );
    drop(watcher);
    for _ in 0..5 {
        let r = node
            .app(reqwest::Method::GET, "my-web-app", "/")
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), served_by(&r)), (200, left.clone()));
    }

    // delete -f removes everything.
    let out = ok(&skiff(&node, &["delete", "-f", path(&d), "-f", path(&s)]).await);
    assert_eq!(
        out,
        "deployment.apps/my-web-app deleted\nservice/my-web-app deleted\n"
    );
    wait_for("the pods to go", Duration::from_secs(30), || async {
        pods(&node, "app=my-web-app").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(node.get("my-web-app", "/").await.0, 404);
    let e = err(&skiff(&node, &["delete", "-f", path(&s)]).await);
    assert!(
        e.contains("NotFound") && e.contains("service/my-web-app"),
        "{e}"
    );
}

#[tokio::test]
async fn rolling_update_and_undo_under_load_fail_no_request() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    build_hello(&node, "hello:v1", "one").await;
    build_hello(&node, "hello:v2", "two").await;
    apply_doc(
        &node,
        &dir,
        &deployment("web", "web", "hello:v1", 3, "", ""),
    )
    .await;
    apply_doc(&node, &dir, &service("web", "web", "round-robin")).await;
    wait_pods(&node, "app=web", 3).await;

    for (step, args, greeting) in [
        (
            "update",
            vec!["set", "image", "deployment/web", "web=hello:v2"],
            "two from skiff\n",
        ),
        (
            "undo",
            vec!["rollout", "undo", "deployment/web"],
            "one from skiff\n",
        ),
    ] {
        let load = Load::start(&node, "web", 8);
        load.wait_count(500).await;
        let before = load.ok.load(Ordering::Relaxed);
        ok(&skiff(&node, &args).await);
        let out = ok(&skiff(
            &node,
            &["rollout", "status", "deployment/web", "--timeout", "60s"],
        )
        .await);
        assert!(out.contains("successfully rolled out"), "{out}");
        load.wait_count(before + 5000).await;
        let (good, bad, errors, bodies) = load.finish().await;
        assert!(good >= 5000, "{step}: only {good} requests");
        assert_eq!(
            (bad, errors),
            (0, 0),
            "{step}: failed requests during the rollout ({good} fine)"
        );
        assert!(
            bodies.get(greeting).copied().unwrap_or(0) > 0,
            "{step}: the new pods served: {bodies:?}"
        );
        let now = wait_pods(&node, "app=web", 3).await;
        let hash = now[0]["metadata"]["labels"]["pod-template-hash"].clone();
        assert!(
            now.iter()
                .all(|p| p["metadata"]["labels"]["pod-template-hash"] == hash)
        );
        assert_eq!(node.get("web", "/").await.1, greeting, "{step}");
    }
    let history = ok(&skiff(&node, &["rollout", "history", "deployment/web"]).await);
    // Undo moved revision 1 up to 3, as Kubernetes does.
    assert!(
        history.contains("2 ") && history.contains("3 ") && !history.contains("\n1 "),
        "{history}"
    );
}

#[tokio::test]
async fn a_rollout_that_never_becomes_ready_fails_and_the_old_pods_keep_serving() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    build_hello(&node, "hello:v1", "one").await;
    let probe = |path: &str| {
        format!(
            "        readinessProbe:\n          httpGet:\n            path: {path}\n            port: 80\n          periodSeconds: 1\n"
        )
    };
    let spec = "  progressDeadlineSeconds: 3\n";
    apply_doc(
        &node,
        &dir,
        &deployment("web", "web", "hello:v1", 2, &probe("/"), spec),
    )
    .await;
    apply_doc(&node, &dir, &service("web", "web", "p2c-ewma")).await;
    wait_pods(&node, "app=web", 2).await;
    // The new template's probe always gets 404: its pods never become ready.
    apply_doc(
        &node,
        &dir,
        &deployment("web", "web", "hello:v1", 2, &probe("/nope"), spec),
    )
    .await;
    let started = Instant::now();
    let e = err(&skiff(
        &node,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    )
    .await);
    assert!(e.contains("exceeded its progress deadline"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the deadline"
    );
    // As far as it got: the old pods serve, the new ones are not ready.
    let all = pods(&node, "app=web").await;
    let ready_pods = all.iter().filter(|p| ready(p)).count();
    assert_eq!(ready_pods, 2, "the old pods stay: {all:?}");
    assert!(all.len() > 2, "a new pod was tried");
    for _ in 0..10 {
        assert_eq!(
            node.get("web", "/").await,
            (200, "one from skiff\n".to_string())
        );
    }
    let described = ok(&skiff(&node, &["describe", "deployment", "web"]).await);
    assert!(
        described.contains("ProgressDeadlineExceeded"),
        "{described}"
    );
    // An image that does not exist fails the same way, naming it.
    ok(&skiff(&node, &["set", "image", "deployment/web", "web=nope:v9"]).await);
    let e = err(&skiff(
        &node,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    )
    .await);
    assert!(e.contains("exceeded its progress deadline"), "{e}");
    let table = ok(&skiff(&node, &["get", "pods"]).await);
    assert!(table.contains("ErrImagePull"), "{table}");
    // And undo brings the deployment back to a finished state.
    ok(&skiff(
        &node,
        &["rollout", "undo", "deployment/web", "--to-revision", "1"],
    )
    .await);
    ok(&skiff(
        &node,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    )
    .await);
}

/// Requests per pod (by deployment) through Service `svc`, `n` of them from
/// `concurrency` clients.
async fn spread(node: &Node, svc: &str, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
    let per = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let req = node.app(reqwest::Method::GET, svc, "/");
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..per {
                    let r = req.try_clone().unwrap().send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    seen.push(served_by(&r));
                }
                seen
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for t in tasks {
        for pod in t.await.unwrap() {
            // web-slow-<hash>-<suffix> -> web-slow
            let deploy = pod.rsplitn(3, '-').nth(2).unwrap().to_string();
            *counts.entry(deploy).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test]
async fn balancers_split_by_replicas_and_latency_aware_ones_avoid_a_slow_pod() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    build_hello(&node, "hello:v1", "hi").await;
    // Two Deployments behind one label: the Kubernetes canary. One pod is slow.
    apply_doc(
        &node,
        &dir,
        &deployment("web-fast", "web", "hello:v1", 2, "", ""),
    )
    .await;
    let slow_env = "        env:\n        - name: DELAY_MS\n          value: \"40\"\n";
    apply_doc(
        &node,
        &dir,
        &deployment("web-slow", "web", "hello:v1", 1, slow_env, ""),
    )
    .await;
    for lb in ["round-robin", "random", "least-request", "p2c-ewma", "hash"] {
        apply_doc(&node, &dir, &service(lb, "web", lb)).await;
    }
    wait_pods(&node, "app=web", 3).await;

    // Round-robin: exactly by turns, so by replica counts (2:1).
    let rr = spread(&node, "round-robin", 300, 3).await;
    assert_eq!((rr["web-fast"], rr["web-slow"]), (200, 100), "{rr:?}");
    // Random: about a third to the slow pod.
    let random = spread(&node, "random", 300, 3).await;
    let slow = random.get("web-slow").copied().unwrap_or(0);
    assert!(
        (55..=145).contains(&slow),
        "random sent {slow} of 300 to one of 3 pods"
    );
    // Latency-aware balancers send the slow pod far fewer than round-robin's 100.
    for lb in ["least-request", "p2c-ewma"] {
        let s = spread(&node, lb, 300, 3).await;
        let slow = s.get("web-slow").copied().unwrap_or(0);
        assert!(
            slow < 40,
            "{lb} sent {slow} of 300 requests to the slow pod: {s:?}"
        );
    }
    // Hash: one user, one pod.
    let mut pods_seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = node
            .app(reqwest::Method::GET, "hash", "/")
            .header("x-user", "alice")
            .send()
            .await
            .unwrap();
        pods_seen.insert(served_by(&r));
    }
    assert_eq!(pods_seen.len(), 1, "{pods_seen:?}");
}

#[tokio::test]
async fn a_node_killed_mid_rollout_ends_at_the_desired_revision() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start_in(&data, &[]).await;
    build_hello(&node, "hello:v1", "one").await;
    build_hello(&node, "hello:v2", "two").await;
    // Each new pod takes a second to become ready: the rollout is slow enough to kill.
    let probe = "        readinessProbe:\n          httpGet:\n            path: /\n            port: 80\n          initialDelaySeconds: 1\n          periodSeconds: 1\n";
    let spec = "  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n";
    apply_doc(
        &node,
        &dir,
        &deployment("web", "web", "hello:v1", 3, probe, spec),
    )
    .await;
    apply_doc(&node, &dir, &service("web", "web", "p2c-ewma")).await;
    wait_pods(&node, "app=web", 3).await;
    ok(&skiff(&node, &["set", "image", "deployment/web", "web=hello:v2"]).await);
    // Mid-rollout: new pods exist, old ones too.
    wait_for(
        "the rollout to be under way",
        Duration::from_secs(30),
        || async {
            let p = pods(&node, "app=web").await;
            let hashes: std::collections::BTreeSet<String> = p
                .iter()
                .map(|p| p["metadata"]["labels"]["pod-template-hash"].to_string())
                .collect();
            (hashes.len() == 2).then_some(())
        },
    )
    .await;
    node.kill9();
    let node = Node::start_in(&data, &[]).await;
    ok(&skiff(
        &node,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    )
    .await);
    let now = wait_pods(&node, "app=web", 3).await;
    let d: Value = node
        .api_get("/apis/apps/v1/namespaces/default/deployments/web")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "hello:v2"
    );
    assert!(
        now.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "hello:v2")
    );
    // No extra pods: the reconciler counts exactly the desired ones, all of this revision.
    let status = &d["status"];
    for field in ["replicas", "updatedReplicas", "availableReplicas"] {
        assert_eq!(status[field], 3, "{field} in {status}");
    }
    assert_eq!(
        node.get("web", "/").await,
        (200, "two from skiff\n".to_string())
    );
}

#[tokio::test]
async fn bad_manifests_are_refused_whole_with_one_line() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = deployment("web", "web", "hello:v1", 1, "", "");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "indentation",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n spec:\n  replicas: 1\n".into(),
            "line",
        ),
        ("unknown kind", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n".into(), "ConfigMap"),
        (
            "selector",
            good.replace("      deploy: web\n  template", "      deploy: other\n  template"),
            "does not match",
        ),
        ("negative replicas", good.replace("replicas: 1", "replicas: -2"), "spec.replicas"),
        ("a million replicas", good.replace("replicas: 1", "replicas: 1000000"), "spec.replicas"),
        (
            "10 MB",
            format!("{good}        args: [\"{}\"]\n", "x".repeat(10 << 20)),
            "manifests are read up to",
        ),
        (
            "alias bomb",
            {
                // A billion laughs in a Service's annotations.
                let mut bomb = String::from(
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  annotations:\n    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
                );
                for i in 1..10 {
                    let p = format!("*a{}", i - 1);
                    bomb.push_str(&format!("    a{i}: &a{i} [{}]\n", [p.as_str(); 9].join(", ")));
                }
                bomb + "spec:\n  ports: [{port: 80}]\n"
            },
            "budget breached",
        ),
        ("duplicate", format!("{good}---\n{good}"), "is also document 1"),
        // A good document before a bad one: nothing is applied.
        (
            "second invalid",
            format!("{}---\n{}", service("web", "web", "p2c-ewma"), good.replace("replicas: 1", "replicas: -1")),
            "document 2",
        ),
    ];
    for (what, text, needle) in cases {
        let p = dir.path().join(format!("{}.yaml", what.replace(' ', "-")));
        std::fs::write(&p, &text).unwrap();
        let e = err(&skiff(&node, &["apply", "-f", path(&p)]).await);
        let e = e.trim();
        assert_eq!(e.lines().count(), 1, "{what}: one line: {e}");
        assert!(e.contains(needle), "{what}: {e}");
        assert!(e.len() < 600, "{what}: short: {e}");
    }
    let all = ok(&skiff(&node, &["get", "all", "-o", "json"]).await);
    let v: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        0,
        "nothing applied: {all}"
    );
    let h = node
        .http
        .get(format!("{}/healthz", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    // A Service may not take an app's name.
    node.deploy_ok("taken", hello_wasm(), "").await;
    let p = dir.path().join("taken.yaml");
    std::fs::write(&p, service("taken", "web", "p2c-ewma")).unwrap();
    let e = err(&skiff(&node, &["apply", "-f", path(&p)]).await);
    assert!(e.contains("taken by an app"), "{e}");
}

#[tokio::test]
async fn a_crashing_endpoint_is_retried_around_and_ejected() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    build_hello(&node, "hello:v1", "fine").await;
    // A WAGI module whose every instance traps: a crashed instance on each request.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("crash.wasm"),
        crate::harness::wat(
            r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#,
        ),
    )
    .unwrap();
    std::fs::write(
        ctx.path().join("skiff.toml"),
        "version = 1\nkind = \"wasm\"\nwasm = \"crash.wasm\"\n",
    )
    .unwrap();
    ok(&skiff(&node, &["build", "-t", "crash:v1", path(ctx.path())]).await);
    apply_doc(
        &node,
        &dir,
        &deployment("good", "mix", "hello:v1", 2, "", ""),
    )
    .await;
    apply_doc(
        &node,
        &dir,
        &deployment("bad", "mix", "crash:v1", 1, "", ""),
    )
    .await;
    apply_doc(&node, &dir, &service("mix", "mix", "round-robin")).await;
    wait_pods(&node, "app=mix", 3).await;

    // A request with a body is never sent twice: exactly one of three (round-robin)
    // meets the crashing pod and fails.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = node
            .app(reqwest::Method::POST, "mix", "/")
            .body("payload")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 500]);
    // Idempotent requests without a body are retried on another pod: none fails.
    for _ in 0..60 {
        let r = node
            .app(reqwest::Method::GET, "mix", "/")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.headers());
        assert!(served_by(&r).starts_with("good-"));
    }
    let m = node.metrics().await;
    let retries = crate::harness::metric(&m, "skiff_service_retries_total{service=\"mix\"}");
    assert!(retries >= 1.0, "{m}");
    let ejected: f64 = m
        .lines()
        .filter(|l| l.starts_with("skiff_service_ejections_total{service=\"mix\",endpoint=\"bad-"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(ejected >= 1.0, "the crashing pod was ejected: {m}");
    // Once ejected it gets no more requests, so there is nothing left to retry for a
    // while: fewer retries than requests.
    assert!(retries < 20.0, "{retries} retries for 60 requests");
    assert!(
        m.contains("skiff_service_requests_total{service=\"mix\",endpoint=\"good-"),
        "{m}"
    );
    assert!(m.contains("skiff_service_in_flight{service=\"mix\""), "{m}");
}

#[tokio::test]
async fn a_node_port_service_listens_on_its_port() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    build_hello(&node, "hello:v1", "node port").await;
    apply_doc(
        &node,
        &dir,
        &deployment("web", "web", "hello:v1", 2, "", ""),
    )
    .await;
    // No nodePort given: the node assigns one and reports it.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n  - port: 80\n";
    apply_doc(&node, &dir, svc).await;
    wait_pods(&node, "app=web", 2).await;
    let s: Value = serde_json::from_str(&ok(
        &skiff(&node, &["get", "svc", "web", "-o", "json"]).await
    ))
    .unwrap();
    let port = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    assert!((30000..=32767).contains(&port), "{s}");
    let url = format!("http://127.0.0.1:{port}/");
    let body = wait_for(
        "the node port to answer",
        Duration::from_secs(10),
        || async {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(r.text().await.ok()?)
        },
    )
    .await;
    assert_eq!(body, "node port from skiff\n");
    // Deleting the Service closes the port.
    ok(&skiff(&node, &["delete", "service", "web"]).await);
    wait_for(
        "the node port to close",
        Duration::from_secs(10),
        || async { reqwest::get(&url).await.is_err().then_some(()) },
    )
    .await;
}
