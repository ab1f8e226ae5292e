use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `docker run --restart`: what happens to a container when it stops or the node
/// restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Stays stopped.
    #[default]
    No,
    /// Comes back if it ended with a non-zero code (a node crash counts).
    OnFailure,
    /// Comes back whenever the node starts.
    Always,
}

impl RestartPolicy {
    /// Whether a container that ended with `code` (none: it never ran to an end, as
    /// after a node stopped) starts again.
    pub fn restarts(self, code: Option<i32>) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => code.is_some_and(|c| c != 0),
            Self::No => false,
        }
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(Self::No),
            "on-failure" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "invalid restart policy {other:?}: use no, on-failure or always"
            )),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::No => "no",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        })
    }
}

/// `-p [IP:]HOST:CONTAINER`: a host port that reaches the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Address the node listens on (default loopback, like every skiff listener).
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// The container's port (its EXPOSEd port).
    pub container_port: u16,
}

impl std::str::FromStr for PortMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid port mapping {s:?}: use HOST:CONTAINER or IP:HOST:CONTAINER, e.g. 8080:80"
            )
        };
        let spec = s.strip_suffix("/tcp").unwrap_or(s);
        let (rest, container) = spec.rsplit_once(':').ok_or_else(bad)?;
        let container_port: u16 = container.parse().map_err(|_| bad())?;
        let (host_ip, host) = match rest.rsplit_once(':') {
            Some((ip, port)) => (
                ip.trim_matches(['[', ']']).parse().map_err(|_| bad())?,
                port,
            ),
            None => (IpAddr::from([127, 0, 0, 1]), rest),
        };
        let host_port: u16 = host.parse().map_err(|_| bad())?;
        if host_port == 0 || container_port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host_ip,
            host_port,
            container_port,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}->{}/tcp",
            self.host_ip, self.host_port, self.container_port
        )
    }
}

/// Everything `skiff run` asks for: one type the CLI encodes and the API decodes, as the
/// query of `POST /v1/containers`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunParams {
    /// Image name or id.
    pub image: String,
    /// Container name; generated when absent.
    pub name: Option<String>,
    /// Env and limits (not replicas: a container is one instance).
    pub params: crate::DeployParams,
    /// `-p` mappings.
    pub ports: Vec<PortMapping>,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// Arguments replacing the image's CMD (`skiff run IMAGE ARGS...`).
    pub args: Option<Vec<String>>,
    /// `--cpus`, in thousandths (Linux containers).
    pub milli_cpus: Option<u32>,
    /// `--pids-limit` (Linux containers).
    pub pids_limit: Option<i64>,
    /// `--network host` (Linux containers).
    pub host_network: bool,
    /// `--rm`: removed once it stops.
    pub auto_remove: bool,
    /// `--entrypoint`: replaces the image's ENTRYPOINT (and with it its CMD, unless
    /// arguments are given), as Docker's.
    pub entrypoint: Option<Vec<String>>,
    /// `--label K=V`: the container's labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `-u user[:group]`: replaces the image's `User` (Linux containers).
    pub user: Option<String>,
    /// `-w`: replaces the image's `WorkingDir` (Linux containers).
    pub workdir: Option<String>,
    /// `--read-only`, `--cap-add`, `--cap-drop`, `--group-add`, `--tmpfs`.
    /// (`--security-opt no-new-privileges` is checked and holds for every container.)
    pub security: crate::Security,
}

impl RunParams {
    /// `--cpus` as thousandths, refusing what no cgroup could mean.
    pub fn milli_cpus(cpus: f64) -> Result<u32, crate::ParamError> {
        if !(0.001..=1024.0).contains(&cpus) {
            return Err(crate::ParamError {
                param: "cpus".into(),
                message: format!("{cpus} is outside 0.001..=1024"),
            });
        }
        Ok((cpus * 1000.0).round() as u32)
    }

