//! Hostile images and clients, written by hand as an attacker would, against a real
//! node: nothing outside the data dir is read or changed, and nothing one client or
//! image does starves another app or the node.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use tar::EntryType::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{
    Node, err, hello_wasm, image_archive, ok, raw_layer, skiff, wagi_wasm, wait_for, wat,
};

/// A static-site image config serving `root`.
fn site_config(root: &str) -> Vec<u8> {
    format!(
        r#"{{"created":"1970-01-01T00:00:00Z","architecture":"wasm","os":"static","dev.skiff.siteRoot":{root:?}}}"#
    )
    .into_bytes()
}

/// Loads an archive (written to `dir`) and returns the CLI's output.
async fn load(
    node: &Node,
    dir: &std::path::Path,
    name: &str,
    archive: Vec<u8>,
) -> std::process::Output {
    let path = dir.join(format!("{name}.tar"));
    std::fs::write(&path, archive).unwrap();
    skiff(node, &["load", "-i", path.to_str().unwrap()]).await
}

/// Reads until the peer closes (EOF or reset) or `limit` passes; the bytes read, and
/// whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (usize, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut total = 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Ok(Ok(n)) => total += n,
            Err(_) => return (total, false),
        }
    }
}

#[tokio::test]
async fn a_static_image_never_serves_or_opens_host_files() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let page = raw_layer(&[("site/", Directory, ""), ("site/index.html", Regular, "")]);

    // A site root that climbs out of the image is refused at load, naming the field.
    let o = load(
        &node,
        dir.path(),
        "climb",
        image_archive(
            &site_config("/../../../../../../../etc"),
            &[&page],
            "climb:latest",
        ),
    )
    .await;
    let e = err(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("dev.skiff.siteRoot"), "{e}");

    // A site root that is a symlink to / is refused at run: it is no directory inside
    // the image.
    let link = raw_layer(&[("html", Symlink, "/")]);
    ok(&load(
        &node,
        dir.path(),
        "link",
        image_archive(&site_config("/html"), &[&link], "link:latest"),
    )
    .await);
    let e = err(&skiff(&node, &["run", "-d", "--name", "link", "link"]).await);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("site root /html"), "{e}");

    // Links inside a served tree that point at host directories are not followed.
    let www = raw_layer(&[
        ("www/", Directory, ""),
        ("www/index.html", Regular, ""),
        ("www/root", Symlink, "/root"),
        ("www/etc", Symlink, "/etc"),
        ("www/up", Symlink, "../../../../../../etc"),
    ]);
    // `www/up` climbs out lexically: refused at extraction. Without it, the rest runs.
    ok(&load(
        &node,
        dir.path(),
        "www",
        image_archive(&site_config("/www"), &[&www], "www:latest"),
    )
    .await);
    let e = err(&skiff(&node, &["run", "-d", "--name", "www", "www"]).await);
    assert!(e.contains("www/up"), "{e}");
    let www = raw_layer(&[
        ("www/", Directory, ""),
        ("www/index.html", Regular, ""),
        ("www/root", Symlink, "/root"),
        ("www/etc", Symlink, "/etc"),
    ]);
    ok(&load(
        &node,
        dir.path(),
        "www2",
        image_archive(&site_config("/www"), &[&www], "www2:latest"),
    )
    .await);
    ok(&skiff(&node, &["run", "-d", "--name", "www2", "www2"]).await);
    assert_eq!(node.get("www2", "/").await, (200, "x".to_string()));
    for path in [
        "/etc/passwd",
        "/etc/shadow",
        "/root/.bashrc",
        "/etc/",
        "/root/",
    ] {
        let (status, body) = node.get("www2", path).await;
        assert!(status >= 400, "{path} answered {status}");
        assert!(!body.contains("root:"), "{path} served host data: {body}");
    }
}

#[tokio::test]
async fn extracting_never_changes_host_files_through_a_symlink() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = victim.to_str().unwrap();
    let layer = raw_layer(&[
        ("site/", Directory, ""),
        ("site/index.html", Regular, ""),
        ("v", Symlink, target),
        ("v", Directory, ""),
    ]);
    ok(&load(
        &node,
        dir.path(),
        "chmod",
        image_archive(&site_config("/site"), &[&layer], "chmod:latest"),
    )
    .await);
    ok(&skiff(&node, &["run", "-d", "--name", "chmod", "chmod"]).await);
    assert_eq!(node.get("chmod", "/").await.0, 200);
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the host directory's mode was changed");
    // Writing a file "into" such a link is refused, and nothing lands on the host.
    let layer = raw_layer(&[("w", Symlink, target), ("w/planted", Regular, "")]);
    ok(&load(
        &node,
        dir.path(),
        "plant",
        image_archive(&site_config("/"), &[&layer], "plant:latest"),
    )
    .await);
    let e = err(&skiff(&node, &["run", "-d", "--name", "plant", "plant"]).await);
    assert!(e.contains("w/planted"), "{e}");
    assert!(!victim.join("planted").exists());
}

