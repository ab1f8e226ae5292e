//! What confines a Linux container beyond its namespaces, as `docker run` (`-u`,
//! `--group-add`, `--cap-add`, `--cap-drop`, `--read-only`, `--tmpfs`, `--security-opt`)
//! and a pod's `securityContext` ask for it: the user, capabilities, a read-only root
//! and the tmpfs mounts that stay writable. Checked here, once, for every front door
//! (the Docker API, `skiff run`, manifests); `runtime::oci` turns it into runc's config.
//!
//! Every value from outside is bounded and checked: a user is `name` or `uid` with an
//! optional `:group`, ids within 0..=2147483647 (as Kubernetes; (uid_t)-1 would leave
//! setresuid(2) changing nothing, so the process would stay root); capabilities are the
//! kernel's names; a tmpfs path is absolute, lexical and outside what the runtime mounts
//! itself (/proc, /sys, /dev, the /etc files it writes).

use serde::{Deserialize, Serialize};

/// The capabilities Linux has, in bit order (`CAP_CHOWN` is bit 0), by the names Docker
/// and Kubernetes use (without `CAP_`).
#[rustfmt::skip]
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT",
    "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE",
    "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
    "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND",
    "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];

/// A Linux container's capabilities when nothing is added or dropped: Docker's default
/// set without `NET_RAW`, as Podman's. Raw sockets let a process forge packets and, on
/// the host network, read every packet on the node's interfaces (loopback included); a
/// container that needs them (ping without ICMP sockets, packet capture) asks with
/// `--cap-add NET_RAW` or `capabilities.add`.
#[rustfmt::skip]
pub const DEFAULT_CAPABILITIES: [&str; 13] = [
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
];

/// The largest uid or gid a container may run as (Kubernetes' bound; (uid_t)-1 would make
/// setresuid(2) a no-op, leaving the process root).
pub const MAX_ID: u32 = i32::MAX as u32;

/// Most entries in one list (capabilities, groups, tmpfs mounts) a container may ask for.
pub const MAX_ENTRIES: usize = 64;

/// Longest path (tmpfs target, working directory) taken.
const MAX_PATH: usize = 4096;

/// Longest user or group name taken (`useradd` allows 32; room for the rest).
const MAX_NAME: usize = 256;

/// What confines a Linux container beyond its namespaces (the user aside: who runs is
/// chosen where the image's `User` is known). Empty: Docker's defaults minus `NET_RAW`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// Refuse to start a process that would run as uid 0 (a pod's `runAsNonRoot`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub non_root: bool,
    /// The root filesystem is mounted read-only (`--read-only`,
    /// `readOnlyRootFilesystem`); tmpfs mounts stay writable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Capabilities added (canonical names, or `ALL`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped (canonical names, or `ALL`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Supplementary groups, numbers or names in the image's /etc/group (`--group-add`,
    /// `supplementalGroups`, `fsGroup`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Writable tmpfs mounts (`--tmpfs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<Tmpfs>,
}

impl Security {
    /// Whether nothing is asked beyond the defaults.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// Adds `name` (Docker's or Kubernetes' spelling, or `ALL`) to the capabilities added.
    pub fn add_capability(&mut self, name: &str) -> Result<(), String> {
        push_capability(&mut self.cap_add, name)
    }

    /// Adds `name` (Docker's or Kubernetes' spelling, or `ALL`) to the capabilities dropped.
    pub fn drop_capability(&mut self, name: &str) -> Result<(), String> {
        push_capability(&mut self.cap_drop, name)
    }

