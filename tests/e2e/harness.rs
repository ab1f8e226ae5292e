//! Starts real `skiff up` processes on ephemeral loopback ports in temp dirs, and talks to
//! them over real HTTP.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// `skiff up` with every listener on an ephemeral loopback port.
pub const UP: [&str; 7] = [
    "up",
    "--api-addr",
    "127.0.0.1:0",
    "--ingress-addr",
    "127.0.0.1:0",
    "--gossip-addr",
    "127.0.0.1:0",
];

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds the sample apps (once per test process; cargo makes repeat builds no-ops).
fn samples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
        for (pkg, target) in [
            ("hello-http", "wasm32-wasip2"),
            ("wagi-hello", "wasm32-wasip1"),
        ] {
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "--target",
                    target,
                    "-p",
                    pkg,
                ])
                .current_dir(&dir)
                .status()
                .expect("run cargo to build the samples");
            assert!(
                status.success(),
                "building sample {pkg} for {target} failed (is the target installed? run ./test)"
            );
        }
        dir.join("target")
    })
}

/// The wasi:http hello component.
pub fn hello_wasm() -> Vec<u8> {
    std::fs::read(samples().join("wasm32-wasip2/release/hello_http.wasm")).unwrap()
}

/// The WAGI hello module.
pub fn wagi_wasm() -> Vec<u8> {
    std::fs::read(samples().join("wasm32-wasip1/release/wagi-hello.wasm")).unwrap()
}

/// A WAT guest, compiled to binary.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

/// Admin tokens by join token: a node that joined a cluster holds only the token's hash,
/// and is reached with the first node's token, as a user would.
static TOKENS: std::sync::Mutex<BTreeMap<String, String>> = std::sync::Mutex::new(BTreeMap::new());

