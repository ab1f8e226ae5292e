//! `docker create`/`run`: Docker's create body read into skiff's [`RunParams`], every
//! option honoured or refused by name (never dropped).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use skiff_spec::{PortMapping, RestartPolicy, RunParams};

use super::*;
use crate::Shared;
use crate::api::http::query_pairs;

/// What `docker create` sends (the fields skiff reads; others are ignored, as an older
/// Docker ignores fields it does not know, unless they would loosen the container's
/// confinement: those are read to be refused).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct CreateBody {
    image: String,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    env: Option<Vec<String>>,
    tty: bool,
    open_stdin: bool,
    labels: Option<BTreeMap<String, String>>,
    host_config: Option<HostConfig>,
    user: Option<String>,
    working_dir: Option<String>,
    /// Anonymous volumes (`-v /data`): refused, skiff has no volumes.
    volumes: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct HostConfig {
    port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    memory: Option<i64>,
    nano_cpus: Option<i64>,
    pids_limit: Option<i64>,
    restart_policy: Option<DockerRestart>,
    auto_remove: bool,
    network_mode: Option<String>,
    readonly_rootfs: bool,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    group_add: Option<Vec<String>>,
    security_opt: Option<Vec<String>>,
    tmpfs: Option<BTreeMap<String, String>>,
    mounts: Option<Vec<DockerMount>>,
    // Read only to be refused when set.
    privileged: bool,
    binds: Option<Vec<String>>,
    volumes_from: Option<Vec<String>>,
    devices: Option<Vec<Value>>,
    device_requests: Option<Vec<Value>>,
    device_cgroup_rules: Option<Vec<String>>,
    pid_mode: Option<String>,
    ipc_mode: Option<String>,
    #[serde(rename = "UTSMode")]
    uts_mode: Option<String>,
    userns_mode: Option<String>,
    cgroupns_mode: Option<String>,
    sysctls: Option<BTreeMap<String, String>>,
    masked_paths: Option<Vec<String>>,
    readonly_paths: Option<Vec<String>>,
    runtime: Option<String>,
}

