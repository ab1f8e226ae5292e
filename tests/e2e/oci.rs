//! Linux containers run by runc: a busybox image built here from Debian's
//! busybox-static, loaded as a `docker save` and as an OCI layout tarball, run with its own
//! network namespace on the node bridge.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::harness::{Node, err, free_port, hello_wasm, ok, skiff, wait_for};

const BUSYBOX: &str = "/usr/bin/busybox";

/// A GET that gives up after 5 s, so a wait never hangs on one attempt.
async fn get(url: &str) -> Option<reqwest::Response> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .ok()
}

/// A rootfs layer: busybox, its applets, and a web root; plus `extra` raw entries.
pub(crate) fn busybox_layer(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("busybox-static is installed by ./test");
    let mut t = tar::Builder::new(Vec::new());
    let mut file = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        t.append_data(&mut h, path, data).unwrap();
    };
    file("bin/busybox", &busybox, 0o755);
    file(
        "www/index.html",
        b"<h1>busybox httpd in skiff</h1>\n",
        0o644,
    );
    for applet in [
        "sh", "httpd", "echo", "pwd", "dd", "tr", "sleep", "cat", "id", "grep", "unshare", "mount",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        t.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let mut t = t;
    for (path, data) in extra {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(if path.starts_with("bin/") {
            0o755
        } else {
            0o644
        });
        h.set_cksum();
        t.append(&h, *data).unwrap();
    }
    t.into_inner().unwrap()
}

/// `samples/syscall-probe`, built static with the C compiler Rust links with.
fn syscall_probe() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("probe");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/syscall-probe/probe.c");
    let status = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("cc, the C compiler Rust links with, builds the probe");
    assert!(
        status.success(),
        "cc -static failed for {}",
        source.display()
    );
    std::fs::read(out).unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn config(layer: &[u8]) -> Vec<u8> {
    config_for("amd64", layer)
}

fn config_for(arch: &str, layer: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"architecture":"{arch}","os":"linux","config":{{"Env":["PATH=/bin","FOO=bar"],"Cmd":["sh"],"WorkingDir":"/www","ExposedPorts":{{"80/tcp":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
        sha(layer)
    )
    .into_bytes()
}

fn tar_of(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    t.into_inner().unwrap()
}

/// `docker save` format: manifest.json naming a config and a layer tar by path.
pub(crate) fn docker_save(name: &str, layer: &[u8]) -> Vec<u8> {
    docker_save_with(name, layer, config(layer))
}

fn docker_save_with(name: &str, layer: &[u8], config: Vec<u8>) -> Vec<u8> {
    tar_of(&BTreeMap::from([
        (
            "manifest.json".to_string(),
            format!(r#"[{{"Config":"cfg.json","RepoTags":["{name}"],"Layers":["l1/layer.tar"]}}]"#)
                .into_bytes(),
        ),
        ("cfg.json".to_string(), config),
        ("l1/layer.tar".to_string(), layer.to_vec()),
    ]))
}

/// The same image as an OCI layout tarball.
fn oci_layout(name: &str, layer: &[u8]) -> Vec<u8> {
    let config = config(layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        sha(&config),
        config.len(),
        sha(layer),
        layer.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{name}"}}}}]}}"#,
        sha(manifest.as_bytes()),
        manifest.len()
    );
    tar_of(&BTreeMap::from([
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index.into_bytes()),
        (format!("blobs/sha256/{}", sha(&config)), config.clone()),
        (
            format!("blobs/sha256/{}", sha(manifest.as_bytes())),
            manifest.into_bytes(),
        ),
        (format!("blobs/sha256/{}", sha(layer)), layer.to_vec()),
    ]))
}

pub(crate) async fn load(node: &Node, archive: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, archive).unwrap();
    ok(&skiff(node, &["load", "-i", path.to_str().unwrap()]).await);
}

async fn state(node: &Node, name: &str) -> serde_json::Value {
    node.api_get(&format!("/v1/containers/{name}"))
        .await
        .json()
        .await
        .unwrap()
}

async fn exited(node: &Node, name: &str) -> serde_json::Value {
    wait_for(
        &format!("{name} to exit"),
        Duration::from_secs(20),
        || async {
            let s = state(node, name).await;
            (s["state"] == "exited").then_some(s)
        },
    )
    .await
}

/// `skiff run -d --name NAME ARGS...`, waited on until it exits: its inspect output and
/// its logs.
async fn run_to_exit(node: &Node, name: &str, args: &[&str]) -> (serde_json::Value, String) {
    let run = [&["run", "-d", "--name", name][..], args].concat();
    ok(&skiff(node, &run).await);
    let state = exited(node, name).await;
    (state, ok(&skiff(node, &["logs", name]).await))
}

/// What of container `id` is still there (namespace, veth, address lease, iptables
/// rule, mount, cgroup, process, bundle, runc state); `net` is its inspect output while
/// it ran.
fn leftovers(dir: &Path, id: &str, net: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    let sandbox = net["sandbox_key"]
        .as_str()
        .expect("a running container's sandbox_key");
    let ns = sandbox.rsplit('/').next().unwrap();
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    if Path::new(sandbox).exists() || String::from_utf8_lossy(&netns.stdout).contains(ns) {
        found.push("network namespace".into());
    }
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let veth = format!("vh{}", &ns["skiff-".len()..][..10]);
    if String::from_utf8_lossy(&links.stdout).contains(&veth) {
        found.push("veth".into());
    }
    let ip = net["ip_address"]
        .as_str()
        .expect("a running container's ip_address");
    if Path::new("/run/skiff/ips").join(ip).exists() {
        found.push("address lease".into());
    }
    let rules = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&rules.stdout).contains(&format!("{ip}/")) {
        found.push("iptables rule".into());
    }
    let cgroup = format!("skiff/{}", &id[..32]);
    if ["memory", "pids", "cpu", ""]
        .iter()
        .any(|c| Path::new("/sys/fs/cgroup").join(c).join(&cgroup).exists())
    {
        found.push("cgroup".into());
    }
    let in_cgroup = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read_to_string(p.path().join("cgroup")).is_ok_and(|c| c.contains(&cgroup))
    });
    if in_cgroup {
        found.push("process".into());
    }
    let bundle = dir.join("containers").join(&id[..32]);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    if mounts.contains(&*bundle.to_string_lossy()) {
        found.push("mount".into());
    }
    if bundle.exists() {
        found.push("bundle directory".into());
    }
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(dir.join("runc"))
        .arg("list")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&runc.stdout).contains(&id[..32]) {
        found.push("runc state".into());
    }
    found
}