    /// Adds a supplementary group: a gid or a name to find in the image's /etc/group.
    pub fn add_group(&mut self, group: &str) -> Result<(), String> {
        check_name_or_id("group", group)?;
        if self.groups.len() >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} groups"));
        }
        if !self.groups.iter().any(|g| g == group) {
            self.groups.push(group.to_string());
        }
        Ok(())
    }

    /// Adds a tmpfs mount, refusing a second one at the same path.
    pub fn add_tmpfs(&mut self, tmpfs: Tmpfs) -> Result<(), String> {
        if self.tmpfs.len() >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} tmpfs mounts"));
        }
        if self.tmpfs.iter().any(|t| t.path == tmpfs.path) {
            return Err(format!("{} is mounted twice", tmpfs.path));
        }
        self.tmpfs.push(tmpfs);
        Ok(())
    }

    /// The capabilities the process gets, in bit order. As containerd computes a pod's:
    /// the defaults; all of them if `ALL` is added; none if `ALL` is dropped; then the
    /// named additions; then the named drops. Docker's order differs only for a
    /// capability both added and dropped, which Docker keeps and this drops: the
    /// narrower reading of a contradiction.
    pub fn capabilities(&self) -> Vec<&'static str> {
        let all = |list: &[String]| list.iter().any(|c| c == "ALL");
        let mut set: Vec<bool> = CAPABILITIES
            .iter()
            .map(|c| DEFAULT_CAPABILITIES.contains(c))
            .collect();
        if all(&self.cap_add) {
            set.fill(true);
        }
        if all(&self.cap_drop) {
            set.fill(false);
        }
        for (i, name) in CAPABILITIES.iter().enumerate() {
            if self.cap_add.iter().any(|c| c == name) {
                set[i] = true;
            }
            if self.cap_drop.iter().any(|c| c == name) {
                set[i] = false;
            }
        }
        CAPABILITIES
            .iter()
            .zip(set)
            .filter_map(|(name, on)| on.then_some(*name))
            .collect()
    }

    /// Checks what a container that runs inside the node (Wasm, a static site) is asked
    /// for. Such a guest has no process: no uid, no capabilities, no system calls and no
    /// filesystem of its own (WASI gets no preopened directories). So what only narrows
    /// a process holds already and is accepted: a user or groups (the guest has less
    /// than any uid), `non_root`, a read-only root (there is nothing to write), dropped
    /// capabilities. What would grant something cannot be honoured and is refused:
    /// added capabilities, tmpfs mounts, a working directory.
    pub fn check_in_process(&self, workdir: Option<&str>) -> Result<(), String> {
        if let Some(c) = self.cap_add.first() {
            return Err(format!(
                "capability {c} cannot be added: a Wasm or static container runs inside the node, with no capabilities to grant"
            ));
        }
        if let Some(t) = self.tmpfs.first() {
            return Err(format!(
                "tmpfs {} cannot be mounted: a Wasm or static container has no filesystem",
                t.path
            ));
        }
        if let Some(w) = workdir {
            return Err(format!(
                "working directory {w} cannot be set: a Wasm or static container has no filesystem"
            ));
        }
        Ok(())
    }
}