/// `--mount`: only `type=tmpfs` is honoured.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct DockerMount {
    #[serde(rename = "Type")]
    kind: String,
    target: String,
    read_only: bool,
    tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct TmpfsOptions {
    size_bytes: Option<i64>,
    mode: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct PortBinding {
    host_ip: String,
    host_port: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct DockerRestart {
    name: String,
}

/// A `docker create` body as `skiff run`'s parameters.
pub(super) fn run_params(body: CreateBody, name: Option<String>) -> Answer<RunParams> {
    if body.image.is_empty() {
        return Err(bad("Config.Image is required"));
    }
    if body.tty || body.open_stdin {
        return Err(bad(
            "a TTY or stdin (-t, -i) is not supported by skiff: containers' output is logged",
        ));
    }
    let mut params = skiff_spec::DeployParams::default();
    for e in body.env.unwrap_or_default() {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| bad(format!("invalid environment variable {e:?}: use KEY=VALUE")))?;
        params.env.push((k.to_string(), v.to_string()));
    }
    let hc = body.host_config.unwrap_or_default();
    let (user, workdir, security) = security_params(
        body.user,
        body.working_dir,
        body.volumes.is_some_and(|v| !v.is_empty()),
        &hc,
    )?;
    params.memory_bytes = hc.memory.filter(|&m| m > 0).map(|m| m as u64);
    let mut ports = Vec::new();
    for (container, bindings) in hc.port_bindings.unwrap_or_default() {
        let (port, proto) = container.split_once('/').unwrap_or((&container, "tcp"));
        if proto != "tcp" {
            return Err(bad(format!(
                "only tcp ports can be published, not {container}"
            )));
        }
        for b in bindings.unwrap_or_default() {
            // An empty HostIp publishes on loopback, as every skiff listener by default.
            let spec = match b.host_ip.as_str() {
                "" => format!("{}:{port}", b.host_port),
                ip if ip.contains(':') => format!("[{ip}]:{}:{port}", b.host_port),
                ip => format!("{ip}:{}:{port}", b.host_port),
            };
            ports.push(spec.parse::<PortMapping>().map_err(bad)?);
        }
    }
    let restart = match hc.restart_policy.map(|r| r.name).as_deref() {
        None | Some("" | "no") => RestartPolicy::No,
        Some("always" | "unless-stopped") => RestartPolicy::Always,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some(other) => return Err(bad(format!("invalid restart policy '{other}'"))),
    };
    let host_network = match hc.network_mode.as_deref() {
        None | Some("" | "default" | "bridge") => false,
        Some("host") => true,
        Some(other) => {
            return Err(bad(format!(
                "network {other} not found: skiff has the networks bridge and host"
            )));
        }
    };
    let run = RunParams {
        image: familiar(&body.image).to_string(),
        name,
        params,
        ports,
        restart,
        args: body.cmd.filter(|c| !c.is_empty()),
        milli_cpus: hc
            .nano_cpus
            .filter(|&n| n > 0)
            .map(|n| RunParams::milli_cpus(n as f64 / 1e9))
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        pids_limit: hc.pids_limit.filter(|&p| p > 0),
        host_network,
        auto_remove: hc.auto_remove,
        // `--entrypoint ""` arrives as `[""]`: no entrypoint at all.
        entrypoint: body
            .entrypoint
            .map(|e| e.into_iter().filter(|a| !a.is_empty()).collect()),
        labels: body.labels.unwrap_or_default(),
        user,
        workdir,
        security,
    };
    if run.auto_remove && run.restart != RestartPolicy::No {
        return Err(bad(
            "conflicting options: cannot specify both --restart and --rm",
        ));
    }
    Ok(run)
}

/// The user, working directory and confinement a `docker create` body asks for; what
/// skiff cannot honour is refused, naming the flag and the field (a 400 the CLI prints).
pub(super) fn security_params(
    user: Option<String>,
    working_dir: Option<String>,
    volumes: bool,
    hc: &HostConfig,
) -> Answer<(Option<String>, Option<String>, skiff_spec::Security)> {
    let refuse = |flag: &str, field: &str, why: &str| {
        Err(bad(format!(
            "{flag} is not supported by skiff ({field}): {why}"
        )))
    };
    fn set<T>(v: &Option<Vec<T>>) -> bool {
        v.as_ref().is_some_and(|v| !v.is_empty())
    }
    if hc.privileged {
        return refuse(
            "--privileged",
            "HostConfig.Privileged",
            "it runs no privileged containers",
        );
    }
    if set(&hc.devices) || set(&hc.device_requests) || set(&hc.device_cgroup_rules) {
        return refuse(
            "--device",
            "HostConfig.Devices",
            "containers get no devices of the node",
        );
    }
    for (flag, field, mode) in [
        ("--pid", "HostConfig.PidMode", &hc.pid_mode),
        ("--ipc", "HostConfig.IpcMode", &hc.ipc_mode),
        ("--uts", "HostConfig.UTSMode", &hc.uts_mode),
        ("--cgroupns", "HostConfig.CgroupnsMode", &hc.cgroupns_mode),
    ] {
        // Its own namespace is what skiff gives (`private`, `shareable`: nothing joins it).
        match mode.as_deref() {
            None | Some("" | "private" | "shareable") => {}
            Some(m) => {
                return refuse(
                    &format!("{flag} {m}"),
                    field,
                    "every container has namespaces of its own",
                );
            }
        }
    }
    // skiff makes no user namespaces, so the node's ("host") is what every container has.
    if let Some(m) = hc
        .userns_mode
        .as_deref()
        .filter(|m| !["", "host"].contains(m))
    {
        return refuse(
            &format!("--userns {m}"),
            "HostConfig.UsernsMode",
            "it makes no user namespaces",
        );
    }
    if hc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        return refuse(
            "--sysctl",
            "HostConfig.Sysctls",
            "a container's kernel settings are the runtime's",
        );
    }
    if set(&hc.binds) || set(&hc.volumes_from) || volumes {
        return refuse(
            "-v/--volume",
            "HostConfig.Binds, Config.Volumes",
            "it has no volumes and mounts no paths of the node",
        );
    }
    if hc.masked_paths.is_some() || hc.readonly_paths.is_some() {
        return refuse(
            "--security-opt systempaths",
            "HostConfig.MaskedPaths",
            "/proc and /sys are masked as Docker's defaults mask them",
        );
    }
    if let Some(r) = hc.runtime.as_deref().filter(|r| !["", "runc"].contains(r)) {
        return refuse(
            &format!("--runtime {r}"),
            "HostConfig.Runtime",
            "Linux containers run with runc",
        );
    }
    let user = user.filter(|u| !u.is_empty());
    if let Some(u) = &user {
        skiff_spec::security::check_user(u).map_err(|e| bad(format!("-u/--user: {e}")))?;
    }
    let workdir = working_dir.filter(|w| !w.is_empty());
    if let Some(w) = &workdir {
        skiff_spec::security::check_workdir(w).map_err(|e| bad(format!("-w/--workdir: {e}")))?;
    }
    let mut security = skiff_spec::Security {
        read_only: hc.readonly_rootfs,
        ..Default::default()
    };
    for c in hc.cap_add.iter().flatten() {
        security
            .add_capability(c)
            .map_err(|e| bad(format!("--cap-add (HostConfig.CapAdd): {e}")))?;
    }
    for c in hc.cap_drop.iter().flatten() {
        security
            .drop_capability(c)
            .map_err(|e| bad(format!("--cap-drop (HostConfig.CapDrop): {e}")))?;
    }
    for g in hc.group_add.iter().flatten() {
        security
            .add_group(g)
            .map_err(|e| bad(format!("--group-add (HostConfig.GroupAdd): {e}")))?;
    }
    for o in hc.security_opt.iter().flatten() {
        skiff_spec::security::check_security_opt(o)
            .map_err(|e| bad(format!("{e} (HostConfig.SecurityOpt)")))?;
    }
    let tmpfs_error = |e: String| bad(format!("--tmpfs (HostConfig.Tmpfs): {e}"));
    for (path, options) in hc.tmpfs.iter().flatten() {
        let t = skiff_spec::Tmpfs::new(path, options).map_err(tmpfs_error)?;
        security.add_tmpfs(t).map_err(tmpfs_error)?;
    }
    for m in hc.mounts.iter().flatten() {
        if m.kind != "tmpfs" {
            return refuse(
                &format!("--mount type={}", m.kind),
                "HostConfig.Mounts",
                "it has no volumes and mounts no paths of the node; type=tmpfs is supported",
            );
        }
        let mut options = Vec::new();
        if m.read_only {
            options.push("ro".to_string());
        }
        if let Some(o) = &m.tmpfs_options {
            if let Some(size) = o.size_bytes.filter(|s| *s > 0) {
                options.push(format!("size={size}"));
            }
            if let Some(mode) = o.mode {
                options.push(format!("mode={mode:o}"));
            }
        }
        let mount_error = |e: String| bad(format!("--mount (HostConfig.Mounts): {e}"));
        let t = skiff_spec::Tmpfs::new(&m.target, &options.join(",")).map_err(mount_error)?;
        security.add_tmpfs(t).map_err(mount_error)?;
    }
    Ok((user, workdir, security))
}

/// `POST /containers/create?name=N`
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let body: CreateBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid container config: {e}")))?;
    let name = param(&pairs, "name")
        .filter(|n| !n.is_empty())
        .map(|n| n.trim_start_matches('/').to_string());
    let image = body.image.clone();
    let run = run_params(body, name)?;
    let info = match shared.standalone.create_container(run).await {
        Ok(info) => info,
        // Docker's CLI pulls on this message, then creates again.
        Err(crate::error::AppError::NotFound(_)) => {
            return Err(DockerError::new(
                StatusCode::NOT_FOUND,
                format!("No such image: {image}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": info.id, "Warnings": []})),
    )
        .into_response())
}