#[tokio::test]
async fn a_whiteout_of_the_parent_is_refused_and_other_sites_keep_their_files() {
    let node = Node::start().await;
    let dir = tempfile::tempdir().unwrap();
    let page = raw_layer(&[("site/", Directory, ""), ("site/index.html", Regular, "")]);
    ok(&load(
        &node,
        dir.path(),
        "good",
        image_archive(&site_config("/site"), &[&page], "good:latest"),
    )
    .await);
    ok(&skiff(&node, &["run", "-d", "--name", "good", "good"]).await);
    assert_eq!(node.get("good", "/").await, (200, "x".to_string()));
    for (i, whiteout) in [".wh...", "site/.wh...", ".wh..", ".wh."]
        .iter()
        .enumerate()
    {
        let layer = raw_layer(&[("site/", Directory, ""), (whiteout, Regular, "")]);
        let tag = format!("wh{i}:latest");
        ok(&load(
            &node,
            dir.path(),
            &format!("wh{i}"),
            image_archive(&site_config("/site"), &[&page, &layer], &tag),
        )
        .await);
        let e = err(&skiff(&node, &["run", "-d", "--name", &format!("wh{i}"), &tag]).await);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains(whiteout), "{e}");
        // The other site's extracted tree is still whole.
        assert_eq!(
            node.get("good", "/").await,
            (200, "x".to_string()),
            "after {whiteout}"
        );
    }
}

#[tokio::test]
async fn slow_and_silent_clients_are_dropped_and_cannot_starve_an_app() {
    let node = Node::start_with(&[
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--write-timeout",
        "2s",
        "--body-timeout",
        "1s",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Larger than what loopback socket buffers hold (a few MiB each way).
    let big = vec![b'b'; 32 << 20];
    let mut t = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("site/index.html", &b"home"[..]),
        ("site/big.bin", &big[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, path, data).unwrap();
    }
    let layer = t.into_inner().unwrap();
    ok(&load(
        &node,
        dir.path(),
        "big",
        image_archive(&site_config("/site"), &[&layer], "big:latest"),
    )
    .await);
    let port = crate::harness::free_port().to_string();
    ok(&skiff(
        &node,
        &[
            "run",
            "-d",
            "--name",
            "big",
            "--concurrency",
            "4",
            "-p",
            &format!("{port}:80"),
            "big",
        ],
    )
    .await);
    assert_eq!(node.get("big", "/").await, (200, "home".to_string()));
    let api = node.api.trim_start_matches("http://").to_string();
    let published = format!("127.0.0.1:{port}");

    // A head trickled a byte at a time is cut off by the header timeout.
    let mut trickle = TcpStream::connect(node.ingress).await.unwrap();
    let started = Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: big.localhost\r\nX-Slow: 1234567890".iter() {
        if trickle.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (_, closed) = read_until_closed(&mut trickle, Duration::from_secs(5)).await;
    assert!(closed, "a trickled head kept its connection");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // An upload that stops halfway fails after the body timeout, not never.
    let mut upload = TcpStream::connect(&api).await.unwrap();
    let head = format!(
        "PUT /v1/apps/stalled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n\0asm",
        node.token
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), upload.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("sent nothing for 1s"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Silent and idle keep-alive connections close on every listener.
    for addr in [node.ingress.to_string(), api.clone(), published.clone()] {
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(6)).await;
        assert!(closed, "a silent connection to {addr} stayed open");
    }
    let mut kept = TcpStream::connect(node.ingress).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
        .await
        .unwrap();
    let (n, closed) = read_until_closed(&mut kept, Duration::from_secs(6)).await;
    assert!(closed && n > 0, "an idle keep-alive connection stayed open");

    // Clients that ask for the big file and never read: more of them than the app's
    // permits. A fresh request is served while they hang on ...
    let mut readers = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(node.ingress).await.unwrap();
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
            .await
            .unwrap();
        readers.push(s);
    }
    let mut first = [0u8; 1];
    for s in &mut readers {
        s.read_exact(&mut first).await.unwrap();
    }
    for _ in 0..5 {
        assert_eq!(node.get("big", "/").await, (200, "home".to_string()));
    }
    // ... and the node drops them once they have read nothing for the write timeout:
    // its side of each connection leaves ESTABLISHED (the kernel still holds what was
    // buffered), and each client then gets less than the file before the end.
    let ingress_port = node.ingress.port();
    let client_ports: Vec<u16> = readers
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    wait_for(
        "the node to drop clients that stopped reading",
        Duration::from_secs(15),
        || {
            let open = client_ports
                .iter()
                .filter(|p| tcp_state(ingress_port, **p) == Some(ESTABLISHED))
                .count();
            async move { (open == 0).then_some(()) }
        },
    )
    .await;
    for s in &mut readers {
        let (n, closed) = read_until_closed(s, Duration::from_secs(15)).await;
        assert!(closed, "a client that stopped reading was never dropped");
        assert!(n < big.len(), "the whole file was sent ({n} bytes)");
    }
}

/// `st` of an established TCP socket in /proc/net/tcp.
const ESTABLISHED: u8 = 0x01;

/// The state of the loopback socket with local port `local` and remote port `remote`.
fn tcp_state(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (want_local, want_remote) = (format!(":{local:04X}"), format!(":{remote:04X}"));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && f[1].ends_with(&want_local) && f[2].ends_with(&want_remote))
            .then(|| u8::from_str_radix(f[3], 16).ok())
            .flatten()
    })
}