/// What a pod's container `index` runs as and under: its `securityContext` over the
/// pod's, as the kubelet reads them. The user is `uid[:gid]` where they are given, the
/// image's `User` (`image_user`) for what is not (a uid alone takes its group from the
/// image's /etc/passwd, as containerd does). Refuses what skiff cannot honour (the
/// node's namespaces, privileged containers, privilege escalation, seccomp profiles
/// but the runtime's default), naming the field from the pod spec (`containers[0].
/// securityContext.privileged: ...`).
pub fn of_pod(
    pod: &crate::k8s::PodSpec,
    index: usize,
    image_user: &str,
) -> Result<(String, Security), String> {
    for (field, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if on == Some(true) {
            return Err(format!(
                "{field}: Forbidden: skiff runs every pod in namespaces of its own; the node's are not shared"
            ));
        }
    }
    if pod.host_users == Some(false) {
        return Err("hostUsers: Forbidden: skiff does not run pods in user namespaces".to_string());
    }
    let id = |path: &str, v: Option<i64>| -> Result<Option<u32>, String> {
        match v {
            None => Ok(None),
            Some(n) if (0..=i64::from(MAX_ID)).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(format!(
                "{path}: Invalid value: {n}: must be between 0 and {MAX_ID}, inclusive"
            )),
        }
    };
    let seccomp = |path: &str, p: &Option<crate::k8s::SeccompProfile>| match p {
        Some(p) if p.kind != "RuntimeDefault" => Err(format!(
            "{path}.seccompProfile.type: Unsupported value: {:?}: skiff runs every container under the runtime's default profile (RuntimeDefault)",
            p.kind
        )),
        _ => Ok(()),
    };
    let mut security = Security::default();
    let psc = pod.security_context.clone().unwrap_or_default();
    seccomp("securityContext", &psc.seccomp_profile)?;
    let pod_uid = id("securityContext.runAsUser", psc.run_as_user)?;
    let pod_gid = id("securityContext.runAsGroup", psc.run_as_group)?;
    if let Some(g) = id("securityContext.fsGroup", psc.fs_group)? {
        security.add_group(&g.to_string())?;
    }
    for (j, g) in psc.supplemental_groups.iter().enumerate() {
        let path = format!("securityContext.supplementalGroups[{j}]");
        if let Some(g) = id(&path, Some(*g))? {
            security
                .add_group(&g.to_string())
                .map_err(|e| format!("{path}: {e}"))?;
        }
    }
    let c = pod
        .containers
        .get(index)
        .ok_or_else(|| format!("containers[{index}]: Required value"))?;
    let path = format!("containers[{index}].securityContext");
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.privileged == Some(true) {
        return Err(format!(
            "{path}.privileged: Forbidden: skiff runs no privileged containers"
        ));
    }
    if sc.allow_privilege_escalation == Some(true) {
        return Err(format!(
            "{path}.allowPrivilegeEscalation: Forbidden: skiff runs every container with no_new_privileges (false)"
        ));
    }
    seccomp(&path, &sc.seccomp_profile)?;
    let uid = id(&format!("{path}.runAsUser"), sc.run_as_user)?.or(pod_uid);
    let gid = id(&format!("{path}.runAsGroup"), sc.run_as_group)?.or(pod_gid);
    security.non_root = sc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false);
    security.read_only = sc.read_only_root_filesystem.unwrap_or(false);
    let caps = sc.capabilities.unwrap_or_default();
    for (field, list) in [("add", &caps.add), ("drop", &caps.drop)] {
        for (j, name) in list.iter().enumerate() {
            let added = if field == "add" {
                security.add_capability(name)
            } else {
                security.drop_capability(name)
            };
            added
                .map_err(|e| format!("{path}.capabilities.{field}[{j}]: Unsupported value: {e}"))?;
        }
    }
    let (image_u, image_g) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let user = uid.map_or_else(|| image_u.to_string(), |u| u.to_string());
    // A uid given alone takes its group from /etc/passwd, not the image's `User`.
    let group = gid
        .map(|g| g.to_string())
        .or_else(|| uid.is_none().then(|| image_g.map(str::to_string)).flatten());
    let user = match group {
        Some(g) if user.is_empty() => format!("0:{g}"),
        Some(g) => format!("{user}:{g}"),
        None => user,
    };
    Ok((user, security))
}

fn push_capability(list: &mut Vec<String>, name: &str) -> Result<(), String> {
    let name = capability(name)?;
    if list.len() >= MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} capabilities"));
    }
    if !list.iter().any(|c| c == name) {
        list.push(name.to_string());
    }
    Ok(())
}

/// A capability as Docker and Kubernetes spell it (`NET_RAW`, `CAP_NET_RAW`, `net_raw`),
/// or `ALL`: its canonical name (`NET_RAW`), or why not.
pub fn capability(name: &str) -> Result<&'static str, String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok("ALL");
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .find(|c| **c == bare)
        .copied()
        .ok_or_else(|| {
            let shown: String = name.chars().take(64).collect();
            format!("unknown capability {shown:?}")
        })
}

/// Checks `-u`/`User`: `user[:group]`, each a name or an id in 0..=[`MAX_ID`]; names are
/// looked up in the image's /etc/passwd and /etc/group when the container starts.
pub fn check_user(user: &str) -> Result<(), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    check_name_or_id("user", u)?;
    if let Some(g) = g {
        check_name_or_id("group", g)?;
    }
    Ok(())
}

