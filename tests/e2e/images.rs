//! Images: build, list, tag, rmi, save/load, and static sites built from the nginx example.

use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{Node, RawEntry, err, hello_wasm, image_archive, ok, raw_layer, skiff};

/// The classic nginx example: a Dockerfile and an html folder.
fn nginx_example(dir: &Path) {
    std::fs::create_dir_all(dir.join("html/docs")).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM nginx:latest\nCOPY ./html /usr/share/nginx/html\nEXPOSE 80\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("html/index.html"),
        "<h1>Hello from the nginx example</h1>\n",
    )
    .unwrap();
    std::fs::write(dir.join("html/docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(dir.join("html/404.html"), "<h1>not here</h1>\n").unwrap();
    std::fs::write(dir.join("html/app.js"), "console.log('plain')\n").unwrap();
    std::fs::write(dir.join("html/app.js.gz"), b"\x1f\x8b-pretend-gzip").unwrap();
    std::fs::write(dir.join("html/big.txt"), "0123456789".repeat(1000)).unwrap();
}

async fn raw_get(node: &Node, path: &str) -> String {
    let mut sock = tokio::net::TcpStream::connect(node.ingress).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_nginx_example_builds_and_serves_like_nginx() {
    let node = Node::start().await;
    let ctx = tempfile::tempdir().unwrap();
    nginx_example(ctx.path());
    let out = ok(&skiff(
        &node,
        &["build", "-t", "my-web-app", ctx.path().to_str().unwrap()],
    )
    .await);
    assert!(out.contains("my-web-app:latest (static)"), "{out}");
    let again = ok(&skiff(
        &node,
        &["build", "-t", "my-web-app:v2", ctx.path().to_str().unwrap()],
    )
    .await);
    assert_eq!(
        out.split(' ').next(),
        again.split(' ').next(),
        "reproducible: same digest"
    );

    let table = ok(&skiff(&node, &["images"]).await);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("my-web-app") && l.contains(" latest ") && l.contains("static")),
        "{table}"
    );

    ok(&skiff(&node, &["deploy", "my-web-app", "--name", "web"]).await);
    let (s, body) = node.get("web", "/").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "<h1>Hello from the nginx example</h1>\n")
    );

    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| {
        c.get(format!("http://{}{path}", node.ingress))
            .header("host", "web.localhost")
    };
    let r = get("/docs").send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/docs/");
    let r = get("/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.text().await.unwrap(), "<h1>not here</h1>\n");
    let r = get("/index.html").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/html");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = r.headers()["last-modified"].to_str().unwrap().to_string();
    assert_eq!(
        get("/index.html")
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap()
            .status(),
        304
    );
    assert_eq!(
        get("/index.html")
            .header("if-modified-since", &last_modified)
            .send()
            .await
            .unwrap()
            .status(),
        304
    );
    let r = get("/big.txt")
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/10000");
    assert_eq!(r.text().await.unwrap(), "0123456789");
    assert_eq!(
        get("/big.txt")
            .header("range", "bytes=20000-")
            .send()
            .await
            .unwrap()
            .status(),
        416
    );
    let r = c
        .head(format!("http://{}/big.txt", node.ingress))
        .header("host", "web.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["content-length"].to_str().unwrap()
        ),
        (200, "10000")
    );
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let r = c
        .post(format!("http://{}/", node.ingress))
        .header("host", "web.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = get("/app.js")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["content-type"], "text/javascript");

    // Nothing outside the site root, however the path is spelled.
    for evil in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/index.html%00.js",
        "/docs/../../Dockerfile",
    ] {
        let raw = raw_get(&node, evil).await;
        let status: u16 = raw[9..12].parse().unwrap();
        assert!(status == 400 || status == 404, "{evil}: {raw}");
        assert!(
            !raw.contains("root:") && !raw.contains("FROM nginx"),
            "{evil} leaked: {raw}"
        );
    }
}