#[tokio::test]
async fn extraction_limits_refuse_bombs_naming_the_limit() {
    let node = Node::start_with(&[
        "--extract-max-bytes",
        "1MiB",
        "--extract-max-entries",
        "500",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of zeros: a few KiB once gzipped, as a registry would carry it.
    let mut t = tar::Builder::new(Vec::new());
    let zeros = vec![0u8; 2 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_size(zeros.len() as u64);
    h.set_mode(0o644);
    t.append_data(&mut h, "site/index.html", zeros.as_slice())
        .unwrap();
    let layer = t.into_inner().unwrap();
    ok(&load(
        &node,
        dir.path(),
        "bytes",
        image_archive(&site_config("/site"), &[&layer], "bytes:latest"),
    )
    .await);
    let e = err(&skiff(&node, &["run", "-d", "--name", "bytes", "bytes"]).await);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("more than 1048576 bytes"), "{e}");

    let mut t = tar::Builder::new(Vec::new());
    for i in 0..600 {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        t.append_data(&mut h, format!("site/{i}"), std::io::empty())
            .unwrap();
    }
    let layer = t.into_inner().unwrap();
    ok(&load(
        &node,
        dir.path(),
        "many",
        image_archive(&site_config("/site"), &[&layer], "many:latest"),
    )
    .await);
    let e = err(&skiff(&node, &["run", "-d", "--name", "many", "many"]).await);
    assert!(e.contains("more than 500 entries"), "{e}");
    // Nothing half-extracted is left to be used later.
    let left: Vec<_> = std::fs::read_dir(node.dir.join("sites"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(node.api_get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn an_archive_of_many_blobs_loads_with_few_file_descriptors() {
    let node = Node::start().await;
    // The node may hold 256 files at once; the archive carries 2,000 blobs.
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &node.pid().to_string(), "--nofile=256:256"])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success());
    let dir = tempfile::tempdir().unwrap();
    let page = raw_layer(&[("site/", Directory, ""), ("site/index.html", Regular, "")]);
    let archive = image_archive(&site_config("/site"), &[&page], "many-blobs:latest");
    // Extra blobs in the layout that no manifest names: still staged and checked.
    let mut t = tar::Builder::new(archive[..archive.len() - 1024].to_vec());
    for i in 0..2000u32 {
        use sha2::{Digest as _, Sha256};
        let data = i.to_string();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let path = format!(
            "blobs/sha256/{}",
            hex::encode(Sha256::digest(data.as_bytes()))
        );
        t.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    let archive = t.into_inner().unwrap();
    ok(&load(&node, dir.path(), "blobs", archive).await);
    ok(&skiff(&node, &["run", "-d", "--name", "blobs", "many-blobs"]).await);
    assert_eq!(node.get("blobs", "/").await, (200, "x".to_string()));
}

#[tokio::test]
async fn garbage_collection_leaves_extractions_in_progress_and_a_restart_sweeps_them() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::start_in(data.path(), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let in_progress = data.path().join("sites/.extract-inprogress");
    std::fs::create_dir_all(in_progress.join("site")).unwrap();
    std::fs::write(in_progress.join("site/partial"), "x").unwrap();
    // Loading and removing an image runs garbage collection.
    let page = raw_layer(&[("site/", Directory, ""), ("site/index.html", Regular, "")]);
    ok(&load(
        &node,
        dir.path(),
        "gc",
        image_archive(&site_config("/site"), &[&page], "gc:latest"),
    )
    .await);
    ok(&skiff(&node, &["run", "-d", "--name", "gc", "gc"]).await);
    ok(&skiff(&node, &["rm", "-f", "gc"]).await);
    ok(&skiff(&node, &["rmi", "gc"]).await);
    assert!(
        in_progress.join("site/partial").exists(),
        "GC removed a tree being extracted"
    );
    // A tree left by a killed node is never complete: the next start removes it.
    node.stop().await;
    let node = Node::start_in(data.path(), &[]).await;
    assert!(
        !in_progress.exists(),
        "a leftover extraction survived a restart"
    );
    drop(node);
}

/// A core module with `n` functions (each a little arithmetic), exporting `_start`.
fn many_functions(n: usize) -> Vec<u8> {
    let mut text = String::from("(module (memory 1) (export \"memory\" (memory 0))");
    for i in 0..n {
        text.push_str(&format!(
            "(func $f{i} (param i32) (result i32) local.get 0 i32.const {i} i32.add i32.const 3 i32.mul)"
        ));
    }
    text.push_str("(func (export \"_start\")))");
    wat(&text)
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[tokio::test]
async fn memory_budget_and_compile_bounds_hold() {
    let node = Node::start_with(&["--memory-budget", "256MiB", "--compile-timeout", "2s"]).await;
    // An instance that could never fit the node is refused at deploy.
    let r = node.deploy("greedy", hello_wasm(), "memory=512MiB").await;
    assert_eq!(r.status(), 507);
    let text = r.text().await.unwrap();
    assert!(text.contains("memory budget of 268435456 bytes"), "{text}");
    // Two instances of 128 MiB fill it: while two requests run, a third is refused at
    // once (the app's own concurrency would allow it), and served again after.
    let node = std::sync::Arc::new(node);
    node.deploy_ok("pool", hello_wasm(), "memory=128MiB&concurrency=8")
        .await;
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.get("pool", "/sleep?ms=2000").await })
        })
        .collect();
    wait_for(
        "two requests in flight",
        Duration::from_secs(10),
        || async {
            let v: serde_json::Value = node.api_get("/v1/apps/pool").await.json().await.ok()?;
            (v["containers"][0]["in_flight"] == 2).then_some(())
        },
    )
    .await;
    let (status, text) = node.get("pool", "/").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("memory budget"), "{text}");
    for s in sleepers {
        assert_eq!(s.await.unwrap(), (200, "slept\n".to_string()));
    }
    assert_eq!(node.get("pool", "/").await.0, 200);

    // A module that takes far longer than 2 s to compile: the compiler is killed then,
    // the deploy fails with the reason, and nothing keeps compiling.
    let started = Instant::now();
    let r = node.deploy("slow", many_functions(100_000), "").await;
    let took = started.elapsed();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("took longer than 2s"), "{text}");
    assert!(took < Duration::from_secs(10), "the deploy took {took:?}");
    no_compiler_left(&node).await;
    assert_eq!(node.api_get("/healthz").await.status(), 200);
    assert_eq!(node.get("pool", "/").await.0, 200);
}