pub(crate) fn need_root_and_runc() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the OCI tests run as root (CI does)"
    );
    assert!(
        Path::new("/usr/sbin/runc").exists() || Path::new("/usr/bin/runc").exists(),
        "runc is installed by ./test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_httpd_serves_on_its_port_and_through_the_ingress_and_leaves_nothing() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("busybox:latest", &busybox_layer(&[]))).await;
    let images = ok(&skiff(&node, &["images"]).await);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("busybox") && l.contains("oci")),
        "{images}"
    );
    let port = free_port();
    let id = ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("{port}:80"),
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "100",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    )
    .await);
    let id = id.trim().to_string();
    // `run` answers before httpd listens; a request sent at once is held until it does
    // (up to the proxy's 10 s), so this one attempt may wait longer than `get` allows.
    let url = format!("http://127.0.0.1:{port}/");
    let first = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .expect("an answer to the first request");
    assert_eq!(
        first.status(),
        200,
        "the first request waits for the container"
    );
    let body = first.text().await.unwrap();
    let net = state(&node, "web").await;
    assert!(
        net["ip_address"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.213.")),
        "inspect shows its bridge address: {net}"
    );
    // The leftovers check sees a running container's parts, so it can see them stay.
    let parts = leftovers(&node.dir, &id, &net);
    for part in [
        "network namespace",
        "veth",
        "address lease",
        "mount",
        "cgroup",
        "process",
    ] {
        assert!(
            parts.iter().any(|p| p == part),
            "{part} not seen in {parts:?}"
        );
    }
    assert_eq!(body, "<h1>busybox httpd in skiff</h1>\n");
    assert_eq!(
        node.get("web", "/").await,
        (200, "<h1>busybox httpd in skiff</h1>\n".to_string())
    );
    let ps = ok(&skiff(&node, &["ps"]).await);
    assert!(
        ps.lines()
            .any(|l| l.ends_with(" web") && l.contains(" oci ") && l.contains("Up ")),
        "{ps}"
    );

    // httpd as pid 1 ignores SIGTERM: stop falls back to SIGKILL after -t, as Docker's.
    ok(&skiff(&node, &["stop", "-t", "1", "web"]).await);
    let s = state(&node, "web").await;
    assert_eq!(
        (s["state"].as_str(), s["exit_code"].as_i64()),
        (Some("exited"), Some(137))
    );
    assert_eq!(
        s["oom_killed"], false,
        "SIGKILL after -t is not an OOM kill"
    );
    assert!(get(&url).await.is_none(), "its port is closed");
    assert_eq!(
        leftovers(&node.dir, &id, &net),
        Vec::<String>::new(),
        "a stopped container keeps nothing"
    );

    ok(&skiff(&node, &["start", "web"]).await);
    wait_for("httpd to answer again", Duration::from_secs(20), || async {
        (get(&url).await?.status() == 200).then_some(())
    })
    .await;
    let net = state(&node, "web").await;
    ok(&skiff(&node, &["rm", "-f", "web"]).await);
    assert_eq!(
        leftovers(&node.dir, &id, &net),
        Vec::<String>::new(),
        "rm leaves nothing behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_settings_logs_exit_codes_and_the_memory_limit() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &oci_layout("bb:v1", &busybox_layer(&[]))).await;

    let (s, logs) = run_to_exit(
        &node,
        "echo",
        &[
            "bb:v1",
            "sh",
            "-c",
            "echo FOO=$FOO; pwd; echo oops >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(s["exit_code"], 3);
    assert!(
        logs.contains("stdout: FOO=bar"),
        "Env from the image: {logs}"
    );
    assert!(
        logs.contains("stdout: /www"),
        "WorkingDir from the image: {logs}"
    );
    assert!(logs.contains("stderr: oops"), "{logs}");
    let ps = ok(&skiff(&node, &["ps", "-a"]).await);
    assert!(
        ps.lines()
            .any(|l| l.ends_with(" echo") && l.contains("Exited (3)")),
        "{ps}"
    );

    // /etc/hostname, /etc/hosts and /etc/resolv.conf, as Docker writes them.
    let (s, logs) = run_to_exit(
        &node,
        "etc",
        &[
            "bb:v1",
            "cat",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
        ],
    )
    .await;
    assert_eq!(s["exit_code"], 0, "{s}");
    assert!(logs.contains("stdout: etc\n"), "hostname: {logs}");
    assert!(logs.contains("127.0.0.1\tlocalhost"), "hosts: {logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("stdout: 10.213.") && l.ends_with("\tetc")),
        "its own address and name in /etc/hosts: {logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("stdout: nameserver ") && !l.contains(" 127.")),
        "a nameserver the container can reach: {logs}"
    );

    // A command the image does not have: Docker's 127, and runc's reason in inspect.
    let (s, _) = run_to_exit(&node, "missing", &["bb:v1", "no-such-cmd"]).await;
    assert_eq!(s["exit_code"], 127, "{s}");
    let reason = s["exit_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no-such-cmd") && reason.contains("not found"),
        "{reason}"
    );

    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "hog",
            "--memory",
            "16m",
            "bb:v1",
            "sh",
            "-c",
            "x=$(dd if=/dev/zero bs=1M count=64 2>/dev/null | tr '\\0' a); echo survived",
        ],
    )
    .await);
    let s = exited(&node, "hog").await;
    assert_eq!(s["exit_code"], 137, "killed by its memory limit");
    assert_eq!(
        s["oom_killed"], true,
        "inspect says the OOM killer did it: {s}"
    );
    let reason = s["exit_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("OOMKilled") && reason.contains(&(16u64 << 20).to_string()),
        "the reason names the limit: {reason}"
    );
    assert!(!ok(&skiff(&node, &["logs", "hog"]).await).contains("survived"));

    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "again",
            "--restart",
            "on-failure",
            "bb:v1",
            "sh",
            "-c",
            "echo started; exit 1",
        ],
    )
    .await);
    wait_for(
        "on-failure to restart it",
        Duration::from_secs(30),
        || async {
            let logs = ok(&skiff(&node, &["logs", "again"]).await);
            (logs.matches("started").count() >= 2).then_some(())
        },
    )
    .await;
    ok(&skiff(&node, &["rm", "-f", "again"]).await);
}