/// A user or group: an id within 0..=[`MAX_ID`], or a name of letters, digits, `_`, `.`
/// and `-` (not first).
fn check_name_or_id(what: &str, v: &str) -> Result<(), String> {
    let shown: String = v.chars().take(64).collect();
    if v.is_empty() || v.len() > MAX_NAME {
        return Err(format!("invalid {what} {shown:?}: use a name or an id"));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return match v.parse::<u32>() {
            Ok(id) if id <= MAX_ID => Ok(()),
            _ => Err(format!("{what} id {shown} is outside 0..={MAX_ID}")),
        };
    }
    let name_ok = !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if name_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {shown:?}: a name is letters, digits, '_', '.' and '-'"
        ))
    }
}

/// Checks a working directory (`-w`, `WorkingDir`): absolute, bounded, no control
/// characters. runc resolves it beneath the container's root and creates it if missing.
pub fn check_workdir(dir: &str) -> Result<(), String> {
    if !dir.starts_with('/') {
        let shown: String = dir.chars().take(64).collect();
        return Err(format!(
            "the working directory {shown:?} is invalid: it needs to be an absolute path"
        ));
    }
    if dir.len() > MAX_PATH || dir.chars().any(char::is_control) {
        return Err("the working directory is too long or holds control characters".into());
    }
    Ok(())
}

/// Checks one `--security-opt`. skiff runs every Linux container with no_new_privileges
/// and Docker's default seccomp profile, so `no-new-privileges` (`:true`, `=true`) is
/// accepted as already true; everything else (turning either off, another seccomp
/// profile, AppArmor or SELinux labels, `systempaths=unconfined`) cannot be honoured and
/// is refused, naming it.
pub fn check_security_opt(opt: &str) -> Result<(), String> {
    let shown: String = opt.chars().take(64).collect();
    let (key, value) = match opt.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    match (key, value) {
        ("no-new-privileges", None | Some("true")) => Ok(()),
        ("no-new-privileges", Some(_)) => Err(format!(
            "--security-opt {shown} is not supported: skiff runs every container with no-new-privileges"
        )),
        ("seccomp", _) => Err(format!(
            "--security-opt {shown} is not supported: skiff runs every Linux container under Docker's default seccomp profile"
        )),
        ("apparmor", _) => Err(format!(
            "--security-opt {shown} is not supported: skiff applies no AppArmor profiles"
        )),
        ("label", _) => Err(format!(
            "--security-opt {shown} is not supported: skiff applies no SELinux labels"
        )),
        _ => Err(format!("--security-opt {shown} is not supported by skiff")),
    }
}

/// A writable tmpfs mount in a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tmpfs {
    /// Where, inside the container: absolute, `.` and `..` free, no `:` or `,`.
    pub path: String,
    /// mount(8)'s options, checked: Docker's defaults (`noexec`, `nosuid`, `nodev`)
    /// overridden by what was asked, `size` in bytes.
    pub options: Vec<String>,
}

/// Options that turn each other off: the later one wins.
const OPPOSITES: [(&str, &str); 7] = [
    ("rw", "ro"),
    ("exec", "noexec"),
    ("suid", "nosuid"),
    ("dev", "nodev"),
    ("atime", "noatime"),
    ("diratime", "nodiratime"),
    ("async", "sync"),
];