/// The admin token that works on the node of data dir `dir`.
fn admin_token(dir: &Path) -> String {
    let join = std::fs::read_to_string(dir.join("join-token"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    match std::fs::read_to_string(dir.join("token")) {
        Ok(token) => {
            let token = token.trim().to_string();
            tokens.insert(join, token.clone());
            token
        }
        Err(_) => tokens
            .get(&join)
            .cloned()
            .expect("a joined node's cluster was started by this test binary"),
    }
}

/// A running `skiff up`.
pub struct Node {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub api: String,
    pub ingress: SocketAddr,
    pub token: String,
    pub http: reqwest::Client,
}

impl Node {
    /// A node in a fresh temp dir.
    pub async fn start() -> Node {
        Self::start_with(&[]).await
    }

    /// A node in a fresh temp dir with extra `skiff up` flags.
    pub async fn start_with(extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = Self::start_in(tmp.path(), extra).await;
        node._tmp = Some(tmp);
        node
    }

    /// A node on an existing data dir (restart).
    pub async fn start_in(dir: &Path, extra: &[&str]) -> Node {
        Self::start_customised(dir, extra, |_| {}).await
    }

    /// A node whose command is adjusted by `customise` before it starts.
    pub async fn start_customised(
        dir: &Path,
        extra: &[&str],
        customise: impl FnOnce(&mut Command),
    ) -> Node {
        let mut cmd = Command::new(SKIFF);
        cmd.args(UP)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        customise(&mut cmd);
        let mut child = cmd.spawn().expect("start skiff up");
        let stdout = child.stdout.take().unwrap();
        // `skiff up` prints its addresses once it is serving; read them off stdout, and
        // keep draining it so the node never writes into a closed pipe.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let done = line.trim_start().starts_with("deploy:");
                lines.push(line);
                if done && let Some(tx) = tx.take() {
                    let _ = tx.send(std::mem::take(&mut lines));
                }
            }
        });
        let lines = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("skiff up did not print its addresses in 30 s")
            .expect("skiff up exited before printing its addresses");
        let find = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.trim_start().strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
                .to_string()
        };
        let api = find("API:").split_whitespace().next().unwrap().to_string();
        let ingress_port: u16 = find("ingress:")
            .trim()
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let token = admin_token(dir);
        let node = Node {
            child: Some(child),
            dir: dir.to_path_buf(),
            _tmp: None,
            api,
            ingress: SocketAddr::from(([127, 0, 0, 1], ingress_port)),
            token,
            http: reqwest::Client::new(),
        };
        node.wait_restored().await;
        node
    }

    /// Waits until `/healthz` says the pods a start brings back are back (a node serves
    /// while it restores; tests that restart one expect its apps, as before).
    pub async fn wait_restored(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let body = match self.http.get(format!("{}/healthz", self.api)).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if body.contains("\nrestored: ") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node did not restore its pods in 60 s: {body:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// `PUT /v1/apps/{name}?{query}` with `wasm` as the body.
    pub async fn deploy(&self, name: &str, wasm: Vec<u8>, query: &str) -> reqwest::Response {
        self.http
            .put(format!("{}/v1/apps/{name}?{query}", self.api))
            .bearer_auth(&self.token)
            .body(wasm)
            .send()
            .await
            .unwrap()
    }

    /// Deploys and asserts success; returns the status JSON.
    pub async fn deploy_ok(&self, name: &str, wasm: Vec<u8>, query: &str) -> Value {
        let resp = self.deploy(name, wasm, query).await;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "deploy {name} failed: {status} {body}");
        body
    }

    /// An authenticated API GET.
    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// An authenticated API DELETE; returns the status.
    pub async fn api_delete(&self, path: &str) -> u16 {
        let r = self
            .http
            .delete(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    }

    /// A request to `app` through the ingress (Host: `<app>.localhost`).
    pub fn app(&self, method: reqwest::Method, app: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.ingress))
            .header("host", format!("{app}.localhost:{}", self.ingress.port()))
    }

    /// GET through the ingress; returns (status, body).
    pub async fn get(&self, app: &str, path: &str) -> (u16, String) {
        let r = self
            .app(reqwest::Method::GET, app, path)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Waits (up to 10 s) until one of `app`'s containers is serving a request.
    pub async fn wait_in_flight(&self, app: &str) {
        wait_for("a request in flight", Duration::from_secs(10), || async {
            let v: serde_json::Value = self
                .api_get(&format!("/v1/apps/{app}"))
                .await
                .json()
                .await
                .ok()?;
            v["containers"]
                .as_array()?
                .iter()
                .any(|c| c["in_flight"] == 1)
                .then_some(())
        })
        .await;
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        let r = self.api_get("/metrics").await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Sends SIGTERM (what Ctrl-C does) and waits for a clean exit.
    pub async fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "skiff up exited with {status}");
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A clean stop, so the node takes down what it started (Linux containers
        // outlive a killed node); SIGKILL if it does not stop within 30 s (a container
        // that ignores SIGTERM gets the node's 10 s grace, then SIGKILL from the node).
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A metric's value from the exposition text (first sample whose line starts with
/// `series`), or 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().split(' ').next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Runs the `skiff` CLI against `node`, with extra environment variables.
pub async fn skiff_env(node: &Node, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(SKIFF);
    cmd.args(args)
        .env("SKIFF_API", &node.api)
        .env("SKIFF_TOKEN", &node.token);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

/// Runs the `skiff` CLI against `node`.
pub async fn skiff(node: &Node, args: &[&str]) -> std::process::Output {
    skiff_env(node, args, &[]).await
}

/// Its stdout, asserting it succeeded.
pub fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "skiff failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its stderr, asserting it failed.
pub fn err(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "skiff should have failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    // Below Linux's ephemeral range (32768 and up), so no node binding 127.0.0.1:0 and
    // no outgoing connection of another test takes the port between this check and its
    // use; random, so tests running side by side rarely pick the same one.
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64.. {
        let mut h = random.build_hasher();
        h.write_u64(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    unreachable!("a free port below the ephemeral range")
}

/// An OCI layout tarball holding one image, tagged `tag`, with `config` and tar `layers`.
pub fn image_archive(config: &[u8], layers: &[&[u8]], tag: &str) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
                digest(l),
                l.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        digest(config),
        config.len(),
        layer_descs.join(",")
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        digest(manifest.as_bytes()),
        manifest.len()
    );
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, path, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), index.as_bytes());
    let mut blobs: Vec<&[u8]> = vec![config, manifest.as_bytes()];
    blobs.extend(layers);
    for blob in blobs {
        add(format!("blobs/sha256/{}", &digest(blob)[7..]), blob);
    }
    t.into_inner().unwrap()
}

/// A tar entry: name, type, link target.
pub type RawEntry<'a> = (&'a str, tar::EntryType, &'a str);

/// A tar layer with raw entries, bypassing the tar crate's own path checks. Files hold
/// `x`; directories are mode 0777, everything else 0644.
pub fn raw_layer(entries: &[RawEntry]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, kind, link) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() { 0o777 } else { 0o644 });
        let data: &[u8] = if kind.is_file() { b"x" } else { b"" };
        h.set_size(data.len() as u64);
        h.set_cksum();
        t.append(&h, data).unwrap();
    }
    t.into_inner().unwrap()
}

