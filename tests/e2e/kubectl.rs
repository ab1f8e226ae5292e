//! The real kubectl, the oldest and the newest on the machine, against a node through
//! the kubeconfig `skiff kubeconfig` prints: the seed's manifests applied verbatim with
//! validation on, get, scale, set image, rollout status/history/undo, get -w, delete;
//! and kubectl's other verbs: create (protobuf since 1.32), describe and debug of what
//! the API server defaults, events, health, endpoints.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use crate::harness::{Node, ok, skiff, wait_for};

const DEPLOYMENT: &str = include_str!("../../samples/nginx-k8s/deployment.yaml");
const SERVICE: &str = include_str!("../../samples/nginx-k8s/service.yaml");

/// kubectl binaries beside the one on the PATH (`kubectl.1.NN`), oldest and newest.
pub(crate) fn kubectls() -> Option<(PathBuf, PathBuf)> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.exists())?;
    let dir = std::fs::canonicalize(&found).ok()?.parent()?.to_path_buf();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let minor = e
                .file_name()
                .to_str()?
                .strip_prefix("kubectl.1.")?
                .parse()
                .ok()?;
            Some((minor, e.path()))
        })
        .collect();
    versions.sort();
    Some((versions.first()?.1.clone(), versions.last()?.1.clone()))
}

/// A kubectl with its own kubeconfig and cache (a fresh HOME: no discovery cache from
/// another run).
pub(crate) struct Kubectl {
    pub(crate) bin: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) home: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", &self.config)
            .env("HOME", &self.home)
            .kill_on_drop(true);
        c
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        tokio::time::timeout(Duration::from_secs(90), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not return within 90 s"))
            .unwrap()
    }

    /// Stdout of a command that must succeed.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(
            o.status.success(),
            "{} {args:?}: {}{}",
            self.bin.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Stderr of a command that must fail.
    pub(crate) async fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(!o.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8(o.stderr).unwrap()
    }
}

/// Images of the Deployment's pods, and how many pods there are.
async fn pod_images(k: &Kubectl) -> Vec<String> {
    let out = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=my-web-app",
            "-o",
            "jsonpath={range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}",
        ])
        .await;
    out.lines().map(String::from).collect()
}

/// `kubectl rollout status` of the example, which must end rolled out.
async fn rolled_out(k: &Kubectl) {
    let status = k
        .ok(&[
            "rollout",
            "status",
            "deployment/my-web-app",
            "--timeout=60s",
        ])
        .await;
    assert!(status.contains("successfully rolled out"), "{status}");
}

