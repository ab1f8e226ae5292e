//! Every guest is bounded: memory, time (guest CPU and host waits), stack, traps,
//! concurrency. Each bound is hit by a real guest and the node keeps serving.

use std::time::{Duration, Instant};

use crate::harness::{Node, hello_wasm, metric, wat};

pub(crate) fn vm_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn memory_hog_gets_500_and_the_node_stays_near_the_cap() {
    let node = Node::start().await;
    node.deploy_ok("hog", hello_wasm(), "memory=48MiB").await;
    node.deploy_ok("bystander", hello_wasm(), "").await;
    node.deploy_ok(
        "wathog",
        wat(r#"(module (memory (export "memory") 1)
        (func (export "_start")
          (loop (br_if 0 (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
          unreachable))"#),
        "memory=16MiB",
    )
    .await;
    assert_eq!(node.get("bystander", "/").await.0, 200);
    let before = vm_kib(node.pid(), "VmRSS:");

    for _ in 0..3 {
        let (s, text) = node.get("hog", "/grow").await;
        assert_eq!(s, 500, "{text}");
        assert!(text.contains("memory_limit"), "{text}");
    }
    let (s, text) = node.get("wathog", "/").await;
    assert_eq!(s, 500, "{text}");
    assert!(text.contains("memory_limit"), "{text}");

    let peak = vm_kib(node.pid(), "VmHWM:");
    assert!(
        peak.saturating_sub(before) < (48 + 64) * 1024,
        "peak RSS grew by {} KiB for a 48 MiB cap",
        peak.saturating_sub(before)
    );
    assert_eq!(
        node.get("bystander", "/").await.0,
        200,
        "other apps keep serving"
    );
    assert_eq!(
        node.get("hog", "/").await.0,
        200,
        "the app itself serves the next request"
    );
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_traps_total{app="hog",kind="memory_limit"}"#),
        3.0,
        "{m}"
    );
}

#[tokio::test]
async fn spinning_guest_is_interrupted_at_its_timeout() {
    let node = Node::start().await;
    node.deploy_ok("spin", hello_wasm(), "timeout=1s").await;
    node.deploy_ok(
        "watspin",
        wat(r#"(module (func (export "_start") (loop (br 0))))"#),
        "timeout=500ms",
    )
    .await;
    for (app, path, timeout) in [("spin", "/spin", 1000), ("watspin", "/", 500)] {
        let start = Instant::now();
        let (s, text) = node.get(app, path).await;
        let took = start.elapsed();
        assert_eq!(s, 504, "{text}");
        assert!(
            took >= Duration::from_millis(timeout),
            "{app} answered before its timeout: {took:?}"
        );
        assert!(
            took < Duration::from_millis(timeout + 100),
            "{app} answered {took:?} after a {timeout} ms timeout"
        );
    }
    assert_eq!(node.get("spin", "/").await.0, 200);
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_traps_total{app="spin",kind="timeout"}"#),
        1.0
    );
}

#[tokio::test]
async fn guest_waiting_in_a_host_call_is_cut_by_the_timeout() {
    let node = Node::start().await;
    node.deploy_ok("sleepy", hello_wasm(), "timeout=1s").await;
    let start = Instant::now();
    let (s, _) = node.get("sleepy", "/sleep?ms=60000").await;
    let took = start.elapsed();
    assert_eq!(s, 504);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "{took:?}"
    );
    assert_eq!(
        node.get("sleepy", "/sleep?ms=10").await,
        (200, "slept\n".to_string())
    );
}

#[tokio::test]
async fn stack_overflow_and_traps_are_500_and_never_take_the_node_down() {
    let mut node = Node::start().await;
    node.deploy_ok(
        "deep",
        wat(r#"(module (func $f (call $f)) (func (export "_start") (call $f)))"#),
        "",
    )
    .await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    let (s, text) = node.get("deep", "/").await;
    assert_eq!(s, 500, "{text}");
    assert!(text.contains("stack_overflow"), "{text}");
    let (s, _) = node.get("hello", "/trap").await;
    assert_eq!(s, 500);
    let (s, _) = node.get("hello", "/recurse").await;
    assert_eq!(s, 500);
    assert!(node.alive());
    assert_eq!(node.get("hello", "/").await.0, 200);
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"skiff_traps_total{app="deep",kind="stack_overflow"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"skiff_traps_total{app="hello",kind="unreachable"}"#),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_limit_requests_get_503_at_once() {
    let node = std::sync::Arc::new(Node::start().await);
    node.deploy_ok("one", hello_wasm(), "concurrency=1").await;
    let busy = {
        let node = node.clone();
        tokio::spawn(async move { node.get("one", "/sleep?ms=1500").await })
    };
    node.wait_in_flight("one").await;
    let start = Instant::now();
    let (s, text) = node.get("one", "/").await;
    assert_eq!(s, 503, "{text}");
    assert!(text.contains("concurrency limit"), "{text}");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "503 comes at once, not after a queue"
    );
    assert_eq!(busy.await.unwrap(), (200, "slept\n".to_string()));
    assert_eq!(node.get("one", "/").await.0, 200, "the slot is free again");
}

#[tokio::test]
async fn without_address_space_for_the_pool_the_node_falls_back_and_says_so() {
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let node = Node::start_customised(dir.path(), &[], |cmd| {
        cmd.stderr(log_file);
        // SAFETY: only setrlimit(2) runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // 64 GiB of address space: plenty for the node and on-demand instances,
                // far too little for a pool of 1000 4-GiB memory slots.
                let limit = libc::rlimit {
                    rlim_cur: 64 << 30,
                    rlim_max: 64 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("falling back to on-demand allocation"),
        "{text}"
    );
    node.deploy_ok("hello", hello_wasm(), "memory=32MiB").await;
    assert_eq!(node.get("hello", "/").await.0, 200);
    let (s, text) = node.get("hello", "/grow").await;
    assert_eq!(s, 500, "memory is still bounded without the pool: {text}");
}