impl Tmpfs {
    /// `--tmpfs PATH[:OPTIONS]` (`/run:size=64m,mode=755`).
    pub fn parse(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            Some((path, options)) => Self::new(path, options),
            None => Self::new(spec, ""),
        }
    }

    /// A mount at `path` with comma-separated `options` (Docker's `HostConfig.Tmpfs`).
    pub fn new(path: &str, options: &str) -> Result<Self, String> {
        let path = tmpfs_path(path)?;
        let mut out: Vec<String> = ["noexec", "nosuid", "nodev"].map(String::from).to_vec();
        for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let shown: String = opt.chars().take(64).collect();
            let bad = |why: &str| format!("tmpfs {path}: option {shown:?} {why}");
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let normalized = match (key, value) {
                ("size", Some(v)) => {
                    let bytes = crate::parse_bytes(v).map_err(|e| bad(&e))?;
                    if bytes == 0 {
                        return Err(bad("is not a size (use e.g. 64m)"));
                    }
                    format!("size={bytes}")
                }
                ("mode", Some(v)) => {
                    if v.is_empty() || v.len() > 4 || !v.bytes().all(|b| (b'0'..=b'7').contains(&b))
                    {
                        return Err(bad("is not an octal mode (use e.g. 1777)"));
                    }
                    format!("mode={v}")
                }
                ("uid" | "gid", Some(v)) => match v.parse::<u32>() {
                    Ok(id) if id <= MAX_ID => format!("{key}={id}"),
                    _ => return Err(bad(&format!("is not an id in 0..={MAX_ID}"))),
                },
                ("nr_inodes", Some(v)) => {
                    let n = crate::parse_bytes(v).map_err(|e| bad(&e))?;
                    format!("nr_inodes={n}")
                }
                (flag, None)
                    if OPPOSITES.iter().any(|(a, b)| *a == flag || *b == flag)
                        || flag == "relatime"
                        || flag == "strictatime" =>
                {
                    flag.to_string()
                }
                _ => {
                    return Err(bad(
                        "is not supported (size, mode, uid, gid, nr_inodes, rw, ro, exec, noexec, suid, nosuid, dev, nodev, sync, async, atime, noatime, diratime, nodiratime, relatime, strictatime)",
                    ));
                }
            };
            // The later of two opposites, or of two values of a key, wins, in the
            // earlier one's place (so options read back give the same list).
            match out
                .iter()
                .position(|o| option_group(o) == option_group(&normalized))
            {
                Some(i) => out[i] = normalized,
                None => out.push(normalized),
            }
        }
        Ok(Self { path, options: out })
    }
}

/// What an option sets: its key, or for a flag the first of its pair of opposites.
fn option_group(option: &str) -> &str {
    let key = option.split('=').next().unwrap_or_default();
    OPPOSITES
        .iter()
        .find(|(a, b)| *a == key || *b == key)
        .map_or(key, |(a, _)| a)
}