/// Waits until no compile worker of `node` runs (they work in its cache directory).
async fn no_compiler_left(node: &Node) {
    let cache = node.dir.join("cache").to_string_lossy().into_owned();
    wait_for(
        "the compiler to be gone",
        Duration::from_secs(5),
        || async { processes_mentioning(&cache).is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_compile_past_its_memory_limit_is_refused() {
    let node = Node::start_with(&["--compile-memory", "48MiB"]).await;
    let r = node.deploy("big", many_functions(100_000), "").await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("memory limit"), "{text}");
    no_compiler_left(&node).await;
    // Ordinary modules still compile.
    node.deploy_ok("small", wagi_wasm(), "").await;
    assert_eq!(node.get("small", "/").await.0, 200);
}

#[tokio::test]
async fn a_module_over_its_memory_limit_is_refused_and_its_name_stays_put() {
    let node = Node::start().await;
    let before = node.deploy_ok("m", wagi_wasm(), "").await;
    // 4096 pages (256 MiB) of initial memory against the default 128 MiB limit.
    let huge = wat(r#"(module (memory 4096) (func (export "_start")))"#);
    let r = node.deploy("m", huge, "").await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("memory limit of 134217728 bytes"), "{text}");
    let images: serde_json::Value = node.api_get("/v1/images").await.json().await.unwrap();
    let tagged = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "m:latest")
        })
        .expect("m:latest is still a tag");
    assert_eq!(
        tagged["id"], before["image"],
        "m:latest moved off the running image"
    );
    assert_eq!(node.get("m", "/").await.0, 200);
}