async fn the_walkthrough(node: &Node, k: &Kubectl, dir: &Path) {
    let (d, s) = (dir.join("deployment.yaml"), dir.join("service.yaml"));
    std::fs::write(&d, DEPLOYMENT).unwrap();
    std::fs::write(&s, SERVICE).unwrap();
    let (d, s) = (d.to_str().unwrap(), s.to_str().unwrap());

    // Validation is on (no flag): a misspelt field is refused by kubectl from the
    // node's OpenAPI document, before anything is sent.
    let typo = dir.join("typo.yaml");
    std::fs::write(&typo, DEPLOYMENT.replace("replicas:", "replicass:")).unwrap();
    let e = k.fails(&["apply", "-f", typo.to_str().unwrap()]).await;
    assert!(e.contains("unknown field \"replicass\""), "{e}");

    assert_eq!(
        k.ok(&["apply", "-f", d]).await,
        "deployment.apps/my-web-app created\n"
    );
    assert_eq!(
        k.ok(&["apply", "-f", s]).await,
        "service/my-web-app created\n"
    );
    assert_eq!(
        k.ok(&["apply", "-f", d]).await,
        "deployment.apps/my-web-app unchanged\n"
    );
    rolled_out(k).await;
    let (code, body) = node.get("my-web-app", "/").await;
    assert_eq!((code, body.as_str()), (200, "<h1>my web app</h1>\n"));

    let wide = k
        .ok(&["get", "pods,deployments,services", "-o", "wide"])
        .await;
    assert_eq!(wide.matches("pod/my-web-app-").count(), 3, "{wide}");
    assert!(wide.contains("1/1     Running"), "{wide}");
    for want in [
        "deployment.apps/my-web-app   3/3",
        "my-web-app:latest",
        "app=my-web-app",
        "service/my-web-app",
        "80/TCP",
        "NODE",
    ] {
        assert!(wide.contains(want), "{want:?} in {wide}");
    }

    assert_eq!(
        k.ok(&["scale", "deployment", "my-web-app", "--replicas=2"])
            .await,
        "deployment.apps/my-web-app scaled\n"
    );
    wait_for("2 pods", Duration::from_secs(30), || async {
        (pod_images(k).await.len() == 2).then_some(())
    })
    .await;

    // A watch sees a deleted pod go and its replacement come.
    let mut watch = k
        .command(&["get", "pods", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    let victim = wait_for(
        "the watch lists the pods",
        Duration::from_secs(30),
        || async {
            let text = seen.lock().unwrap().clone();
            text.lines()
                .find(|l| l.starts_with("ADDED"))
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        },
    )
    .await;
    let out = k.ok(&["delete", "pod", &victim]).await;
    assert_eq!(out, format!("pod \"{victim}\" deleted\n"));
    let text = wait_for(
        "the watch shows the replacement",
        Duration::from_secs(30),
        || async {
            let text = seen.lock().unwrap().clone();
            let deleted = text
                .lines()
                .any(|l| l.starts_with("DELETED") && l.contains(&victim));
            let added = text.lines().filter(|l| l.starts_with("ADDED")).count();
            (deleted && added >= 3).then_some(text)
        },
    )
    .await;
    assert!(text.starts_with("EVENT"), "{text}");
    let _ = watch.kill().await;
    reader.abort();

    // A new image, rolled out and undone: revisions are ReplicaSets kubectl reads.
    ok(&skiff(node, &["tag", "my-web-app", "my-web-app:v2"]).await);
    assert_eq!(
        k.ok(&[
            "set",
            "image",
            "deployment/my-web-app",
            "my-web-app=my-web-app:v2"
        ])
        .await,
        "deployment.apps/my-web-app image updated\n"
    );
    rolled_out(k).await;
    assert_eq!(pod_images(k).await, ["my-web-app:v2", "my-web-app:v2"]);
    let history = k.ok(&["rollout", "history", "deployment/my-web-app"]).await;
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    assert_eq!(
        k.ok(&["rollout", "undo", "deployment/my-web-app"]).await,
        "deployment.apps/my-web-app rolled back\n"
    );
    rolled_out(k).await;
    assert_eq!(
        pod_images(k).await,
        ["my-web-app:latest", "my-web-app:latest"]
    );
    // The undo brought revision 1 back as revision 3, not a copy of it.
    let rs = k.ok(&["get", "replicasets", "--no-headers"]).await;
    assert_eq!(rs.lines().count(), 2, "{rs}");
    let revision = k
        .ok(&[
            "get",
            "deployment",
            "my-web-app",
            "-o",
            "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ])
        .await;
    assert_eq!(revision, "3");

    // What the API does not have is answered as a real server answers it.
    let e = k.fails(&["get", "widgets"]).await;
    assert!(
        e.contains("doesn't have a resource type \"widgets\""),
        "{e}"
    );
    let e = k.fails(&["get", "pods", "-n", "kube-system"]).await;
    assert!(
        e.contains("NotFound") && e.contains("namespace default"),
        "{e}"
    );
    let e = k.fails(&["apply", "--server-side", "-f", s]).await;
    assert!(e.contains("server-side apply is not supported"), "{e}");

    let out = k.ok(&["delete", "-f", d, "-f", s]).await;
    assert_eq!(
        out,
        "deployment.apps \"my-web-app\" deleted\nservice \"my-web-app\" deleted\n"
    );
    let left = k.run(&["get", "all"]).await;
    assert!(
        String::from_utf8_lossy(&left.stderr).contains("No resources found"),
        "{left:?}"
    );
}

#[tokio::test]
async fn kubectl_oldest_and_newest_apply_scale_roll_out_undo_watch_and_delete() {
    let Some((oldest, newest)) = kubectls() else {
        eprintln!("SKIPPED: no kubectl.1.NN beside a kubectl on the PATH");
        return;
    };
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    crate::harness::build_nginx_site(&node, dir.path()).await;
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, ok(&skiff(&node, &["kubeconfig"]).await)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("server: \"https://127.0.0.1:"), "{text}");
    for bin in [oldest, newest.clone()] {
        let home = tempfile::tempdir().unwrap();
        let k = Kubectl {
            bin,
            config: config.clone(),
            home: home.path().to_path_buf(),
        };
        the_walkthrough(&node, &k, dir.path()).await;
        eprintln!("{}: the walkthrough passed", k.bin.display());
    }

    // As the README shows it: the kubeconfig straight from `skiff kubeconfig`. (Not
    // the Cloud SDK's `kubectl` dispatcher: it reads the kubeconfig to pick a version,
    // and a pipe can be read once.)
    let skiff_bin = env!("CARGO_BIN_EXE_skiff");
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "KUBECONFIG=<({skiff_bin} kubeconfig) {} get nodes",
            newest.display()
        ))
        .env("SKIFF_API", &node.api)
        .env("SKIFF_TOKEN", &node.token)
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    let nodes = String::from_utf8_lossy(&out.stdout);
    assert!(
        nodes.starts_with("NAME") && nodes.contains("Ready"),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_api_port_drops_a_stalled_tls_handshake_and_still_serves_both() {
    let node = Node::start_with(&["--header-timeout", "1s"]).await;
    let addr = node.api.trim_start_matches("http://").to_string();
    // A client that opens a TLS handshake and never finishes it.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the node closes a stalled handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Plain HTTP on the same port still answers.
    let r = node.api_get("/api/v1/namespaces/default/pods").await;
    assert_eq!(r.status(), 200);
}

/// The value of `key:` in kubectl's describe output (aligned with tabs and spaces).
fn described<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key:?} in {text}"))
        .trim()
}

/// A pod of Deployment `app` (by its label), and its name.
async fn a_pod(k: &Kubectl, app: &str) -> String {
    let out = k
        .ok(&[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await;
    assert!(out.starts_with(app), "{out}");
    out
}

/// kubectl's own verbs beyond `apply`, as one kubectl runs them: create (1.32 and later
/// send protobuf), describe of what the API server defaults, events, health, endpoints.
async fn the_manners(node: &Node, k: &Kubectl, dir: &Path, name: &str) {
    assert_eq!(
        k.ok(&["create", "deployment", name, "--image=hello:v1"])
            .await,
        format!("deployment.apps/{name} created\n")
    );
    assert_eq!(
        k.ok(&["create", "service", "clusterip", name, "--tcp=80:80"])
            .await,
        format!("service/{name} created\n")
    );
    let status = k
        .ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ])
        .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let (code, body) = node.get(name, "/").await;
    assert_eq!((code, body.as_str()), (200, "manners from skiff\n"));

    // The Service's endpoints: its ready pod, at its node's address (a Wasm pod has
    // none of its own).
    let svc = k.ok(&["describe", "svc", name]).await;
    assert_eq!(described(&svc, "Endpoints"), "127.0.0.1:80", "{svc}");
    assert_eq!(described(&svc, "Type"), "ClusterIP", "{svc}");

    // A Deployment applied without replicas describes (kubectl dereferences them).
    let bare = dir.join(format!("{name}-bare.yaml"));
    std::fs::write(
        &bare,
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}-bare\nspec:\n  selector:\n    matchLabels:\n      app: {name}-bare\n  template:\n    metadata:\n      labels:\n        app: {name}-bare\n    spec:\n      containers:\n      - name: hello\n        image: hello:v1\n"),
    )
    .unwrap();
    k.ok(&["apply", "-f", bare.to_str().unwrap()]).await;
    let deployment = k
        .ok(&["describe", "deployment", &format!("{name}-bare")])
        .await;
    assert!(
        described(&deployment, "Replicas").starts_with("1 desired"),
        "{deployment}"
    );
    assert_eq!(
        described(&deployment, "RollingUpdateStrategy"),
        "25% max unavailable, 25% max surge"
    );

    // Events: sorted by kubectl from whole objects, and for one Deployment.
    let sorted = k.ok(&["get", "events", "--sort-by=.lastTimestamp"]).await;
    assert!(
        sorted.starts_with("LAST SEEN") && sorted.contains(&format!("deployment/{name} ")),
        "{sorted}"
    );
    let mine = k.ok(&["events", "--for", &format!("deploy/{name}")]).await;
    assert!(
        mine.contains(&format!("Deployment/{name}")) && !mine.contains(&format!("{name}-bare")),
        "{mine}"
    );

    // Health, as the API server answers it.
    assert_eq!(k.ok(&["get", "--raw", "/readyz"]).await, "ok");
    let verbose = k.ok(&["get", "--raw", "/livez?verbose"]).await;
    assert!(
        verbose.starts_with("[+]ping ok\n") && verbose.ends_with("livez check passed\n"),
        "{verbose}"
    );

    // kubectl debug reads a pod (its securityContext) and a 404's details: it says
    // what it cannot do rather than crash.
    let pod = a_pod(k, name).await;
    let e = k
        .fails(&["debug", &format!("pod/{pod}"), "--image=busybox"])
        .await;
    assert!(
        e.contains("ephemeral containers are disabled for this cluster") && !e.contains("panic"),
        "{e}"
    );

    // A pod being deleted while it drains a request in flight is Terminating, with
    // its grace period.
    let (http, ingress, host) = (node.http.clone(), node.ingress, format!("{name}.localhost"));
    let in_flight = tokio::spawn(async move {
        let _ = http
            .get(format!("http://{ingress}/sleep?ms=25000"))
            .header("host", host)
            .send()
            .await;
    });
    let series = format!("skiff_service_in_flight{{service=\"{name}\",endpoint=\"{pod}\"}}");
    wait_for("the request in flight", Duration::from_secs(10), || async {
        (crate::harness::metric(&node.metrics().await, &series) == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        k.ok(&["delete", "pod", &pod, "--wait=false"]).await,
        format!("pod \"{pod}\" deleted\n")
    );
    let terminating = k.ok(&["describe", "pod", &pod]).await;
    assert!(
        described(&terminating, "Status").starts_with("Terminating (lasts"),
        "{terminating}"
    );
    assert_eq!(described(&terminating, "Termination Grace Period"), "30s");
    in_flight.abort();

    let out = k
        .ok(&["delete", "deployment", name, &format!("{name}-bare")])
        .await;
    assert!(out.contains(&format!("\"{name}-bare\" deleted")), "{out}");
    k.ok(&["delete", "service", name]).await;
}

#[tokio::test]
async fn kubectl_oldest_and_newest_create_describe_and_read_events_health_and_endpoints() {
    let Some((oldest, newest)) = kubectls() else {
        eprintln!("SKIPPED: no kubectl.1.NN beside a kubectl on the PATH");
        return;
    };
    let node = Node::start().await;
    crate::kube::build_hello(&node, "hello:v1", "manners").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    std::fs::write(&config, ok(&skiff(&node, &["kubeconfig"]).await)).unwrap();
    for bin in [oldest, newest] {
        let home = tempfile::tempdir().unwrap();
        let minor = bin
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("x")
            .to_string();
        let k = Kubectl {
            bin,
            config: config.clone(),
            home: home.path().to_path_buf(),
        };
        the_manners(&node, &k, dir.path(), &format!("manners{minor}")).await;
        eprintln!("{}: the manners passed", k.bin.display());
    }
}