/// A tmpfs target, lexically normalized (`/tmp/` is `/tmp`), or why it cannot be one.
fn tmpfs_path(path: &str) -> Result<String, String> {
    let shown: String = path.chars().take(64).collect();
    if !path.starts_with('/') {
        return Err(format!(
            "tmpfs {shown:?}: the path needs to be absolute, e.g. /tmp"
        ));
    }
    if path.len() > MAX_PATH || path.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "tmpfs {shown:?}: the path is too long or holds a comma or control character"
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("tmpfs {shown:?}: the path holds \"..\"")),
            p => parts.push(p),
        }
    }
    let normalized = format!("/{}", parts.join("/"));
    let runtime_owned = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|r| normalized == *r || normalized.starts_with(&format!("{r}/")))
        || ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"].contains(&normalized.as_str());
    if parts.is_empty() || runtime_owned {
        return Err(format!(
            "tmpfs {normalized}: the runtime mounts that path itself; mount a tmpfs elsewhere"
        ));
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_as_docker_and_kubernetes_write_them() {
        assert_eq!(capability("NET_RAW"), Ok("NET_RAW"));
        assert_eq!(capability("cap_net_raw"), Ok("NET_RAW"));
        assert_eq!(capability("CAP_SYS_ADMIN"), Ok("SYS_ADMIN"));
        assert_eq!(capability("all"), Ok("ALL"));
        assert_eq!(CAPABILITIES[13], "NET_RAW", "bit order");
        assert_eq!(CAPABILITIES[21], "SYS_ADMIN", "bit order");
        assert!(capability("CAP_CAP_SYS_ADMIN").is_err());
        assert!(capability("GOD_MODE").unwrap_err().contains("GOD_MODE"));
    }

    #[test]
    fn capabilities_follow_adds_and_drops() {
        let with = |add: &[&str], drop: &[&str]| {
            let mut s = Security::default();
            for a in add {
                s.add_capability(a).unwrap();
            }
            for d in drop {
                s.drop_capability(d).unwrap();
            }
            s.capabilities()
        };
        let default = with(&[], &[]);
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        assert!(!default.contains(&"NET_RAW"), "no raw sockets by default");
        assert!(with(&["NET_RAW"], &[]).contains(&"NET_RAW"));
        assert!(with(&[], &["ALL"]).is_empty());
        assert_eq!(with(&["net_bind_service"], &["ALL"]), ["NET_BIND_SERVICE"]);
        assert_eq!(with(&["ALL"], &[]).len(), CAPABILITIES.len());
        assert!(!with(&["ALL"], &["SYS_ADMIN"]).contains(&"SYS_ADMIN"));
        let less = with(&[], &["CHOWN", "cap_kill"]);
        assert!(!less.contains(&"CHOWN") && !less.contains(&"KILL"));
        assert_eq!(less.len(), DEFAULT_CAPABILITIES.len() - 2);
        assert!(
            !with(&["NET_ADMIN"], &["NET_ADMIN"]).contains(&"NET_ADMIN"),
            "a contradiction is read narrowly"
        );
        let mut s = Security::default();
        assert!(s.add_capability("SYS_EVERYTHING").is_err());
    }

    #[test]
    fn users_are_names_or_ids_below_the_no_change_id() {
        for good in [
            "1000",
            "1000:1000",
            "www",
            "www:staff",
            "0",
            "nginx-1.2_x",
            "2147483647",
        ] {
            assert_eq!(check_user(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ":",
            "1000:",
            ":1000",
            "4294967295",
            "2147483648",
            "99999999999",
            "-1",
            "a b",
            "root;x",
            "a:b:c",
        ] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
        assert!(check_user(&"a".repeat(300)).is_err());
    }

    #[test]
    fn tmpfs_mounts_are_checked_and_take_dockers_defaults() {
        let t = Tmpfs::parse("/tmp").unwrap();
        assert_eq!(
            (t.path.as_str(), &t.options[..]),
            ("/tmp", &["noexec", "nosuid", "nodev"].map(String::from)[..])
        );
        let t = Tmpfs::parse("/run/app/:size=64m,mode=1777,exec,uid=1000").unwrap();
        assert_eq!(t.path, "/run/app");
        assert_eq!(
            t.options,
            [
                "exec",
                "nosuid",
                "nodev",
                "size=67108864",
                "mode=1777",
                "uid=1000"
            ]
        );
        let t = Tmpfs::new("/x", "size=1k,size=2k,ro,rw").unwrap();
        assert_eq!(t.options, ["noexec", "nosuid", "nodev", "size=2048", "rw"]);
        let again = Tmpfs::new(&t.path, &t.options.join(",")).unwrap();
        assert_eq!(again, t, "options read back are the same");
        for bad in [
            "tmp",
            "/",
            "/proc",
            "/proc/sys",
            "/sys/fs",
            "/dev/shm",
            "/etc/hosts",
            "/a/../proc",
            "/a,b",
            "/x:size=lots",
            "/x:size=0",
            "/x:mode=999",
            "/x:uid=4294967295",
            "/x:bind",
            "/x:context=system_u",
        ] {
            assert!(Tmpfs::parse(bad).is_err(), "{bad}");
        }
        let mut s = Security::default();
        s.add_tmpfs(Tmpfs::parse("/tmp").unwrap()).unwrap();
        assert!(
            s.add_tmpfs(Tmpfs::parse("/tmp/").unwrap()).is_err(),
            "twice"
        );
    }

    #[test]
    fn a_containers_context_overrides_its_pods_and_the_image_fills_the_rest() {
        use crate::k8s::{Container, PodSecurityContext, PodSpec, SecurityContext};
        let pod = |p: Option<PodSecurityContext>, c: Option<SecurityContext>| PodSpec {
            containers: vec![Container {
                security_context: c,
                ..Container::default()
            }],
            security_context: p,
            ..PodSpec::default()
        };
        let user = |p, c, image: &str| of_pod(&pod(p, c), 0, image).unwrap().0;
        let ctx = |u: Option<i64>, g: Option<i64>| SecurityContext {
            run_as_user: u,
            run_as_group: g,
            ..SecurityContext::default()
        };
        let pctx = |u: Option<i64>, g: Option<i64>, non_root: Option<bool>| PodSecurityContext {
            run_as_user: u,
            run_as_group: g,
            run_as_non_root: non_root,
            ..PodSecurityContext::default()
        };
        assert_eq!(user(None, None, "www:staff"), "www:staff", "the image's");
        assert_eq!(
            user(Some(pctx(Some(1000), None, None)), None, "www:staff"),
            "1000"
        );
        assert_eq!(
            user(
                Some(pctx(Some(1000), Some(5), None)),
                Some(ctx(Some(2000), None)),
                "www"
            ),
            "2000:5",
            "the container's uid, the pod's gid"
        );
        assert_eq!(user(None, Some(ctx(None, Some(7))), "www:staff"), "www:7");
        assert_eq!(user(None, Some(ctx(None, Some(7))), ""), "0:7");
        let (_, s) = of_pod(
            &pod(
                Some(pctx(None, None, Some(true))),
                Some(SecurityContext {
                    run_as_non_root: Some(false),
                    ..SecurityContext::default()
                }),
            ),
            0,
            "",
        )
        .unwrap();
        assert!(!s.non_root, "the container's false over the pod's true");
        let (_, s) = of_pod(&pod(Some(pctx(None, None, Some(true))), None), 0, "").unwrap();
        assert!(s.non_root);
        let groups = PodSecurityContext {
            fs_group: Some(2000),
            supplemental_groups: vec![3000, 2000],
            ..PodSecurityContext::default()
        };
        assert_eq!(
            of_pod(&pod(Some(groups), None), 0, "").unwrap().1.groups,
            ["2000", "3000"]
        );
    }

    #[test]
    fn a_wasm_container_takes_what_already_holds_and_refuses_grants() {
        let mut s = Security {
            non_root: true,
            read_only: true,
            ..Security::default()
        };
        s.drop_capability("ALL").unwrap();
        s.add_group("1000").unwrap();
        assert_eq!(s.check_in_process(None), Ok(()));
        assert!(
            s.check_in_process(Some("/srv"))
                .unwrap_err()
                .contains("working directory")
        );
        let mut with_cap = s.clone();
        with_cap.add_capability("NET_RAW").unwrap();
        assert!(
            with_cap
                .check_in_process(None)
                .unwrap_err()
                .contains("NET_RAW")
        );
        s.add_tmpfs(Tmpfs::parse("/tmp").unwrap()).unwrap();
        assert!(s.check_in_process(None).unwrap_err().contains("tmpfs /tmp"));
    }

    #[test]
    fn security_opts_accept_what_holds_and_refuse_the_rest_by_name() {
        for ok in [
            "no-new-privileges",
            "no-new-privileges:true",
            "no-new-privileges=true",
        ] {
            assert_eq!(check_security_opt(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("no-new-privileges:false", "no-new-privileges:false"),
            ("seccomp=unconfined", "seccomp=unconfined"),
            ("seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}", "seccomp"),
            ("apparmor=unconfined", "apparmor=unconfined"),
            ("label=disable", "label=disable"),
            ("systempaths=unconfined", "systempaths=unconfined"),
            ("whatever", "whatever"),
        ] {
            let e = check_security_opt(bad).unwrap_err();
            assert!(e.contains(says) && e.contains("not supported"), "{e}");
        }
        assert!(check_workdir("/srv/app").is_ok());
        assert!(check_workdir("srv").unwrap_err().contains("absolute"));
    }
}