#[tokio::test]
async fn duplicate_hosts_and_declared_oversize_uploads_are_refused_at_once() {
    let node = Node::start().await;
    node.deploy_ok("d", wagi_wasm(), "").await;
    let mut s = TcpStream::connect(node.ingress).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: d.localhost\r\nHost: other.localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let api = node.api.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&api).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 107374182400\r\n\r\n",
        node.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("no answer before the body was sent")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 413");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn userinfo_cannot_smuggle_another_host_past_the_allow_list() {
    let node = Node::start().await;
    // A local server that counts the connections it is given, on port 80 of a loopback
    // address of its own: the smuggled authority below names no port, as the attack does
    // (`allowed.com:28999` reads as a host and port to a text match).
    let listener = tokio::net::TcpListener::bind("127.0.0.2:80")
        .await
        .expect("bind 127.0.0.2:80 (tests run as root, as CI does)");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    node.deploy_ok("guest", hello_wasm(), "allow_host=example.com")
        .await;
    let (s, text) = node
        .get("guest", "/fetch?host=example.com:28999@127.0.0.2")
        .await;
    assert_eq!(s, 502, "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the guest reached 127.0.0.2"
    );
}

#[tokio::test]
async fn a_log_full_of_long_lines_is_read_back_within_its_cap() {
    let node = Node::start().await;
    node.deploy_ok("chatty", hello_wasm(), "").await;
    // Each request logs its 16 KiB query twice (stdout and stderr): 9 MiB in all.
    let query = "q".repeat(16 << 10);
    for _ in 0..300 {
        assert_eq!(node.get("chatty", &format!("/log?{query}")).await.0, 200);
    }
    // Three readers of the whole log at once: each gets the app's capped ring (2 MiB of
    // lines), not everything ever written.
    let reads = (0..3).map(|_| async {
        let r = node.api_get("/v1/apps/chatty/logs?tail=all").await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap().len()
    });
    for len in futures_util::future::join_all(reads).await {
        assert!((1 << 20..3 << 20).contains(&len), "{len} bytes of log");
    }
}

/// A build context as a client crafts it (Docker's CLI sends links as links): `files` are
/// regular files, `links` symlinks with their targets.
fn build_context(files: &[(&str, &str)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        t.append_link(&mut h, path, target).unwrap();
    }
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, path, text.as_bytes()).unwrap();
    }
    t.into_inner().unwrap()
}