#[tokio::test]
async fn save_load_tag_and_rmi() {
    let a = Node::start().await;
    let b = Node::start().await;
    let ctx = tempfile::tempdir().unwrap();
    nginx_example(ctx.path());
    ok(&skiff(
        &a,
        &["build", "-t", "site:v1", ctx.path().to_str().unwrap()],
    )
    .await);
    a.deploy_ok("hello", hello_wasm(), "").await;
    let tar = ctx.path().join("images.tar");
    ok(&skiff(
        &a,
        &["save", "-o", tar.to_str().unwrap(), "site:v1", "hello"],
    )
    .await);
    let loaded = ok(&skiff(&b, &["load", "-i", tar.to_str().unwrap()]).await);
    assert!(
        loaded.contains("Loaded image: site:v1") && loaded.contains("Loaded image: hello:latest"),
        "{loaded}"
    );
    let list_a: Value = a.api_get("/v1/images").await.json().await.unwrap();
    let list_b: Value = b.api_get("/v1/images").await.json().await.unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&list_a), ids(&list_b), "same ids on both nodes");
    ok(&skiff(&b, &["deploy", "hello"]).await);
    ok(&skiff(&b, &["deploy", "site:v1", "--name", "site"]).await);
    assert_eq!(b.get("hello", "/").await.0, 200);
    assert_eq!(b.get("site", "/").await.0, 200);

    ok(&skiff(&b, &["tag", "site:v1", "site:stable"]).await);
    ok(&skiff(&b, &["rmi", "site:v1"]).await);
    let e = err(&skiff(&b, &["rmi", "site:stable"]).await);
    assert!(e.contains("used by app site"), "{e}");
    ok(&skiff(&b, &["rm", "site"]).await);
    ok(&skiff(&b, &["rmi", "site:stable"]).await);
    let e = err(&skiff(&b, &["rmi", "site:stable"]).await);
    assert!(e.contains("not found"), "{e}");
    let e = err(&skiff(&b, &["deploy", "site:v1", "--name", "again"]).await);
    assert!(e.contains("not found"), "{e}");
}

#[tokio::test]
async fn bad_builds_and_archives_are_one_line_errors() {
    let node = Node::start().await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM nginx\nRUN rm -rf /\n").unwrap();
    let e = err(&skiff(&node, &["build", "-t", "bad", ctx.path().to_str().unwrap()]).await);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("Dockerfile:2: RUN is not supported"), "{e}");

    let junk = ctx.path().join("junk.tar");
    std::fs::write(&junk, b"definitely not a tarball").unwrap();
    let e = err(&skiff(&node, &["load", "-i", junk.to_str().unwrap()]).await);
    assert_eq!(e.lines().count(), 1, "{e}");

    // A blob whose bytes do not match its name.
    let mut t = tar::Builder::new(Vec::new());
    let name = format!("blobs/sha256/{}", "b".repeat(64));
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    t.append_data(&mut h, &name, &b"wrong"[..]).unwrap();
    std::fs::write(&junk, t.into_inner().unwrap()).unwrap();
    let e = err(&skiff(&node, &["load", "-i", junk.to_str().unwrap()]).await);
    assert!(e.contains("does not match its digest"), "{e}");
    assert_eq!(
        std::fs::read_dir(node.dir.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "nothing partial was kept"
    );
}

#[tokio::test]
async fn skiff_toml_builds_with_env_limits_and_routes() {
    let node = Node::start().await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello.wasm"), hello_wasm()).unwrap();
    std::fs::write(
        ctx.path().join("skiff.toml"),
        "version = 1\nkind = \"wasm\"\nwasm = \"hello.wasm\"\nroutes = [\"/\", \"/env\", \"/api/...\"]\n[env]\nGREETING = \"built\"\n[limits]\nmemory = \"48MiB\"\ntimeout = \"3s\"\n",
    )
    .unwrap();
    ok(&skiff(
        &node,
        &["build", "-t", "toml-app:v1", ctx.path().to_str().unwrap()],
    )
    .await);
    ok(&skiff(&node, &["deploy", "toml-app:v1", "--name", "t"]).await);
    assert_eq!(
        node.get("t", "/").await,
        (200, "built from skiff\n".to_string()),
        "env from the image"
    );
    let (s, env) = node.get("t", "/env").await;
    assert!(s == 200 && env.contains("GREETING=built"), "{env}");
    let (s, text) = node.get("t", "/headers").await;
    assert_eq!(s, 404, "outside the image's routes: {text}");
    assert!(text.contains("no route"), "{text}");
    assert_eq!(
        node.get("t", "/api/anything").await.0,
        404,
        "the app's own 404 inside its routes"
    );
    let status: Value = node.api_get("/v1/apps/t").await.json().await.unwrap();
    assert_eq!(
        status["limits"]["memory_bytes"],
        48 << 20,
        "limits from the image"
    );
    assert_eq!(status["limits"]["timeout_ms"], 3000);
    // Deploy parameters win over the image's.
    ok(&skiff(
        &node,
        &[
            "deploy",
            "toml-app:v1",
            "--name",
            "t",
            "--env",
            "GREETING=override",
        ],
    )
    .await);
    assert_eq!(
        node.get("t", "/").await,
        (200, "override from skiff\n".to_string())
    );
}