    /// The query pairs [`RunParams::from_pairs`] reads back.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut q = self.params.to_pairs();
        if let Some(m) = self.milli_cpus {
            q.push(("cpus".into(), (f64::from(m) / 1000.0).to_string()));
        }
        if let Some(p) = self.pids_limit {
            q.push(("pids_limit".into(), p.to_string()));
        }
        let network = if self.host_network { "host" } else { "bridge" };
        q.push(("network".into(), network.into()));
        if self.auto_remove {
            q.push(("rm".into(), "true".into()));
        }
        for e in self.entrypoint.iter().flatten() {
            q.push(("entrypoint".into(), e.clone()));
        }
        if self.entrypoint.as_ref().is_some_and(Vec::is_empty) {
            q.push(("entrypoint".into(), String::new()));
        }
        for (k, v) in &self.labels {
            q.push(("label".into(), format!("{k}={v}")));
        }
        if let Some(u) = &self.user {
            q.push(("user".into(), u.clone()));
        }
        if let Some(w) = &self.workdir {
            q.push(("workdir".into(), w.clone()));
        }
        let sec = &self.security;
        if sec.read_only {
            q.push(("read_only".into(), "true".into()));
        }
        for c in &sec.cap_add {
            q.push(("cap_add".into(), c.clone()));
        }
        for c in &sec.cap_drop {
            q.push(("cap_drop".into(), c.clone()));
        }
        for g in &sec.groups {
            q.push(("group_add".into(), g.clone()));
        }
        for t in &sec.tmpfs {
            q.push((
                "tmpfs".into(),
                format!("{}:{}", t.path, t.options.join(",")),
            ));
        }
        for a in self.args.iter().flatten() {
            q.push(("arg".into(), a.clone()));
        }
        q.push(("image".into(), self.image.clone()));
        q.push(("restart".into(), self.restart.to_string()));
        if let Some(n) = &self.name {
            q.push(("name".into(), n.clone()));
        }
        for p in &self.ports {
            q.push((
                "publish".into(),
                format!("{}:{}:{}", p.host_ip, p.host_port, p.container_port),
            ));
        }
        q
    }

    /// Parses the query of `POST /v1/containers`, refusing unknown keys, bad values and
    /// what a single container cannot have (replicas).
    pub fn from_pairs<K, V>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, crate::ParamError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let bad = |param: &str, message: String| crate::ParamError {
            param: param.into(),
            message,
        };
        let flag = |param: &str, v: &str| match v {
            "" | "1" | "true" => Ok(true),
            "0" | "false" => Ok(false),
            other => Err(bad(param, format!("{other:?}: use true or false"))),
        };
        let mut run = RunParams::default();
        let mut image = None;
        let mut rest: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref().to_string());
            match k {
                "image" => image = Some(v),
                "name" => run.name = Some(v),
                "publish" => run.ports.push(v.parse().map_err(|e| bad(k, e))?),
                "restart" => run.restart = v.parse().map_err(|e| bad(k, e))?,
                "arg" => run.args.get_or_insert_with(Vec::new).push(v),
                // An empty one alone: no entrypoint at all (Docker's `--entrypoint ""`).
                "entrypoint" => {
                    let ep = run.entrypoint.get_or_insert_with(Vec::new);
                    if !v.is_empty() {
                        ep.push(v);
                    }
                }
                "label" => {
                    let (lk, lv) = v
                        .split_once('=')
                        .filter(|(lk, _)| !lk.is_empty())
                        .ok_or_else(|| bad(k, format!("{v:?} is not KEY=VALUE")))?;
                    run.labels.insert(lk.to_string(), lv.to_string());
                }
                "cpus" => {
                    let cpus: f64 = v
                        .parse()
                        .map_err(|_| bad(k, format!("{v:?} is not a number")))?;
                    run.milli_cpus = Some(Self::milli_cpus(cpus)?);
                }
                "pids_limit" => {
                    run.pids_limit = Some(
                        v.parse()
                            .map_err(|_| bad(k, format!("{v:?} is not a number")))?,
                    );
                }
                "rm" => run.auto_remove = flag(k, &v)?,
                "user" => {
                    crate::security::check_user(&v).map_err(|e| bad(k, e))?;
                    run.user = Some(v);
                }
                "workdir" => {
                    crate::security::check_workdir(&v).map_err(|e| bad(k, e))?;
                    run.workdir = Some(v);
                }
                "read_only" => run.security.read_only = flag(k, &v)?,
                "cap_add" => run.security.add_capability(&v).map_err(|e| bad(k, e))?,
                "cap_drop" => run.security.drop_capability(&v).map_err(|e| bad(k, e))?,
                "group_add" => run.security.add_group(&v).map_err(|e| bad(k, e))?,
                "tmpfs" => {
                    let t = crate::Tmpfs::parse(&v).map_err(|e| bad(k, e))?;
                    run.security.add_tmpfs(t).map_err(|e| bad(k, e))?;
                }
                // Checked, and what it may say holds for every container already.
                "security_opt" => crate::security::check_security_opt(&v).map_err(|e| bad(k, e))?,
                "network" => {
                    run.host_network = match v.as_str() {
                        "host" => true,
                        "bridge" | "default" => false,
                        other => return Err(bad(k, format!("{other:?}: use bridge or host"))),
                    };
                }
                _ => rest.push((k.to_string(), v)),
            }
        }
        run.image = image
            .filter(|i| !i.is_empty())
            .ok_or_else(|| bad("image", "missing: name the image to run".into()))?;
        run.params = crate::DeployParams::from_pairs(rest)?;
        if run.auto_remove && run.restart != RestartPolicy::No {
            return Err(bad(
                "rm",
                "conflicting options: --restart and --rm (a container removed when it stops is never restarted)".into(),
            ));
        }
        if run.params.replicas.is_some() || run.params.image.is_some() {
            return Err(bad(
                "replicas",
                "a container is one instance; deploy an app for replicas".into(),
            ));
        }
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_policies() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(p.to_string(), "127.0.0.1:8080->80/tcp");
        let p: PortMapping = "0.0.0.0:80:80/tcp".parse().unwrap();
        assert_eq!(
            (p.host_ip.to_string().as_str(), p.host_port),
            ("0.0.0.0", 80)
        );
        for bad in ["80", "x:80", "8080:y", "0:80", "1.2.3:80:80", "70000:80"] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
        assert_eq!("always".parse::<RestartPolicy>(), Ok(RestartPolicy::Always));
        let run = RunParams {
            image: "web:v1".into(),
            name: Some("w".into()),
            ports: vec!["8080:80".parse().unwrap()],
            restart: RestartPolicy::OnFailure,
            args: Some(vec!["httpd".into(), "-f".into()]),
            milli_cpus: Some(RunParams::milli_cpus(0.5).unwrap()),
            pids_limit: Some(100),
            host_network: true,
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            labels: [("team".to_string(), "web".to_string())].into(),
            user: Some("1000:1000".into()),
            workdir: Some("/srv".into()),
            security: crate::Security {
                read_only: true,
                cap_add: vec!["NET_RAW".into()],
                cap_drop: vec!["ALL".into()],
                groups: vec!["50".into(), "staff".into()],
                tmpfs: vec![crate::Tmpfs::parse("/tmp:size=1m,exec").unwrap()],
                ..Default::default()
            },
            ..RunParams::default()
        };
        assert_eq!(RunParams::from_pairs(run.to_pairs()), Ok(run));
        let sec = |k: &str, v: &str| RunParams::from_pairs([("image", "x"), (k, v)]);
        assert_eq!(
            sec("cap_add", "cap_net_admin").unwrap().security.cap_add,
            ["NET_ADMIN"]
        );
        assert!(sec("security_opt", "no-new-privileges:true").is_ok());
        for (k, v) in [
            ("user", "4294967295"),
            ("workdir", "relative"),
            ("read_only", "maybe"),
            ("cap_add", "EVERYTHING"),
            ("cap_drop", ""),
            ("tmpfs", "/proc"),
            ("security_opt", "seccomp=unconfined"),
            ("privileged", "true"),
        ] {
            let e = sec(k, v).unwrap_err();
            assert_eq!(e.param, k, "{e}");
        }
        let no_entrypoint = RunParams {
            image: "x".into(),
            entrypoint: Some(vec![]),
            ..RunParams::default()
        };
        assert_eq!(
            RunParams::from_pairs(no_entrypoint.to_pairs()),
            Ok(no_entrypoint)
        );
        assert!(RunParams::from_pairs([("image", "x"), ("label", "novalue")]).is_err());
        let rm = RunParams {
            image: "x".into(),
            auto_remove: true,
            ..RunParams::default()
        };
        assert_eq!(RunParams::from_pairs(rm.to_pairs()), Ok(rm));
        let e = RunParams::from_pairs([("image", "x"), ("rm", "true"), ("restart", "always")])
            .unwrap_err();
        assert!(e.to_string().contains("--restart and --rm"), "{e}");
        assert!(RunParams::from_pairs([("image", "x"), ("replicas", "2")]).is_err());
        assert!(RunParams::from_pairs([("image", "x"), ("cpus", "0")]).is_err());
        assert!(RunParams::from_pairs([("image", "x"), ("network", "none")]).is_err());
        assert!(RunParams::from_pairs([("name", "x")]).is_err(), "no image");
        assert!(
            "sometimes"
                .parse::<RestartPolicy>()
                .unwrap_err()
                .contains("no, on-failure or always")
        );
    }
}