#[tokio::test]
async fn a_build_context_never_reads_host_files_through_a_link() {
    let node = Node::start().await;
    let data_dir = node.dir.display().to_string();
    let copy = |src: &str| format!("FROM nginx\nCOPY {src} /usr/share/nginx/html/p\n");
    // (query, the context's Dockerfile, its links, the path the refusal must name)
    let cases = [
        (
            "dockerfile=sub/passwd",
            None,
            vec![("sub", "/etc")],
            "sub/passwd",
        ),
        (
            "dockerfile=data/token",
            None,
            vec![("data", data_dir.as_str())],
            "data/token",
        ),
        (
            "dockerfile=passwd",
            None,
            vec![("passwd", "/etc/passwd")],
            "passwd",
        ),
        (
            "dockerfile=a",
            None,
            vec![("a", "b"), ("b", "/etc/passwd")],
            "a is not a regular file",
        ),
        // A link that climbs out is refused as the context is unpacked.
        (
            "dockerfile=up/passwd",
            None,
            vec![("up", "../../../../../../etc")],
            "\"up\"",
        ),
        (
            "",
            Some(copy("sub/passwd")),
            vec![("sub", "/etc")],
            "COPY sub/passwd",
        ),
        ("", Some(copy("sub")), vec![("sub", "/etc")], "COPY sub"),
        (
            "",
            Some(copy("data/token")),
            vec![("data", data_dir.as_str())],
            "COPY data/token",
        ),
        (
            "",
            Some(copy("../../../etc/passwd")),
            vec![],
            "COPY ../../../etc/passwd",
        ),
    ];
    for (query, dockerfile, links, path) in cases {
        let files: Vec<(&str, &str)> = dockerfile
            .as_deref()
            .map(|d| ("Dockerfile", d))
            .into_iter()
            .collect();
        let answer = node
            .http
            .post(format!("{}/v1.45/build?t=leak&{query}", node.api))
            .bearer_auth(&node.token)
            .header("content-type", "application/x-tar")
            .body(build_context(&files, &links))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        // The first line of /etc/passwd (an error once quoted it, upper-cased), and the
        // node's admin token.
        assert!(
            !text.to_lowercase().contains("root:"),
            "{query} {dockerfile:?}: {text}"
        );
        assert!(
            !text.to_lowercase().contains(&node.token.to_lowercase()),
            "{query}: {text}"
        );
        assert!(
            status.is_client_error(),
            "{query} {dockerfile:?}: {status} {text}"
        );
        // Docker's error shape, naming the path.
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        let message = message["message"].as_str().unwrap_or_default();
        assert!(message.contains(path), "{query} {dockerfile:?}: {text}");
    }
    let images = node
        .api_get("/v1.45/images/json")
        .await
        .text()
        .await
        .unwrap();
    assert!(!images.contains("leak"), "{images}");
}

/// A tmpfs mounted on a fresh temp dir, unmounted by that exact path when dropped (a
/// failing test too). Declare it before the node that uses it: locals drop in reverse,
/// so the node stops first and nothing holds the mount.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (`64m`), or says why it cannot (not root, a sandbox).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or `None` with the reason the test is skipped printed.
    fn mount_or_skip(size: &str) -> Option<Tmpfs> {
        Self::mount(size)
            .map_err(|why| {
                eprintln!(
                    "skipped: this machine cannot mount a tmpfs for the node's data dir: {why}"
                )
            })
            .ok()
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path();
        let unmounted = std::process::Command::new("umount")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a node that would not stop): detach it, so nothing stays mounted.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(path)
                .status();
        }
    }
}

/// Writes `path` until its disk has no byte left.
fn fill_disk(path: &std::path::Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    f.sync_all().unwrap();
}

/// An authenticated API request with a JSON body.
async fn api_send(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let mut req = node
        .http
        .request(method, format!("{}{path}", node.api))
        .bearer_auth(&node.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A Deployment as kubectl creates it, running `image`.
fn kube_deployment(name: &str, image: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    })
}

