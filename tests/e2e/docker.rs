//! Docker's own CLI (and its wire protocol) against a skiff node's Docker API socket.

use std::time::Duration;

use crate::harness::{Node, free_port, ok, wait_for};
use crate::oci::{busybox_layer, docker_save, load, need_root_and_runc, outcome};

/// The `docker` CLI with `DOCKER_HOST` on `node`'s socket.
async fn docker(node: &Node, args: &[&str]) -> std::process::Output {
    let socket = node.dir.join("docker.sock");
    let run = tokio::process::Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", node.dir.join("docker-cli"))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("docker {args:?} did not return within 60 s"))
        .expect("Docker's CLI is installed (./test installs docker.io where it is missing)")
}

fn stdout_of(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "docker failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockers_cli_negotiates_and_runs_lists_logs_stops_starts_and_removes() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;

    // Whoever can open the socket is an admin: root and its group only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(node.dir.join("docker.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    // On the API port the same API answers under the token only.
    let ping = format!("{}/_ping", node.api);
    assert_eq!(reqwest::get(&ping).await.unwrap().status(), 401);
    let authed = node
        .http
        .get(&ping)
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status(), 200);
    assert_eq!(authed.headers()["api-version"], "1.45");
    let too_new = node.api_get("/v1.99/containers/json").await;
    assert_eq!(too_new.status(), 400);
    assert!(
        too_new
            .text()
            .await
            .unwrap()
            .contains("client version 1.99 is too new")
    );

    // A JSON body past 1 MiB is refused, not read into memory.
    let huge = node
        .http
        .post(format!("{}/v1.45/containers/create", node.api))
        .bearer_auth(&node.token)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    let version =
        stdout_of(&docker(&node, &["version", "--format", "{{.Server.APIVersion}}"]).await);
    assert_eq!(
        version.trim(),
        "1.45",
        "negotiated down to the node's version"
    );
    let images = stdout_of(&docker(&node, &["images"]).await);
    assert!(images.contains("bb") && images.contains("v1"), "{images}");

    let port = free_port();
    let publish = format!("{port}:80");
    let id = stdout_of(
        &docker(
            &node,
            &[
                "run", "-d", "--name", "web", "-p", &publish, "bb:v1", "httpd", "-f", "-v", "-p",
                "80", "-h", "/www",
            ],
        )
        .await,
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    let url = format!("http://127.0.0.1:{port}/");
    let page = wait_for(
        "the published port to answer",
        Duration::from_secs(20),
        || async { reqwest::get(&url).await.ok()?.text().await.ok() },
    )
    .await;
    assert!(page.contains("busybox httpd"), "{page}");

    let ps = stdout_of(&docker(&node, &["ps"]).await);
    assert!(
        ps.contains("web")
            && ps.contains("Up ")
            && ps.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "{ps}"
    );
    let (_, _, logs) = outcome(&docker(&node, &["logs", "web"]).await);
    assert!(
        logs.contains("response:200"),
        "httpd -v logs to stderr: {logs}"
    );
    let state = stdout_of(
        &docker(
            &node,
            &["inspect", "--format", "{{.State.Status}} {{.Name}}", "web"],
        )
        .await,
    );
    assert_eq!(state.trim(), "running /web");

    ok(&docker(&node, &["stop", "-t", "1", "web"]).await);
    let ps = stdout_of(&docker(&node, &["ps", "-a", "--filter", "status=exited"]).await);
    assert!(ps.contains("web") && ps.contains("Exited ("), "{ps}");
    assert!(!stdout_of(&docker(&node, &["ps"]).await).contains("web"));
    ok(&docker(&node, &["start", "web"]).await);
    assert!(stdout_of(&docker(&node, &["ps", "--filter", "name=web"]).await).contains("web"));
    ok(&docker(&node, &["rm", "-f", "web"]).await);
    assert!(!stdout_of(&docker(&node, &["ps", "-a"]).await).contains("web"));

    // Images: tag, history, save, rmi, load.
    ok(&docker(&node, &["tag", "bb:v1", "team/bb:v2"]).await);
    let images = stdout_of(&docker(&node, &["images"]).await);
    assert!(
        images.contains("team/bb") && images.contains("v2"),
        "{images}"
    );
    let history = stdout_of(&docker(&node, &["history", "team/bb:v2"]).await);
    assert_eq!(history.lines().count(), 2, "one layer: {history}");
    let saved = node.dir.join("saved.tar");
    ok(&docker(
        &node,
        &["save", "-o", saved.to_str().unwrap(), "team/bb:v2"],
    )
    .await);
    assert_eq!(
        stdout_of(&docker(&node, &["rmi", "team/bb:v2"]).await),
        "Untagged: team/bb:v2\n"
    );
    assert!(!stdout_of(&docker(&node, &["images"]).await).contains("team/bb"));
    let loaded = stdout_of(&docker(&node, &["load", "-i", saved.to_str().unwrap()]).await);
    assert_eq!(loaded, "Loaded image: team/bb:v2\n");
    let (code, _, e) = outcome(&docker(&node, &["rmi", "nope"]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("No such image: nope"), "{e}");

    // Labels (and filters on them) and an entrypoint of one's own.
    stdout_of(
        &docker(
            &node,
            &[
                "run",
                "-d",
                "--name",
                "labelled",
                "--label",
                "team=web",
                "--entrypoint",
                "sh",
                "bb:v1",
                "-c",
                "echo from-entrypoint; sleep 100",
            ],
        )
        .await,
    );
    let web = stdout_of(&docker(&node, &["ps", "--filter", "label=team=web"]).await);
    assert!(web.contains("labelled"), "{web}");
    let db = stdout_of(&docker(&node, &["ps", "--filter", "label=team=db"]).await);
    assert!(!db.contains("labelled"), "{db}");
    wait_for(
        "the entrypoint's output",
        Duration::from_secs(20),
        || async {
            stdout_of(&docker(&node, &["logs", "labelled"]).await)
                .contains("from-entrypoint")
                .then_some(())
        },
    )
    .await;
    ok(&docker(&node, &["rm", "-f", "labelled"]).await);

    // Errors as Docker's: the CLI prints the daemon's message.
    let (code, _, e) = outcome(&docker(&node, &["rm", "nothing-here"]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("No such container: nothing-here"), "{e}");
    let (code, _, e) = outcome(&docker(&node, &["create", "--name", "x", "bb:v1", "true"]).await);
    assert_eq!(code, Some(0), "{e}");
    let (code, _, e) = outcome(&docker(&node, &["create", "--name", "x", "bb:v1", "true"]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("already in use"), "{e}");
    // A security option skiff does not honour is refused, naming it, and nothing runs.
    let (code, _, e) = outcome(
        &docker(
            &node,
            &["run", "--name", "p", "--privileged", "bb:v1", "id"],
        )
        .await,
    );
    assert_ne!(code, Some(0));
    assert!(
        e.contains("--privileged is not supported by skiff (HostConfig.Privileged)"),
        "{e}"
    );
    assert!(!stdout_of(&docker(&node, &["ps", "-a"]).await).contains(" p\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_run_attaches_and_returns_the_exit_code_and_exec_runs_in_the_container() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("busybox", &busybox_layer(&[]))).await;

    // `docker run --rm busybox echo hi`: attach (an upgraded connection), wait, start.
    let (code, out, e) = outcome(&docker(&node, &["run", "--rm", "busybox", "echo", "hi"]).await);
    assert_eq!((code, out.as_str()), (Some(0), "hi\n"), "{e}");
    let (code, out, e) = outcome(
        &docker(
            &node,
            &[
                "run",
                "--name",
                "three",
                "busybox",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
        )
        .await,
    );
    assert_eq!(
        (code, out.as_str(), e.as_str()),
        (Some(3), "out\n", "err\n")
    );
    let ps = stdout_of(&docker(&node, &["ps", "-a"]).await);
    assert!(ps.contains("three") && ps.contains("Exited (3)"), "{ps}");
    assert_eq!(ps.lines().count(), 2, "the --rm one is gone: {ps}");

    // `docker exec`: create, start (upgraded), inspect for the code.
    stdout_of(
        &docker(
            &node,
            &["run", "-d", "--name", "box", "busybox", "sleep", "1000"],
        )
        .await,
    );
    let hostname =
        stdout_of(&docker(&node, &["exec", "box", "cat", "/proc/sys/kernel/hostname"]).await);
    assert_eq!(hostname, "box\n");
    let (code, out, _) = outcome(
        &docker(
            &node,
            &[
                "exec",
                "-e",
                "A=B",
                "-w",
                "/www",
                "box",
                "sh",
                "-c",
                "echo $A; pwd; exit 7",
            ],
        )
        .await,
    );
    assert_eq!((code, out.as_str()), (Some(7), "B\n/www\n"));
    let (code, _, e) = outcome(&docker(&node, &["exec", "box", "no-such-command"]).await);
    assert_eq!(code, Some(127), "{e}");
    let (code, _, e) = outcome(&docker(&node, &["exec", "-i", "box", "sh"]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("not supported"), "{e}");
    ok(&docker(&node, &["rm", "-f", "box"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_python_sdk_runs_logs_execs_stops_and_removes() {
    need_root_and_runc();
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;
    let port = free_port();
    let script = format!(
        r#"
import docker, time
c = docker.DockerClient(base_url="unix://{socket}")
assert c.version()["ApiVersion"] == "1.45"
assert c.containers.run("bb:v1", ["echo", "hi"], remove=True) == b"hi\n"
w = c.containers.run("bb:v1", ["sh", "-c", "echo up; sleep 100"], detach=True, name="py",
                     ports={{"80/tcp": {port}}})
deadline = time.time() + 20
while b"up" not in w.logs() and time.time() < deadline:
    time.sleep(0.05)
assert w.logs() == b"up\n", w.logs()
w.reload()
assert w.status == "running" and w.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == "{port}"
r = w.exec_run(["cat", "/proc/sys/kernel/hostname"])
assert (r.exit_code, r.output) == (0, b"py\n"), r
w.stop(timeout=1)
w.reload()
assert w.status == "exited", w.status
w.remove()
assert [i.tags for i in c.images.list()] == [["bb:v1"]]
try:
    c.containers.get("nope")
    raise SystemExit("found a container that is not there")
except docker.errors.NotFound as e:
    assert "No such container: nope" in e.explanation
try:
    c.containers.run("bb:v1", ["sh", "-c", "echo bad >&2; exit 3"], remove=True)
    raise SystemExit("a failing container did not raise")
except docker.errors.ContainerError as e:
    assert (e.exit_status, e.stderr) == (3, b"bad\n"), (e.exit_status, e.stderr)
assert c.containers.list(all=True) == []
print("sdk ok")
"#,
        socket = node.dir.join("docker.sock").display()
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args(["-c", &script])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK script ends")
    .expect("python3 runs (./test installs the docker SDK where it is missing)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sdk ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_build_then_run_serves_the_nginx_example_and_unsupported_steps_are_one_line() {
    need_root_and_runc();
    let node = Node::start().await;
    let site = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/static-site");
    let out = stdout_of(
        &docker(
            &node,
            &["build", "-t", "my-web-app", site.to_str().unwrap()],
        )
        .await,
    );
    assert!(
        out.contains("Step 2/3 : COPY ./html /usr/share/nginx/html"),
        "{out}"
    );
    assert!(
        out.contains("Successfully tagged my-web-app:latest"),
        "{out}"
    );
    let port = free_port();
    stdout_of(
        &docker(
            &node,
            &["run", "-d", "-p", &format!("{port}:80"), "my-web-app"],
        )
        .await,
    );
    let url = format!("http://127.0.0.1:{port}/");
    let page = wait_for("the site to answer", Duration::from_secs(20), || async {
        reqwest::get(&url).await.ok()?.text().await.ok()
    })
    .await;
    let expected = std::fs::read_to_string(site.join("html/index.html")).unwrap();
    assert_eq!(page, expected);

    // What the Dockerfile subset lacks: the CLI prints the one line and fails.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM nginx\nRUN echo hi\n").unwrap();
    let (code, _, e) =
        outcome(&docker(&node, &["build", "-t", "bad", dir.path().to_str().unwrap()]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("Dockerfile:2: RUN is not supported"), "{e}");
    assert!(
        !e.contains(node.dir.to_str().unwrap()),
        "no node paths: {e}"
    );
    // A crafted context (Docker's CLI would not send it) whose Dockerfile is a link out of
    // it: the node does not read through the link.
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    t.append_link(&mut h, "Dockerfile", "/etc/passwd").unwrap();
    let context = t.into_inner().unwrap();
    let answer = node
        .http
        .post(format!("{}/v1.45/build?t=leak", node.api))
        .bearer_auth(&node.token)
        .header("content-type", "application/x-tar")
        .body(context)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        answer.contains("Dockerfile is not a regular file"),
        "{answer}"
    );
    assert!(!answer.contains("root:"), "{answer}");
    // Nor is a file COPY names through a link out of the context.
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM nginx\nCOPY secret /usr/share/nginx/html/secret\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.path().join("secret")).unwrap();
    let (code, _, e) = outcome(
        &docker(
            &node,
            &["build", "-t", "leak", dir.path().to_str().unwrap()],
        )
        .await,
    );
    assert_ne!(code, Some(0));
    assert!(
        e.contains("COPY secret: not found in the build context (or outside it)"),
        "{e}"
    );
    assert!(!stdout_of(&docker(&node, &["images"]).await).contains("leak"));
}

#[tokio::test]
async fn the_docker_socket_drops_a_client_that_trickles_its_request() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let node = Node::start_with(&["--header-timeout", "1s", "--idle-timeout", "2s"]).await;
    let socket = node.dir.join("docker.sock");
    // Silent: closed after the idle timeout.
    let mut silent = tokio::net::UnixStream::connect(&socket).await.unwrap();
    // A head that never ends: closed after the header timeout, though bytes keep coming.
    let mut trickle = tokio::net::UnixStream::connect(&socket).await.unwrap();
    trickle.write_all(b"GET /_ping HTTP/1.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the trickling client is still connected"
        );
        if trickle.write_all(b"X-A: b\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), trickle.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            _ => continue,
        }
    };
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "header timeout: {:?}",
        started.elapsed()
    );
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the silent client is dropped")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // A well-behaved client still gets its answer.
    let mut good = tokio::net::UnixStream::connect(&socket).await.unwrap();
    good.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), good.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// `docker` with `input` on its stdin.
async fn docker_stdin(node: &Node, args: &[&str], input: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt as _;
    let socket = node.dir.join("docker.sock");
    let mut child = tokio::process::Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", node.dir.join("docker-cli"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("docker returns within 60 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_push_pull_through_a_real_registry_and_events_tell_a_containers_life() {
    need_root_and_runc();
    let hash = std::process::Command::new("htpasswd")
        .args(["-Bbn", "user", "secret"])
        .output()
        .expect("htpasswd (apache2-utils) is installed by ./test");
    let registry =
        crate::registry::Registry::start(Some(&String::from_utf8_lossy(&hash.stdout))).await;
    let node = Node::start().await;
    load(&node, &docker_save("bb:v1", &busybox_layer(&[]))).await;
    let remote = format!("{}/team/bb:v1", registry.addr);
    ok(&docker(&node, &["tag", "bb:v1", &remote]).await);

    // Without credentials the registry's 401 is the error; a wrong password fails login.
    let (code, _, e) = outcome(&docker(&node, &["push", &remote]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("401") && e.contains("docker login"), "{e}");
    let (code, _, e) = outcome(
        &docker_stdin(
            &node,
            &["login", &registry.addr, "-u", "user", "--password-stdin"],
            "wrong\n",
        )
        .await,
    );
    assert_ne!(code, Some(0));
    assert!(e.contains("401"), "{e}");
    let out = stdout_of(
        &docker_stdin(
            &node,
            &["login", &registry.addr, "-u", "user", "--password-stdin"],
            "secret\n",
        )
        .await,
    );
    assert!(out.contains("Login Succeeded"), "{out}");

    // Push, then pull it back into an empty name.
    let out = stdout_of(&docker(&node, &["push", &remote]).await);
    let id = stdout_of(&docker(&node, &["inspect", "--format", "{{.Id}}", "bb:v1"]).await);
    assert!(
        out.contains(&format!("v1: digest: {}", id.trim())),
        "the registry holds the node's image, byte for byte: {out} / {id}"
    );
    ok(&docker(&node, &["rmi", &remote]).await);
    let out = stdout_of(&docker(&node, &["pull", &remote]).await);
    assert!(out.contains("Downloaded newer image"), "{out}");
    let pulled = stdout_of(&docker(&node, &["inspect", "--format", "{{.Id}}", &remote]).await);
    assert_eq!(pulled, id);
    let (code, _, e) =
        outcome(&docker(&node, &["pull", &format!("{}/team/none:v9", registry.addr)]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("MANIFEST_UNKNOWN") || e.contains("404"), "{e}");

    // A node whose uploads are capped takes no larger pull, and keeps nothing of it.
    let small = Node::start_with(&["--upload-limit", "1KiB"]).await;
    ok(&docker_stdin(
        &small,
        &["login", &registry.addr, "-u", "user", "--password-stdin"],
        "secret\n",
    )
    .await);
    let (code, _, e) = outcome(&docker(&small, &["pull", &remote]).await);
    assert_ne!(code, Some(0));
    assert!(e.contains("more than the 1024"), "{e}");
    assert!(!has_image(&small, &remote).await);
    let leftovers: Vec<_> = std::fs::read_dir(&small.dir)
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(".pull-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Events: a container's whole life, live and then again from the past.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let socket = node.dir.join("docker.sock");
    let mut watch = tokio::process::Command::new("docker")
        .args([
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", node.dir.join("docker-cli"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        use tokio::io::AsyncBufReadExt as _;
        let seen = seen.clone();
        let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.lock().unwrap().push_str(&(line + "\n"));
            }
        })
    };
    // `docker events` has subscribed once it shows an event: probe containers are run
    // until one's removal is seen, so the container watched is run once, in full view.
    let mut probes = 0;
    wait_for(
        "the event stream to be live",
        Duration::from_secs(30),
        || {
            probes += 1;
            let name = format!("probe{probes}");
            let node = &node;
            let seen = seen.clone();
            async move {
                if seen.lock().unwrap().contains("destroy probe") {
                    return Some(());
                }
                let _ = docker(
                    node,
                    &["run", "--rm", "--name", &name, "bb:v1", "echo", "hi"],
                )
                .await;
                None
            }
        },
    )
    .await;
    ok(&docker(
        &node,
        &["run", "--rm", "--name", "ev", "bb:v1", "echo", "hi"],
    )
    .await);
    let life = ["create ev", "start ev", "die ev", "destroy ev"];
    let text = wait_for(
        "the events of a container's life",
        Duration::from_secs(30),
        || async {
            let text = seen.lock().unwrap().clone();
            life.iter().all(|l| text.contains(l)).then_some(text)
        },
    )
    .await;
    let at = |l: &str| text.find(l).unwrap();
    assert!(
        at("create ev") < at("start ev")
            && at("start ev") < at("die ev")
            && at("die ev") < at("destroy ev"),
        "{text}"
    );
    let _ = watch.kill().await;
    reader.abort();
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let past = stdout_of(
        &docker(
            &node,
            &[
                "events",
                "--since",
                &since,
                "--until",
                &until,
                "--filter",
                "event=die",
                "--filter",
                "container=ev",
                "--format",
                "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
            ],
        )
        .await,
    );
    assert!(
        past.lines().all(|l| l.starts_with("die ev 0")) && !past.is_empty(),
        "{past}"
    );
}

#[tokio::test]
async fn an_image_docker_builds_is_on_a_second_node_when_the_build_answers() {
    let first = Node::start().await;
    let join = crate::cluster::join_args(&first);
    let join: Vec<&str> = join.iter().map(String::as_str).collect();
    let second = Node::start_with(&join).await;
    crate::cluster::wait_ready(&first, 2, 2, "both nodes ready").await;
    // The first node copies loads to the second once its view holds it: a probe image
    // loaded until it lands there.
    let probe = docker_save("probe:v1", &busybox_layer(&[]));
    wait_for("loads to be copied", Duration::from_secs(30), || async {
        load(&first, &probe).await;
        has_image(&second, "probe:v1").await.then_some(())
    })
    .await;
    let site = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/static-site");
    let out = stdout_of(&docker(&first, &["build", "-t", "web:v1", site.to_str().unwrap()]).await);
    assert!(out.contains("Successfully tagged web:v1"), "{out}");
    // No waiting: the build answered once the other node held a copy.
    assert!(has_image(&second, "web:v1").await);
}

async fn has_image(node: &Node, tag: &str) -> bool {
    let images: serde_json::Value = node.api_get("/v1/images").await.json().await.unwrap();
    images.as_array().unwrap().iter().any(|i| {
        i["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == tag))
    })
}
