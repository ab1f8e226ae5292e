//! `/_ping`, `/version`, `/info`: what a Docker client asks first.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::*;
use crate::Shared;

pub(super) async fn ping() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        ],
        "OK",
    )
}

pub(super) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub(super) async fn version() -> Json<Value> {
    let version = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "skiff"},
        "Components": [{
            "Name": "Engine",
            "Version": version,
            "Details": {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "Os": "linux",
                "Arch": arch(),
                "KernelVersion": kernel(),
            },
        }],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": kernel(),
        "BuildTime": "",
    }))
}

pub(super) async fn info(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let containers = shared.standalone.list_containers(true).await;
    let running = containers.iter().filter(|c| c.state == "running").count();
    let store = shared.images.store().clone();
    let images = tokio::task::spawn_blocking(move || store.list().map(|l| l.len()))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let name = shared.cluster.identity().name.clone();
    Json(json!({
        "ID": name,
        "Name": name,
        "Containers": containers.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": containers.len() - running,
        "Images": images,
        "Driver": "overlay",
        "DockerRootDir": shared.config.data_dir.display().to_string(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "OperatingSystem": "skiff",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "KernelVersion": kernel(),
        "NCPU": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "MemTotal": skiff_runtime::machine_memory(),
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "2" } else { "1" },
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "DefaultRuntime": "runc",
        "Runtimes": {"runc": {"path": "runc"}},
        "LoggingDriver": "skiff",
        "Warnings": [],
    }))
}