/// The tags of every image on `node`.
async fn image_tags(node: &Node) -> Vec<String> {
    let images: serde_json::Value = node.api_get("/v1/images").await.json().await.unwrap();
    images
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["tags"].as_array().unwrap().clone())
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_the_node_takes_them_again_once_space_is_back() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("64m") else {
        return;
    };
    let data = tmpfs.path().to_path_buf();
    let data_dir = data.display().to_string();
    let flags = ["--min-free-disk", "16MiB", "--min-free-disk-state", "4MiB"];
    let node = Node::start_in(&data, &flags).await;
    node.deploy_ok("before", hello_wasm(), "").await;
    assert_eq!(node.get("before", "/").await.0, 200);

    // The attack: something fills the node's disk to the last byte.
    let filler = data.join("filler");
    fill_disk(&filler);
    let refused = |what: &str, (status, body): (u16, String)| {
        assert_eq!(status, 507, "{what}: {body}");
        assert!(
            body.contains(&data_dir) && body.contains("bytes free"),
            "{what} names the data dir and the bytes free: {body}"
        );
        body
    };
    // A deploy (an upload), a deploy of an image already here (straight to Raft),
    // kubectl's create, an image upload, a tag by skiff's API and by Docker's.
    let r = node.deploy("refused", hello_wasm(), "").await;
    let body = refused("an upload", (r.status().as_u16(), r.text().await.unwrap()));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_storage", "{body}");
    refused(
        "a deploy of a stored image",
        api_send(
            &node,
            reqwest::Method::PUT,
            "/v1/apps/refused-image?image=before:latest",
            None,
        )
        .await,
    );
    let body = refused(
        "kubectl's create",
        api_send(
            &node,
            reqwest::Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            Some(kube_deployment("refused-kube", "before:latest")),
        )
        .await,
    );
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status", "{body}");
    assert_eq!(status["code"], 507, "{body}");
    let page = raw_layer(&[("site/", Directory, ""), ("site/index.html", Regular, "")]);
    let archive = image_archive(&site_config("site"), &[&page], "refused-load:v1");
    let r = node
        .http
        .post(format!("{}/v1/images", node.api))
        .bearer_auth(&node.token)
        .body(archive)
        .send()
        .await
        .unwrap();
    refused(
        "an image upload",
        (r.status().as_u16(), r.text().await.unwrap()),
    );
    refused(
        "a tag",
        api_send(
            &node,
            reqwest::Method::POST,
            "/v1/images/tag?source=before:latest&target=refused:v1",
            None,
        )
        .await,
    );
    let body = refused(
        "Docker's tag",
        api_send(
            &node,
            reqwest::Method::POST,
            "/v1.45/images/before:latest/tag?repo=refused&tag=docker",
            None,
        )
        .await,
    );
    let docker: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        docker["message"].is_string(),
        "Docker's error shape: {body}"
    );
    // The node is not wedged meanwhile: it serves and reads.
    assert_eq!(node.get("before", "/").await.0, 200);
    assert_eq!(node.api_get("/v1/apps/before").await.status(), 200);

    // Space comes back. Without a restart, writes go through again and read back.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        "a deploy to go through once space is back",
        Duration::from_secs(30),
        || async {
            let r = node.deploy("after", hello_wasm(), "").await;
            r.status().is_success().then_some(())
        },
    )
    .await;
    assert_eq!(node.get("after", "/").await.0, 200);
    let (status, body) = api_send(
        &node,
        reqwest::Method::POST,
        "/v1/images/tag?source=before:latest&target=after-tag:v1",
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api_send(
        &node,
        reqwest::Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        Some(kube_deployment("after-kube", "before:latest")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api_send(
        &node,
        reqwest::Method::GET,
        "/apis/apps/v1/namespaces/default/deployments/after-kube",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        image_tags(&node)
            .await
            .contains(&"after-tag:v1".to_string())
    );

    // After a restart, what was taken is there and nothing refused was applied.
    node.stop().await;
    let node = Node::start_in(&data, &flags).await;
    for app in ["before", "after"] {
        assert_eq!(node.get(app, "/").await.0, 200, "{app}");
    }
    for app in ["refused", "refused-image"] {
        assert_eq!(
            node.api_get(&format!("/v1/apps/{app}")).await.status(),
            404,
            "{app} was refused, yet it is there"
        );
    }
    for (name, want) in [("refused-kube", 404), ("after-kube", 200)] {
        let (status, body) = api_send(
            &node,
            reqwest::Method::GET,
            &format!("/apis/apps/v1/namespaces/default/deployments/{name}"),
            None,
        )
        .await;
        assert_eq!(status, want, "{name}: {body}");
    }
    let tags = image_tags(&node).await;
    assert!(
        tags.iter().all(|t| !t.starts_with("refused")),
        "a refused tag is there: {tags:?}"
    );
    for tag in ["before:latest", "after:latest", "after-tag:v1"] {
        assert!(
            tags.contains(&tag.to_string()),
            "{tag} is missing: {tags:?}"
        );
    }
    drop(node);
}

#[tokio::test]
async fn a_disk_that_fills_under_raft_and_the_tags_wedges_nothing_and_fails_no_write_that_lands() {
    let Some(tmpfs) = Tmpfs::mount_or_skip("64m") else {
        return;
    };
    let data = tmpfs.path().to_path_buf();
    let data_dir = data.display().to_string();
    // No reserves: nothing is refused up front, so the disk fills under the databases
    // themselves (what a write racing something else that fills the disk meets).
    let flags = ["--min-free-disk", "0", "--min-free-disk-state", "0"];
    let node = Node::start_in(&data, &flags).await;
    node.deploy_ok("before", hello_wasm(), "").await;
    let filler = data.join("filler");
    fill_disk(&filler);

    // Tags until one finds no room in tags.redb: a clear 507, not redb's "previous
    // I/O error" from then on.
    let mut tagged = Vec::new();
    let refused_tag = loop {
        let target = format!("t{}:v1", tagged.len());
        let (status, body) = api_send(
            &node,
            reqwest::Method::POST,
            &format!("/v1/images/tag?source=before:latest&target={target}"),
            None,
        )
        .await;
        if status != 201 {
            assert_eq!(status, 507, "{target}: {body}");
            assert!(body.contains(&data_dir), "{body}");
            break target;
        }
        tagged.push(target);
        assert!(tagged.len() < 20_000, "tags.redb never ran out of room");
    };

    // Deployments until one finds no room in the Raft log or the state: its outcome is
    // unknown (it was proposed), never "failed"; Raft waits for space and says so.
    let deployment = |name: &str| {
        let mut d = kube_deployment(name, "before:latest");
        d["spec"]["replicas"] = 0.into();
        d
    };
    let mut created = Vec::new();
    let unknown = loop {
        let name = format!("d{}", created.len());
        let (status, body) = api_send(
            &node,
            reqwest::Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            Some(deployment(&name)),
        )
        .await;
        if status != 201 {
            assert_eq!(status, 503, "{name}: {body}");
            assert!(body.contains("outcome_unknown"), "{name}: {body}");
            assert!(body.contains("outcome is unknown"), "{name}: {body}");
            break name;
        }
        created.push(name);
        assert!(created.len() < 20_000, "Raft never ran out of room");
    };
    let r = node
        .http
        .get(format!("{}/healthz", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let health = r.text().await.unwrap();
    assert!(
        health.contains(&format!("disk full at {data_dir}")),
        "{health}"
    );
    // Meanwhile the node serves and reads.
    assert_eq!(node.get("before", "/").await.0, 200);

    // Space is back: without a restart, the write whose outcome was unknown lands, and
    // new writes (a Deployment, a tag) go through.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        "the write whose outcome was unknown to land",
        Duration::from_secs(30),
        || async {
            let (status, _) = api_send(
                &node,
                reqwest::Method::GET,
                &format!("/apis/apps/v1/namespaces/default/deployments/{unknown}"),
                None,
            )
            .await;
            (status == 200).then_some(())
        },
    )
    .await;
    let (status, body) = api_send(
        &node,
        reqwest::Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        Some(deployment("after")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api_send(
        &node,
        reqwest::Method::POST,
        "/v1/images/tag?source=before:latest&target=after-tag:v1",
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let r = node
        .http
        .get(format!("{}/healthz", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // After a restart: everything answered as done is there, the refused tag is not.
    node.stop().await;
    let node = Node::start_in(&data, &flags).await;
    let list: serde_json::Value = node
        .api_get("/apis/apps/v1/namespaces/default/deployments")
        .await
        .json()
        .await
        .unwrap();
    let names: std::collections::BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    for name in created.iter().chain([&unknown, &"after".to_string()]) {
        assert!(
            names.contains(name),
            "{name} was answered done, yet it is gone"
        );
    }
    let tags = image_tags(&node).await;
    assert!(
        !tags.contains(&refused_tag),
        "{refused_tag} was refused, yet it is there"
    );
    for tag in tagged.iter().map(String::as_str).chain(["after-tag:v1"]) {
        assert!(tags.iter().any(|t| t == tag), "{tag} is missing");
    }
    drop(node);
}

#[tokio::test]
async fn a_corrupt_database_stops_the_start_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    Node::start_in(dir.path(), &[]).await.stop().await;
    // Each database file in turn gets garbage over it (as a failing disk or a torn copy
    // leaves one) and the node is started on it: an error naming the file and what to
    // do, no panic; then the file is put back.
    for file in ["state.redb", "raft.redb", "images/tags.redb"] {
        let path = dir.path().join(file);
        let good = std::fs::read(&path).unwrap();
        let mut garbage = good.clone();
        // Past redb's header, so the file still looks like a database: its pages are
        // what is wrong.
        for (i, b) in garbage.iter_mut().enumerate().skip(512) {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        std::fs::write(&path, &garbage).unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(crate::harness::SKIFF)
                .args([
                    "up",
                    "--api-addr",
                    "127.0.0.1:0",
                    "--ingress-addr",
                    "127.0.0.1:0",
                ])
                .args(["--gossip-addr", "127.0.0.1:0", "--data-dir"])
                .arg(dir.path())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("a node on a corrupt database exits")
        .unwrap();
        let stderr = err(&out);
        let name = std::path::Path::new(file)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            stderr.contains(&format!("{name} in {}", path.parent().unwrap().display()))
                && stderr.contains("is corrupt"),
            "{file}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
        std::fs::write(&path, &good).unwrap();
    }
    // Put back, the files serve again.
    Node::start_in(dir.path(), &[]).await.stop().await;
}