#[tokio::test]
async fn hostile_layers_and_missing_runc_are_one_line_errors() {
    need_root_and_runc();
    let node = Node::start().await;
    load(
        &node,
        &docker_save("evil:latest", &busybox_layer(&[("../../escape", b"x")])),
    )
    .await;
    let e = err(&skiff(&node, &["run", "-d", "--name", "evil", "evil"]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("../../escape"), "{e}");

    // A node that cannot find runc still runs Wasm, and says why it cannot run Linux images.
    let dir = tempfile::tempdir().unwrap();
    let plain = Node::start_customised(dir.path(), &[], |cmd| {
        cmd.env("PATH", "/nonexistent");
    })
    .await;
    load(&plain, &docker_save("busybox:latest", &busybox_layer(&[]))).await;
    let e = err(&skiff(&plain, &["run", "-d", "busybox", "sh"]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("runc"), "{e}");
    plain.deploy_ok("hello", hello_wasm(), "").await;
    assert_eq!(plain.get("hello", "/").await.0, 200);
}

/// Address leases (under /run/skiff/ips) held by process `pid`.
fn leases_of(pid: i32) -> Vec<String> {
    std::fs::read_dir("/run/skiff/ips")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|s| s.split_whitespace().next() == Some(&pid.to_string()))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_and_node_restarts_for_linux_containers() {
    need_root_and_runc();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_in(dir.path(), &[]).await;
    load(&node, &docker_save("busybox:latest", &busybox_layer(&[]))).await;
    // httpd ignores SIGTERM as pid 1; a shell that exits on it keeps clean stops quick.
    let serve = "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";
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
                "busybox",
                "sh",
                "-c",
                serve,
            ],
        )
        .await);
    }
    let answers = |port: u16| async move {
        wait_for("httpd to answer", Duration::from_secs(20), || async move {
            let r = get(&format!("http://127.0.0.1:{port}/")).await?;
            (r.status() == 200).then_some(())
        })
        .await
    };
    for port in [pa, pn, pf] {
        answers(port).await;
    }
    let before: Vec<serde_json::Value> =
        futures_util::future::join_all(["always", "never", "flaky"].map(|n| state(&node, n))).await;

    // kill -9: the containers outlive the node; the next node removes them, their
    // namespaces, veths and leases, and brings back `always` and `on-failure`.
    let old_pid = node.pid();
    node.kill9();
    let node = Node::start_in(dir.path(), &[]).await;
    for (old, name) in before.iter().zip(["always", "never", "flaky"]) {
        let left = leftovers(dir.path(), old["id"].as_str().unwrap(), old);
        // always and flaky run again under the same id: only their old network must go.
        let left: Vec<String> = match name {
            "never" => left,
            _ => left
                .into_iter()
                .filter(|l| ["network namespace", "veth", "address lease"].contains(&l.as_str()))
                .collect(),
        };
        assert_eq!(
            left,
            Vec::<String>::new(),
            "{name}: what the killed node left is gone"
        );
    }
    assert_eq!(
        leases_of(old_pid),
        Vec::<String>::new(),
        "no lease of the dead node is left"
    );
    answers(pa).await;
    answers(pf).await;
    assert!(get(&format!("http://127.0.0.1:{pn}/")).await.is_none());
    let never = state(&node, "never").await;
    assert_eq!(
        (never["state"].as_str(), never["exit_code"].as_i64()),
        (Some("exited"), Some(255)),
        "a crash counts as exit 255"
    );
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(dir.path().join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&runc.stdout).lines().count();
    assert_eq!(
        listed,
        2,
        "only always and flaky run: {}",
        String::from_utf8_lossy(&runc.stdout)
    );

    // A clean stop takes every container and namespace down; `always` comes back.
    let after: Vec<serde_json::Value> =
        futures_util::future::join_all(["always", "flaky"].map(|n| state(&node, n))).await;
    let pid = node.pid();
    node.stop().await;
    for net in &after {
        assert_eq!(
            leftovers(dir.path(), net["id"].as_str().unwrap(), net),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        leases_of(pid),
        Vec::<String>::new(),
        "a stopped node holds no lease"
    );
    let node = Node::start_in(dir.path(), &[]).await;
    answers(pa).await;
    assert!(
        get(&format!("http://127.0.0.1:{pf}/")).await.is_none(),
        "exit 0 is no failure"
    );
    assert_eq!(state(&node, "flaky").await["state"], "exited");
}

/// Runs `image` as busybox httpd on a published port, returns what it serves at `path`
/// (the first request is held until httpd listens), and removes the container.
async fn serve_once(node: &Node, image: &str, path: &str) -> String {
    let port = free_port();
    let publish = format!("{port}:80");
    let args = [
        "run", "-d", "--name", "once", "-p", &publish, image, "httpd", "-f", "-p", "80", "-h",
        "/www",
    ];
    ok(&skiff(node, &args).await);
    let r = get(&format!("http://127.0.0.1:{port}{path}"))
        .await
        .expect("an answer");
    assert_eq!(r.status(), 200, "{image} serves {path}");
    let body = r.text().await.unwrap();
    ok(&skiff(node, &["rm", "-f", "once"]).await);
    body
}