/// Sends GETs to `app` through `node`'s ingress from `workers` tasks until stopped (or
/// 120 s), counting 2xx, other statuses and connection errors, when each failure was
/// sent, and which body answered.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    pub bad: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    /// When each failed request (a non-2xx status or a connection error) was sent.
    pub failed_at: Arc<Mutex<Vec<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Load {
    pub fn start(node: &Node, app: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, bad, errors): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::default(), Arc::default(), Arc::default());
        let failed_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, bad, errors, failed_at) = (
                    stop.clone(),
                    ok.clone(),
                    bad.clone(),
                    errors.clone(),
                    failed_at.clone(),
                );
                let req = node.app(reqwest::Method::GET, app, "/");
                tokio::spawn(async move {
                    let mut bodies: BTreeMap<String, u64> = BTreeMap::new();
                    // Bounded in time as well as by the flag.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let sent = Instant::now();
                        match req.try_clone().unwrap().send().await {
                            Ok(r) if r.status().is_success() => {
                                let body = r.text().await.unwrap_or_default();
                                ok.fetch_add(1, Ordering::Relaxed);
                                *bodies.entry(body).or_default() += 1;
                            }
                            Ok(r) => {
                                eprintln!(
                                    "non-2xx: {} {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                );
                                bad.fetch_add(1, Ordering::Relaxed);
                                failed_at.lock().unwrap().push(sent);
                            }
                            Err(e) => {
                                eprintln!("connection error: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                                failed_at.lock().unwrap().push(sent);
                            }
                        }
                    }
                    bodies
                })
            })
            .collect();
        Load {
            stop,
            ok,
            bad,
            errors,
            failed_at,
            tasks,
        }
    }

    /// Waits until `n` requests have been answered (well or not).
    pub async fn wait_count(&self, n: u64) {
        wait_for(
            &format!("{n} requests served"),
            Duration::from_secs(60),
            || async {
                (self.ok.load(Ordering::Relaxed) + self.bad.load(Ordering::Relaxed) >= n)
                    .then_some(())
            },
        )
        .await;
    }

    /// Stops: (2xx, other statuses, connection errors, answers by body).
    pub async fn finish(self) -> (u64, u64, u64, BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut bodies = BTreeMap::new();
        for t in self.tasks {
            for (k, v) in t.await.unwrap() {
                *bodies.entry(k).or_insert(0) += v;
            }
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            bodies,
        )
    }
}

/// Builds the nginx example's site (its Dockerfile, unchanged, and one page) in `dir` as
/// image `my-web-app` on `node`.
pub async fn build_nginx_site(node: &Node, dir: &Path) {
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("html")).unwrap();
    std::fs::write(
        site.join("Dockerfile"),
        "FROM nginx:latest\nCOPY ./html /usr/share/nginx/html\nEXPOSE 80\n",
    )
    .unwrap();
    std::fs::write(site.join("html/index.html"), "<h1>my web app</h1>\n").unwrap();
    ok(&skiff(node, &["build", "-t", "my-web-app", site.to_str().unwrap()]).await);
}
