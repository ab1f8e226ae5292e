//! push/pull against a real OCI registry (Debian's docker-registry) on loopback, checked
//! with another OCI tool (skopeo) both ways.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::harness::{Node, err, hello_wasm, ok, skiff_env, wait_for};

/// A `docker-registry serve` on a free loopback port, stopped on drop.
pub(crate) struct Registry {
    child: Child,
    pub(crate) addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub(crate) async fn start(htpasswd: Option<&str>) -> Registry {
        let bin = which("docker-registry").expect("docker-registry is not installed: ./test installs it (apt-get install docker-registry)");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let auth = match htpasswd {
            Some(line) => {
                std::fs::write(dir.path().join("htpasswd"), line).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("http://{addr}/v2/");
        wait_for(
            "the registry to listen",
            Duration::from_secs(20),
            || async { reqwest::get(&url).await.ok().map(drop) },
        )
        .await;
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

pub(crate) fn skopeo(args: &[&str]) -> String {
    let bin = which("skopeo")
        .expect("skopeo is not installed: ./test installs it (apt-get install skopeo)");
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_through_a_real_registry() {
    let registry = Registry::start(None).await;
    let a = Node::start().await;
    let b = Node::start().await;
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("html")).unwrap();
    std::fs::write(site.path().join("html/index.html"), "pushed site\n").unwrap();
    std::fs::write(
        site.path().join("Dockerfile"),
        "FROM nginx\nCOPY ./html /usr/share/nginx/html\n",
    )
    .unwrap();
    ok(&skiff_env(
        &a,
        &["build", "-t", "site", site.path().to_str().unwrap()],
        &[],
    )
    .await);
    let hello = a.deploy_ok("hello", hello_wasm(), "").await;
    let hello_id = hello["image"].as_str().unwrap().to_string();

    let web_ref = format!("{}/team/site:v1", registry.addr);
    let hello_ref = format!("{}/hello:v1", registry.addr);
    let out = ok(&skiff_env(&a, &["push", "site", &web_ref], &[]).await);
    assert!(
        out.starts_with(&web_ref),
        "quiet output off a terminal: {out}"
    );
    ok(&skiff_env(&a, &["push", "hello", &hello_ref], &[]).await);

    // Another OCI tool reads what skiff pushed: the static image fully, the Wasm
    // artifact's manifest (skopeo refuses image-only operations on artifacts by design).
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{web_ref}"),
    ]))
    .unwrap();
    let site_id = a
        .api_get("/v1/images")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tags"][0] == "site:latest")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        inspect["Digest"],
        site_id.as_str(),
        "the registry's digest is the node's image id"
    );
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{hello_ref}"),
    ]))
    .unwrap();
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(raw["layers"][0]["mediaType"], "application/wasm");

    ok(&skiff_env(&b, &["pull", &web_ref], &[]).await);
    ok(&skiff_env(&b, &["pull", &hello_ref], &[]).await);
    ok(&skiff_env(&b, &["deploy", &web_ref, "--name", "web"], &[]).await);
    ok(&skiff_env(&b, &["deploy", &hello_ref, "--name", "hi"], &[]).await);
    assert_eq!(b.get("web", "/").await, (200, "pushed site\n".to_string()));
    assert_eq!(
        b.get("hi", "/").await,
        (200, "hello from skiff\n".to_string())
    );
    let images: serde_json::Value = b.api_get("/v1/images").await.json().await.unwrap();
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == hello_id.as_str()),
        "same id after the round trip: {images}"
    );

    let e = err(&skiff_env(
        &b,
        &["pull", &format!("{}/nothing:here", registry.addr)],
        &[],
    )
    .await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("404") && e.contains("MANIFEST_UNKNOWN"), "{e}");
    let e = err(&skiff_env(&b, &["pull", "registry.invalid/app:v1"], &[]).await);
    assert!(e.contains("cannot reach registry registry.invalid"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_artifact_pushed_by_another_tool_runs() {
    let registry = Registry::start(None).await;
    let node = Node::start().await;
    // An OCI layout in the CNCF Wasm format, written by hand, copied by skopeo.
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (wasm, wasm_len) = put(&hello_wasm());
    let config = format!(
        r#"{{"created":"2024-01-01T00:00:00Z","architecture":"wasm","os":"wasip2","layerDigests":["{wasm}"]}}"#
    );
    let (config, config_len) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.wasm.config.v0+json","digest":"{config}","size":{config_len}}},"layers":[{{"mediaType":"application/wasm","digest":"{wasm}","size":{wasm_len}}}]}}"#
    );
    let (manifest, manifest_len) = put(manifest.as_bytes());
    std::fs::write(
        layout.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.path().join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":{manifest_len},"annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#
        ),
    )
    .unwrap();
    let target = format!("{}/foreign:v1", registry.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.path().display()),
        &format!("docker://{target}"),
    ]);

    ok(&skiff_env(&node, &["pull", &target], &[]).await);
    ok(&skiff_env(&node, &["run", "-d", "--name", "foreign", &target], &[]).await);
    assert_eq!(
        node.get("foreign", "/").await,
        (200, "hello from skiff\n".to_string())
    );
    let c: serde_json::Value = node
        .api_get("/v1/containers/foreign")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (c["kind"].as_str(), c["image_id"].as_str()),
        (Some("http"), Some(manifest.as_str())),
        "kind detected from the binary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_that_refuse_get_one_line_errors() {
    // 401: a registry with htpasswd auth (user:secret).
    let hash = Command::new("htpasswd")
        .args(["-Bbn", "user", "secret"])
        .output()
        .expect("htpasswd (apache2-utils) is installed by ./test");
    let locked = Registry::start(Some(&String::from_utf8_lossy(&hash.stdout))).await;
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    let target = format!("{}/hello:v1", locked.addr);
    let e = err(&skiff_env(&node, &["push", "hello", &target], &[]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("401") && e.contains("SKIFF_REGISTRY_AUTH"),
        "{e}"
    );
    let e = err(&skiff_env(
        &node,
        &["push", "hello", &target],
        &[("SKIFF_REGISTRY_AUTH", "user:wrong")],
    )
    .await);
    assert!(e.contains("401") && e.contains("refused"), "{e}");
    ok(&skiff_env(
        &node,
        &["push", "hello", &target],
        &[("SKIFF_REGISTRY_AUTH", "user:secret")],
    )
    .await);

    // 500: something that answers every request with an internal error.
    let broken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = broken.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut s, _)) = broken.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}"#;
                let resp = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let e = err(&skiff_env(&node, &["pull", &format!("{addr}/app:v1")], &[]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("500") && e.contains("disk on fire"), "{e}");
    let before = node
        .api_get("/v1/images")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        before.as_array().unwrap().len(),
        1,
        "nothing was added by the failed pull"
    );
}