/// An OCI layout tarball holding one static-site image (`/site`) whose layer is `layer`.
fn site_archive(layer: &[u8]) -> Vec<u8> {
    image_archive(
        br#"{"created":"1970-01-01T00:00:00Z","architecture":"wasm","os":"static","dev.skiff.siteRoot":"/site"}"#,
        &[layer],
        "hostile:latest",
    )
}

#[tokio::test]
async fn hostile_layers_are_refused_naming_the_entry() {
    use tar::EntryType::*;
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[RawEntry], &str)] = &[
        (
            &[
                ("site/index.html", Regular, ""),
                ("../../escape", Regular, ""),
            ],
            "../../escape",
        ),
        (&[("/etc/cron.d/evil", Regular, "")], "/etc/cron.d/evil"),
        (
            &[("site/passwd", Symlink, "../../../etc/passwd")],
            "site/passwd",
        ),
        (&[("site/hard", Link, "../../etc/shadow")], "site/hard"),
    ];
    for (i, (entries, entry)) in cases.iter().enumerate() {
        let tar = dir.path().join(format!("hostile{i}.tar"));
        std::fs::write(&tar, site_archive(&raw_layer(entries))).unwrap();
        ok(&skiff(&node, &["load", "-i", tar.to_str().unwrap()]).await);
        let e = err(&skiff(&node, &["run", "-d", "--name", &format!("h{i}"), "hostile"]).await);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains(entry), "the error names {entry:?}: {e}");
        let sites = node.dir.join("sites");
        let extracted = std::fs::read_dir(&sites).map(|d| d.count()).unwrap_or(0);
        assert_eq!(
            extracted,
            0,
            "no partial site was left in {}",
            sites.display()
        );
        assert!(!node.dir.join("escape").exists() && !dir.path().join("escape").exists());
        ok(&skiff(&node, &["rmi", "hostile"]).await);
    }
}

#[tokio::test]
async fn scratch_dockerfiles_build_wasm_images_with_their_settings() {
    let node = Node::start().await;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("app.wasm"), crate::harness::wagi_wasm()).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nENV GREETING=docker\nCOPY app.wasm /app.wasm\nENTRYPOINT [\"/app.wasm\", \"--verbose\"]\nCMD [\"serve\"]\nLABEL team=web\nEXPOSE 8080\n",
    )
    .unwrap();
    let out = ok(&skiff(
        &node,
        &["build", "-t", "cgi-app", ctx.path().to_str().unwrap()],
    )
    .await);
    assert!(
        out.contains("(wagi)"),
        "kind detected from the binary: {out}"
    );
    ok(&skiff(&node, &["run", "-d", "--name", "cgi", "cgi-app"]).await);
    let (s, body) = node.get("cgi", "/?a=1").await;
    assert_eq!(s, 200);
    assert!(
        body.contains("args=--verbose,serve,a=1"),
        "ENTRYPOINT args, CMD, then the query: {body}"
    );
    assert!(body.contains("GREETING=docker"), "ENV: {body}");

    // As docker run IMAGE ARGS...: the arguments replace CMD, the ENTRYPOINT's stay.
    ok(&skiff(
        &node,
        &["run", "-d", "--name", "cgi2", "cgi-app", "one", "--two"],
    )
    .await);
    let (_, body) = node.get("cgi2", "/?a=1").await;
    assert!(body.contains("args=--verbose,one,--two,a=1"), "{body}");
}