/// An OCI layout directory holding a multi-platform index tagged `tag`: one image per
/// `(architecture, layer media type, uncompressed layer, layer blob)`.
fn multi_platform_layout(dir: &Path, tag: &str, images: &[(&str, &str, Vec<u8>, Vec<u8>)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha(bytes);
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        format!(r#""digest":"sha256:{digest}","size":{}"#, bytes.len())
    };
    let entries: Vec<String> = images
        .iter()
        .map(|(arch, media_type, layer, blob)| {
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json",{}}},"layers":[{{"mediaType":"{media_type}",{}}}]}}"#,
                put(&config_for(arch, layer)),
                put(blob)
            );
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json",{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                put(manifest.as_bytes())
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json",{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
            put(index.as_bytes())
        ),
    )
    .unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_load_take_the_linux_amd64_image_of_a_multi_platform_index() {
    use crate::registry::{Registry, skopeo};
    need_root_and_runc();
    let registry = Registry::start(None).await;
    let node = Node::start().await;
    // arm64 first, so taking the index's first entry would be wrong; its layer is a
    // plain tar, the amd64 one tar+zstd.
    let arm = busybox_layer(&[("www/arch.txt", b"arm64\n")]);
    let amd = busybox_layer(&[("www/arch.txt", b"amd64\n")]);
    let amd_zstd = zstd::encode_all(amd.as_slice(), 3).unwrap();
    let layout = tempfile::tempdir().unwrap();
    multi_platform_layout(
        layout.path(),
        "multi",
        &[
            (
                "arm64",
                "application/vnd.oci.image.layer.v1.tar",
                arm.clone(),
                arm.clone(),
            ),
            (
                "amd64",
                "application/vnd.oci.image.layer.v1.tar+zstd",
                amd,
                amd_zstd,
            ),
        ],
    );
    let multi = format!("{}/bb:multi", registry.addr);
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.path().display()),
        &format!("docker://{multi}"),
    ]);
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{multi}"),
    ]))
    .unwrap();
    assert_eq!(
        raw["manifests"].as_array().map(Vec::len),
        Some(2),
        "the registry holds the index: {raw}"
    );

    ok(&skiff(&node, &["pull", &multi]).await);
    assert_eq!(
        serve_once(&node, &multi, "/arch.txt").await,
        "amd64\n",
        "the linux/amd64 image runs, from its zstd layer"
    );

    // The same layout as a tarball: `load` takes the same image from the index.
    let mut t = tar::Builder::new(Vec::new());
    t.append_dir_all(".", layout.path()).unwrap();
    load(&node, &t.into_inner().unwrap()).await;
    assert_eq!(
        serve_once(&node, "multi", "/arch.txt").await,
        "amd64\n",
        "load took the linux/amd64 image too"
    );

    // An index without this machine's platform is refused in one line naming what it has.
    let arm_only = tempfile::tempdir().unwrap();
    multi_platform_layout(
        arm_only.path(),
        "arm",
        &[(
            "arm64",
            "application/vnd.oci.image.layer.v1.tar",
            arm.clone(),
            arm,
        )],
    );
    let arm_ref = format!("{}/bb:arm", registry.addr);
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:arm", arm_only.path().display()),
        &format!("docker://{arm_ref}"),
    ]);
    let e = err(&skiff(&node, &["pull", &arm_ref]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("no linux/amd64 or wasm variant") && e.contains("linux/arm64"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_of_linux_images_balance_replace_dead_replicas_and_retire_old_ones() {
    need_root_and_runc();
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start_in(tmp.path(), &[]).await;
    // Each replica serves its own hostname (its replica name) at /who.
    let layer = busybox_layer(&[]);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["sh", "-c", "trap 'exit 0' TERM; echo $HOSTNAME > /www/who; httpd -f -p 80 -h /www & wait"],
            "ExposedPorts": {"80/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]}
    });
    load(
        &node,
        &docker_save_with("web:v1", &layer, serde_json::to_vec(&config).unwrap()),
    )
    .await;
    ok(&skiff(
        &node,
        &["deploy", "web:v1", "--name", "web", "--replicas", "2"],
    )
    .await);
    let status = || async {
        node.api_get("/v1/apps/web")
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let first = status().await;
    assert_eq!(
        (first["kind"].as_str(), first["replicas"].as_u64()),
        (Some("oci"), Some(2)),
        "{first}"
    );
    let names: Vec<String> = first["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{first}");

    // The ingress balances over both.
    let seen = wait_for(
        "both replicas to answer",
        Duration::from_secs(20),
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..8 {
                let (code, body) = node.get("web", "/who").await;
                if code == 200 {
                    seen.insert(body.trim().to_string());
                }
            }
            (seen.len() == 2).then_some(seen)
        },
    )
    .await;
    assert_eq!(
        seen,
        names.iter().cloned().collect(),
        "answers come from the replicas"
    );
    let ps = ok(&skiff(&node, &["ps"]).await);
    assert_eq!(
        ps.lines()
            .filter(|l| l.contains(" oci ") && l.contains("web-"))
            .count(),
        2,
        "{ps}"
    );

    // A replica killed behind the node's back is replaced under the same name.
    let runc = |args: &[&str]| {
        let o = std::process::Command::new("runc")
            .arg("--root")
            .arg(tmp.path().join("runc"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let victim = runc(&["list", "-q"]).lines().next().unwrap().to_string();
    runc(&["kill", &victim, "KILL"]);
    wait_for(
        "the dead replica to be replaced",
        Duration::from_secs(30),
        || async {
            let s = status().await;
            let ids: Vec<String> = runc(&["list", "-q"]).lines().map(str::to_string).collect();
            (s["ready"] == 2 && ids.len() == 2 && !ids.contains(&victim)).then_some(())
        },
    )
    .await;
    let mut now: Vec<String> = status().await["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    now.sort();
    let mut was = names.clone();
    was.sort();
    assert_eq!(now, was, "the replacement keeps the replica's name");

    // A redeploy with other settings starts new replicas and retires the old ones
    // (their runc containers and bundles go); removing the app takes the rest.
    ok(&skiff(
        &node,
        &[
            "deploy",
            "web:v1",
            "--name",
            "web",
            "--replicas",
            "1",
            "-e",
            "V=2",
        ],
    )
    .await);
    wait_for(
        "the old replicas to be gone",
        Duration::from_secs(30),
        || async {
            let ids = runc(&["list", "-q"]);
            let bundles = std::fs::read_dir(tmp.path().join("containers"))
                .unwrap()
                .count();
            (ids.lines().count() == 1 && bundles == 1).then_some(())
        },
    )
    .await;
    let (code, body) = node.get("web", "/who").await;
    assert_eq!(code, 200);
    assert!(
        !names.contains(&body.trim().to_string()),
        "served by the new replica: {body}"
    );

    // kill -9: the next node removes the old replicas' runc containers and starts new.
    let before = runc(&["list", "-q"]);
    node.kill9();
    let node = Node::start_in(tmp.path(), &[]).await;
    // (runc makes the container just after the node has started it.)
    let after = wait_for(
        "runc to list the restored replica",
        Duration::from_secs(20),
        || async {
            let ids = runc(&["list", "-q"]);
            (ids.lines().count() == 1).then_some(ids)
        },
    )
    .await;
    assert_ne!(after, before, "a new one, not the killed node's");
    wait_for(
        "the restored app to answer",
        Duration::from_secs(20),
        || async { (node.get("web", "/who").await.0 == 200).then_some(()) },
    )
    .await;

    ok(&skiff(&node, &["rm", "web"]).await);
    wait_for(
        "the app's replicas to be gone",
        Duration::from_secs(30),
        || async {
            let ids = runc(&["list", "-q"]);
            let bundles = std::fs::read_dir(tmp.path().join("containers"))
                .unwrap()
                .count();
            (ids.trim().is_empty() && bundles == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_host_shares_the_nodes_network() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "hostnet",
            "--network",
            "host",
            "bb:v1",
            "httpd",
            "-f",
            "-p",
            &listen,
            "-h",
            "/www",
        ],
    )
    .await);
    // Nothing publishes the port: the container listens in the node's own namespace.
    let body = wait_for(
        "httpd on the host's loopback",
        Duration::from_secs(20),
        || async {
            let r = get(&format!("http://{listen}/")).await?;
            if r.status() == 200 {
                r.text().await.ok()
            } else {
                None
            }
        },
    )
    .await;
    assert_eq!(body, "<h1>busybox httpd in skiff</h1>\n");
    let s = state(&node, "hostnet").await;
    assert_eq!(
        (s["ip_address"].is_null(), s["sandbox_key"].is_null()),
        (true, true),
        "no namespace or bridge address of its own: {s}"
    );
    ok(&skiff(&node, &["rm", "-f", "hostnet"]).await);
    assert!(
        get(&format!("http://{listen}/")).await.is_none(),
        "gone with rm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_user_is_resolved_and_the_process_has_dockers_capabilities_and_seccomp() {
    need_root_and_runc();
    let node = Node::start().await;
    let layer = busybox_layer(&[
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/www:/bin/sh\n",
        ),
        ("etc/group", b"root:x:0:\nweb:x:34:\nlogs:x:50:www\n"),
    ]);
    let with_user = |user: &str| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "User": user},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))]}
        }))
        .unwrap()
    };
    load(&node, &docker_save_with("www:v1", &layer, with_user("www"))).await;
    load(
        &node,
        &docker_save_with("ghost:v1", &layer, with_user("ghost")),
    )
    .await;
    load(&node, &docker_save_with("root:v1", &layer, with_user(""))).await;

    let (_, logs) = run_to_exit(&node, "as-www", &["www:v1", "id"]).await;
    assert!(
        logs.contains("uid=33(www) gid=34(web) groups=34(web),50(logs)"),
        "User www from /etc/passwd, groups from /etc/group: {logs}"
    );

    // Root keeps Docker's default capabilities but CAP_NET_RAW (13, dropped as Podman
    // does): CAP_CHOWN (bit 0), CAP_SETUID (7), CAP_SYS_CHROOT (18), and not
    // CAP_SYS_ADMIN (21).
    let (_, logs) = run_to_exit(
        &node,
        "caps",
        &["root:v1", "sh", "-c", "grep CapEff /proc/self/status"],
    )
    .await;
    let eff = logs
        .split("CapEff:")
        .nth(1)
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no CapEff line: {logs}"));
    for bit in [0, 7, 18] {
        assert!(eff & (1 << bit) != 0, "capability {bit} in {eff:#x}");
    }
    assert_eq!(eff & (1 << 21), 0, "no CAP_SYS_ADMIN in {eff:#x}");
    assert_eq!(eff & (1 << 13), 0, "no CAP_NET_RAW in {eff:#x}");

    // The seccomp filter: no user namespaces, while ordinary forks work.
    let (_, logs) = run_to_exit(
        &node,
        "userns",
        &[
            "root:v1",
            "sh",
            "-c",
            "unshare -U true; echo userns=$?; (echo forked); echo fork=$?",
        ],
    )
    .await;
    assert!(
        logs.contains("Operation not permitted") && logs.contains("userns=1"),
        "{logs}"
    );
    assert!(
        logs.contains("stdout: forked") && logs.contains("fork=0"),
        "{logs}"
    );

    // Docker's allow list, argument filters included, seen from a program's calls; the
    // open-files limit as Docker's (hard: no higher than the node's own).
    let probe = busybox_layer(&[("bin/probe", &syscall_probe())]);
    load(&node, &docker_save("probe:v1", &probe)).await;
    let (_, logs) = run_to_exit(
        &node,
        "probe",
        &["probe:v1", "sh", "-c", "probe; ulimit -n; ulimit -Hn"],
    )
    .await;
    for blocked in [
        "keyctl",
        "add_key",
        "socket_vsock",
        "personality_exec",
        "clone_newns",
        "get_mempolicy",
        "kcmp",
    ] {
        assert!(
            logs.contains(&format!("stdout: {blocked}=Operation not permitted")),
            "{blocked} is blocked: {logs}"
        );
    }
    for allowed in [
        "socket_inet",
        "personality_query",
        "personality_linux",
        "clone",
    ] {
        assert!(
            logs.contains(&format!("stdout: {allowed}=ok")),
            "{allowed} is allowed: {logs}"
        );
    }
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    assert!(
        logs.contains("stdout: 1024\n"),
        "soft RLIMIT_NOFILE: {logs}"
    );
    assert!(
        logs.contains(&format!("stdout: {}\n", own.rlim_max.min(524_288))),
        "hard RLIMIT_NOFILE: {logs}"
    );
    let (_, logs) = run_to_exit(
        &node,
        "mount",
        &[
            "root:v1",
            "sh",
            "-c",
            "mount -t tmpfs none /tmp; echo mount=$?",
        ],
    )
    .await;
    assert!(logs.contains("mount=1"), "{logs}");

    let e = err(&skiff(&node, &["run", "-d", "--name", "ghost", "ghost:v1", "id"]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("user ghost is not in the image's /etc/passwd"),
        "{e}"
    );
}

/// The capability set `set` (`CapEff`, `CapBnd`) a process printed from /proc/self/status.
fn capability_set(logs: &str, set: &str) -> u64 {
    logs.split(&format!("{set}:"))
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .map(|v| u64::from_str_radix(v, 16).unwrap())
        .unwrap_or_else(|| panic!("no {set} line: {logs}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_options_confine_the_process_and_what_cannot_be_honoured_is_refused() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;

    // -u: that uid and gid, holding no capabilities (as Docker's non-root processes)
    // within a bounding set that lacks CAP_NET_RAW (bit 13) by default.
    let (_, logs) = run_to_exit(
        &node,
        "as-1000",
        &[
            "-u",
            "1000:1000",
            "bb:v1",
            "sh",
            "-c",
            "id; grep -E 'Cap(Eff|Bnd)' /proc/self/status",
        ],
    )
    .await;
    assert!(logs.contains("uid=1000 gid=1000"), "{logs}");
    assert_eq!(capability_set(&logs, "CapEff"), 0, "{logs}");
    let bounding = capability_set(&logs, "CapBnd");
    assert_eq!(bounding & (1 << 13), 0, "no CAP_NET_RAW in {bounding:#x}");
    assert!(bounding & 1 != 0, "CAP_CHOWN in {bounding:#x}");

    // --read-only: the root refuses writes, a --tmpfs takes them up to its size;
    // --cap-drop ALL leaves even root with nothing.
    let (state, logs) = run_to_exit(
        &node,
        "read-only",
        &[
            "--read-only",
            "--tmpfs",
            "/tmp:size=1m",
            "--cap-drop",
            "ALL",
            "bb:v1",
            "sh",
            "-c",
            "echo x > /x; echo root=$?; echo kept > /tmp/y && cat /tmp/y; \
             dd if=/dev/zero of=/tmp/big bs=1k count=2048; echo big=$?; \
             grep -E 'Cap(Eff|Bnd)' /proc/self/status",
        ],
    )
    .await;
    assert_eq!(state["exit_code"], 0, "{logs}");
    assert!(
        logs.contains("Read-only file system") && logs.contains("root=1"),
        "{logs}"
    );
    assert!(
        logs.contains("stdout: kept"),
        "the tmpfs is writable: {logs}"
    );
    assert!(logs.contains("big=1"), "the tmpfs holds 1m: {logs}");
    assert_eq!(capability_set(&logs, "CapEff"), 0, "{logs}");
    assert_eq!(capability_set(&logs, "CapBnd"), 0, "{logs}");

    // --privileged at the Docker API: a 400 naming it, before anything is made.
    let refused = node
        .http
        .post(format!("{}/v1.45/containers/create?name=priv", node.api))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({"Image": "bb:v1", "Cmd": ["id"], "HostConfig": {"Privileged": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--privileged is not supported by skiff (HostConfig.Privileged)"),
        "{body}"
    );

    // A pod's securityContext: the restricted profile runs as written; runAsNonRoot on
    // an image that runs as root waits with the kubelet's reason; privileged is refused
    // at apply.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("pods.yaml");
    let deployment = |name: &str, pod: &str, container: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      securityContext: {pod}\n      containers:\n      - name: c\n        image: bb:v1\n        command: [sh, -c, \"trap 'exit 0' TERM; id; echo x > /x; grep CapBnd /proc/self/status; sleep 600 & wait\"]\n        securityContext: {container}\n"
        )
    };
    std::fs::write(
        &manifest,
        [
            deployment(
                "confined",
                "{runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}",
                "{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}",
            ),
            deployment("rootful", "{runAsNonRoot: true}", "{}"),
        ]
        .join("---\n"),
    )
    .unwrap();
    ok(&skiff(&node, &["apply", "-f", manifest.to_str().unwrap()]).await);
    let logs = wait_for(
        "the confined pod's output",
        Duration::from_secs(30),
        || async {
            let logs = ok(&skiff(&node, &["logs", "confined"]).await);
            logs.contains("CapBnd").then_some(logs)
        },
    )
    .await;
    assert!(logs.contains("uid=1000 gid=1000"), "{logs}");
    assert!(logs.contains("Read-only file system"), "{logs}");
    assert_eq!(capability_set(&logs, "CapBnd"), 0, "{logs}");
    let table = wait_for(
        "the rootful pod to wait for its configuration",
        Duration::from_secs(30),
        || async {
            let table = ok(&skiff(&node, &["get", "pods"]).await);
            table
                .contains("CreateContainerConfigError")
                .then_some(table)
        },
    )
    .await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("rootful-") && l.contains("CreateContainerConfigError")),
        "{table}"
    );
    let described = ok(&skiff(&node, &["describe", "deployment", "rootful"]).await);
    assert!(
        described.contains("container has runAsNonRoot and image will run as root"),
        "{described}"
    );
    let privileged = dir.path().join("privileged.yaml");
    std::fs::write(&privileged, deployment("priv", "{}", "{privileged: true}")).unwrap();
    let e = err(&skiff(&node, &["apply", "-f", privileged.to_str().unwrap()]).await);
    assert!(
        e.contains("spec.template.spec.containers[0].securityContext.privileged: Forbidden"),
        "{e}"
    );
    ok(&skiff(&node, &["delete", "-f", manifest.to_str().unwrap()]).await);
    runc_containers_gone(&node).await;
}

#[tokio::test]
async fn a_deployment_of_a_linux_image_is_ready_once_its_port_answers() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("busybox:latest", &busybox_layer(&[]))).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bb}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: bb}}\n  template:\n    metadata: {labels: {app: bb}}\n    spec:\n      containers:\n      - name: httpd\n        image: busybox:latest\n        command: [httpd, -f, -p, \"8080\", -h, /www]\n        ports: [{containerPort: 8080}]\n        resources: {limits: {memory: 64Mi, cpu: 500m}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bb}\nspec:\n  selector: {app: bb}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    ok(&skiff(&node, &["apply", "-f", manifest.to_str().unwrap()]).await);
    ok(&skiff(
        &node,
        &["rollout", "status", "deployment/bb", "--timeout", "60s"],
    )
    .await);
    let pods: serde_json::Value =
        serde_json::from_str(&ok(&skiff(&node, &["get", "pods", "-o", "json"]).await)).unwrap();
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{pods}");
    for p in items {
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true, "{p}");
        let ip = p["status"]["podIP"].as_str().unwrap_or_default();
        assert!(ip.starts_with("10.213."), "a pod has its own address: {p}");
    }
    let wide = ok(&skiff(&node, &["get", "pods", "-o", "wide"]).await);
    assert!(wide.contains("10.213."), "{wide}");
    for _ in 0..4 {
        assert_eq!(
            node.get("bb", "/").await,
            (200, "<h1>busybox httpd in skiff</h1>\n".to_string())
        );
    }
    ok(&skiff(&node, &["delete", "-f", manifest.to_str().unwrap()]).await);
    runc_containers_gone(&node).await;
}

/// Waits until runc lists no container of `node` (its pods were deleted).
async fn runc_containers_gone(node: &Node) {
    wait_for(
        "the pods' runc containers to go",
        Duration::from_secs(30),
        || async {
            let listed = std::process::Command::new("runc")
                .arg("--root")
                .arg(node.dir.join("runc"))
                .args(["list", "-q"])
                .output()
                .unwrap();
            listed.stdout.is_empty().then_some(())
        },
    )
    .await;
}

/// Entries of a tar archive, rewritten by `edit` (name, header) on the way.
fn rewrite_tar(archive: &[u8], edit: impl Fn(&str, &mut tar::Header)) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut input = tar::Archive::new(archive);
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        edit(&name, &mut header);
        header.set_cksum();
        out.append(&header, data.as_slice()).unwrap();
    }
    out.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_legacy_docker_archives_load_and_a_link_outside_is_refused() {
    need_root_and_runc();
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(&[]);

    // skopeo (as podman save) writes `<id>/layer.tar` as a link to `../<digest>.tar`.
    let oci = dir.path().join("oci.tar");
    std::fs::write(&oci, oci_layout("src:v1", &layer)).unwrap();
    let converted = dir.path().join("skopeo.tar");
    let status = std::process::Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!(
            "docker-archive:{}:fromskopeo:v1",
            converted.display()
        ))
        .status()
        .expect("skopeo is installed by ./test");
    assert!(status.success(), "skopeo copy failed");
    let skopeo = std::fs::read(&converted).unwrap();
    let mut has_link = false;
    for e in tar::Archive::new(skopeo.as_slice()).entries().unwrap() {
        has_link |= e.unwrap().header().entry_type().is_symlink();
    }
    assert!(has_link, "skopeo's archive holds a layer link");
    ok(&skiff(&node, &["load", "-i", converted.to_str().unwrap()]).await);
    let out = skiff(
        &node,
        &["run", "--rm", "fromskopeo:v1", "cat", "/www/index.html"],
    )
    .await;
    assert_eq!(ok(&out), "<h1>busybox httpd in skiff</h1>\n");

    // Docker before 25: `<id>/layer.tar` files, `<id>/json`, `<id>/VERSION`, `repositories`.
    let config = config(&layer);
    let id = sha(b"legacy layer id");
    let legacy = tar_of(&BTreeMap::from([
        (
            "manifest.json".to_string(),
            format!(
                r#"[{{"Config":"{}.json","RepoTags":["legacy:v1"],"Layers":["{id}/layer.tar"]}}]"#,
                sha(&config)
            )
            .into_bytes(),
        ),
        (format!("{}.json", sha(&config)), config.clone()),
        (format!("{id}/layer.tar"), layer.clone()),
        (
            format!("{id}/json"),
            format!(r#"{{"id":"{id}"}}"#).into_bytes(),
        ),
        (format!("{id}/VERSION"), b"1.0".to_vec()),
        (
            "repositories".to_string(),
            format!(r#"{{"legacy":{{"v1":"{id}"}}}}"#).into_bytes(),
        ),
    ]));
    load(&node, &legacy).await;
    let out = skiff(&node, &["run", "--rm", "legacy:v1", "echo", "legacy runs"]).await;
    assert_eq!(ok(&out), "legacy runs\n");

    // The same archive with its link pointing outside: refused, nothing written.
    let blobs = || {
        std::fs::read_dir(node.dir.join("images/blobs/sha256"))
            .unwrap()
            .count()
    };
    let images = ok(&skiff(&node, &["images"]).await);
    let before = blobs();
    let hostile = rewrite_tar(&skopeo, |_, h| {
        if h.entry_type().is_symlink() {
            h.set_link_name("../../../../etc/passwd").unwrap();
        }
    });
    let path = dir.path().join("hostile.tar");
    std::fs::write(&path, hostile).unwrap();
    let e = err(&skiff(&node, &["load", "-i", path.to_str().unwrap()]).await);
    assert!(
        e.contains("layer.tar") && e.contains("outside the archive"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert_eq!(blobs(), before, "no blob was kept");
    assert_eq!(ok(&skiff(&node, &["images"]).await), images);
}

/// The exit code, stdout and stderr of a finished CLI run.
pub(crate) fn outcome(o: &std::process::Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_run_rm_wait_logs_follow_ctrl_c_and_exec() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;

    // Attached: the output in order, the container's exit code (non-zero and zero).
    let (code, out, errs) = outcome(
        &skiff(
            &node,
            &[
                "run",
                "--name",
                "lines",
                "bb:v1",
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do echo line$i; done; echo oops >&2; exit 3",
            ],
        )
        .await,
    );
    assert_eq!(code, Some(3), "{errs}");
    assert_eq!(
        out,
        "line1\nline2\nline3\nline4\nline5\nline6\nline7\nline8\n"
    );
    assert_eq!(errs, "oops\n");
    let (code, out, _) = outcome(
        &skiff(
            &node,
            &["run", "--rm", "--name", "gone", "bb:v1", "echo", "bye"],
        )
        .await,
    );
    assert_eq!((code, out.as_str()), (Some(0), "bye\n"));
    let ps = ok(&skiff(&node, &["ps", "-a"]).await);
    assert!(!ps.contains("gone"), "--rm removed it: {ps}");
    assert!(ps.contains("Exited (3)") && ps.contains("lines"), "{ps}");

    // Detached with --rm: `wait` gives the code, then it is gone.
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--rm",
            "--name",
            "brief",
            "bb:v1",
            "sh",
            "-c",
            "sleep 1; exit 4",
        ],
    )
    .await);
    assert_eq!(ok(&skiff(&node, &["wait", "brief"]).await), "4\n");
    wait_for("brief to be removed", Duration::from_secs(10), || async {
        (!ok(&skiff(&node, &["ps", "-a"]).await).contains("brief")).then_some(())
    })
    .await;
    let e = err(&skiff(
        &node,
        &["run", "--rm", "--restart", "always", "bb:v1", "true"],
    )
    .await);
    assert!(e.contains("--restart and --rm"), "{e}");

    // `logs -f` ends when the container exits, and at once for one that has.
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "follow",
            "bb:v1",
            "sh",
            "-c",
            "echo first; sleep 1; echo last",
        ],
    )
    .await);
    let logs = tokio::time::timeout(
        Duration::from_secs(30),
        skiff(&node, &["logs", "-f", "follow"]),
    )
    .await
    .expect("logs -f ends when the container exits");
    let logs = ok(&logs);
    assert!(
        logs.contains("stdout: first") && logs.contains("stdout: last"),
        "{logs}"
    );
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        skiff(&node, &["logs", "-f", "follow"]),
    )
    .await
    .expect("logs -f of an exited container ends");
    assert_eq!(ok(&again), logs);

    // Ctrl-C to an attached run stops the container (SIGTERM to it); the CLI returns its code.
    let mut child = tokio::process::Command::new(crate::harness::SKIFF)
        .args([
            "run",
            "--name",
            "interrupted",
            "bb:v1",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 5' TERM; echo started; while true; do sleep 0.1; done",
        ])
        .env("SKIFF_API", &node.api)
        .env("SKIFF_TOKEN", &node.token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first),
    )
    .await
    .expect("the container's first line arrives")
    .unwrap();
    assert_eq!(first, "started\n");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut rest)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the CLI returns once the container stopped")
        .unwrap();
    assert_eq!(status.code(), Some(5), "{rest}");
    assert_eq!(rest, "got TERM\n");

    // exec: in the container's UTS, mount and pid namespaces, with its exit code.
    ok(&skiff(
        &node,
        &["run", "-d", "--name", "box", "bb:v1", "sleep", "1000"],
    )
    .await);
    let exec = |args: &'static [&'static str]| {
        let node = &node;
        async move { outcome(&skiff(node, &[&["exec"][..], args].concat()).await) }
    };
    assert_eq!(
        exec(&["box", "cat", "/proc/sys/kernel/hostname"]).await.1,
        "box\n"
    );
    assert_eq!(
        exec(&["box", "cat", "/www/index.html"]).await.1,
        "<h1>busybox httpd in skiff</h1>\n"
    );
    assert_eq!(
        exec(&["box", "cat", "/proc/1/cmdline"]).await.1,
        "sleep\x001000\x00"
    );
    let (code, out, errs) = exec(&[
        "-e",
        "GREETING=hi",
        "-w",
        "/www",
        "box",
        "sh",
        "-c",
        "echo $GREETING; pwd; echo bad >&2; exit 7",
    ])
    .await;
    assert_eq!(
        (code, out.as_str(), errs.as_str()),
        (Some(7), "hi\n/www\n", "bad\n")
    );
    let (code, _, errs) = exec(&["box", "no-such-command"]).await;
    assert_eq!(code, Some(127), "{errs}");
    assert!(errs.contains("executable file not found"), "{errs}");
    // A client that goes away takes its command with it.
    let mut resp = node
        .http
        .post(format!("{}/v1/containers/box/exec", node.api))
        .bearer_auth(&node.token)
        .json(&serde_json::json!({"cmd": ["sh", "-c", "echo started; exec sleep 999"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"\x01\0\0\0\0\0\0\x08started\n");
    drop(resp);
    const PROCESSES: &str = "for p in /proc/[0-9]*; do cat $p/cmdline; echo; done";
    // Each look is a `runc exec` of its own, which takes seconds when the whole suite
    // loads the machine: the deadline allows a few.
    wait_for(
        "the abandoned command to be killed",
        Duration::from_secs(30),
        || async {
            let (_, out, _) = exec(&["box", "sh", "-c", PROCESSES]).await;
            (!out.contains("sleep\x00999")).then_some(())
        },
    )
    .await;
    ok(&skiff(&node, &["stop", "-t", "0", "box"]).await);
    let (code, _, errs) = exec(&["box", "true"]).await;
    assert_ne!(code, Some(0));
    assert!(errs.contains("is not running"), "{errs}");

    // A Wasm container has no processes: one line saying so.
    node.deploy_ok("hello", hello_wasm(), "").await;
    ok(&skiff(&node, &["run", "-d", "--name", "wasm", "hello"]).await);
    let (code, _, errs) = exec(&["wasm", "ls"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(errs.lines().count(), 1, "{errs}");
    assert!(
        errs.contains("exec is not supported") && errs.contains("WebAssembly"),
        "{errs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_cpu_memory_processes_and_requests() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;
    // A Linux container that keeps one CPU busy with two processes, under a limit.
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "spin",
            "--memory",
            "64m",
            "bb:v1",
            "sh",
            "-c",
            "while true; do :; done",
        ],
    )
    .await);
    node.deploy_ok("hello", hello_wasm(), "").await;
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "wasm",
            "--memory",
            "16m",
            "--concurrency",
            "4",
            "hello",
        ],
    )
    .await);
    for _ in 0..5 {
        let (status, _) = node.get("wasm", "/").await;
        assert_eq!(status, 200);
    }
    let stats = |name: &'static str| {
        let node = &node;
        async move {
            let all: serde_json::Value = node.api_get("/v1/stats").await.json().await.unwrap();
            all.as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} in {all}"))
        }
    };
    let spin = wait_for(
        "the busy container to use CPU",
        Duration::from_secs(20),
        || async {
            let s = stats("spin").await;
            (s["cpu_ns"].as_u64().unwrap() > 100_000_000).then_some(s)
        },
    )
    .await;
    assert_eq!(spin["memory_limit"], 64 << 20, "{spin}");
    assert!(spin["memory"].as_u64().unwrap() > 0, "{spin}");
    assert!(spin["pids"].as_u64().unwrap() >= 1, "{spin}");
    assert!(spin["net"].is_array(), "its veth: {spin}");
    assert!(spin["requests"].is_null(), "{spin}");

    let wasm = stats("wasm").await;
    assert_eq!(wasm["requests"], 5, "{wasm}");
    assert!(
        wasm["cpu_ns"].as_u64().unwrap() > 0,
        "instances ran: {wasm}"
    );
    assert_eq!(
        wasm["memory"], 0,
        "no instance is live between requests: {wasm}"
    );
    assert_eq!(wasm["memory_limit"], 4 * (16 << 20), "{wasm}");

    // The table: the busy container near one CPU, the Wasm one with its requests.
    let table = ok(&skiff(&node, &["stats", "--no-stream", "spin", "wasm"]).await);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in {table}"))
            .to_string()
    };
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    let cpu: f64 = row("spin")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(cpu > 20.0, "a busy loop shows CPU: {table}");
    assert!(row("spin").contains("/ 64.00MiB"), "{table}");
    assert!(row("wasm").trim_end().ends_with(" 5"), "{table}");
    let e = err(&skiff(&node, &["stats", "--no-stream", "nothing-here"]).await);
    assert!(e.contains("no such running container: nothing-here"), "{e}");
    // (Its shell ignores SIGTERM as pid 1: removed at once rather than after the grace.)
    ok(&skiff(&node, &["rm", "-f", "spin"]).await);
}
