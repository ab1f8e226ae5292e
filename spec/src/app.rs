use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{AppName, Digest, Limits, parse_bytes, parse_duration};

/// What kind of workload an image holds. Detected from the binary at upload, never taken
/// from a flag, and stored with the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// A component exporting `wasi:http/incoming-handler` (WASI 0.2); one instance per
    /// request.
    Http,
    /// A WASI preview1 command module run CGI-style (RFC 3875) per request.
    Wagi,
    /// Files from an image, served by the node (index.html, ETags, ranges...).
    Static,
    /// A Linux container image run by runc; the node forwards HTTP to it.
    Oci,
}

impl fmt::Display for AppKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppKind::Http => "http",
            AppKind::Wagi => "wagi",
            AppKind::Static => "static",
            AppKind::Oci => "oci",
        })
    }
}

/// The desired state of one app: which image, how many replicas, under which bounds.
/// This is what is persisted; everything running is derived from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's name, also its host label.
    pub name: AppName,
    /// The image (content digest of the wasm binary) the app runs.
    pub image: Digest,
    /// What the image holds.
    pub kind: AppKind,
    /// Environment variables given to every instance.
    pub env: BTreeMap<String, String>,
    /// Bounds of every container of the app.
    pub limits: Limits,
    /// How many containers to keep running.
    pub replicas: u32,
    /// Hosts (`host` or `host:port`, or `*`) the app may send outgoing HTTP requests to.
    /// Empty: none.
    pub allowed_hosts: Vec<String>,
    /// Paths the app answers, Spin-style: `/api/...` is a prefix, `/health` exact.
    /// Empty: every path. Set by the image (`routes` in skiff.toml).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Arguments after argv\[0\]: the image's ENTRYPOINT arguments, then its CMD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// Whether `path` is one of `routes` (an empty list takes every path).
pub fn route_matches(routes: &[String], path: &str) -> bool {
    routes.is_empty()
        || routes.iter().any(|r| match r.strip_suffix("/...") {
            Some(prefix) => {
                prefix.is_empty()
                    || path == prefix
                    || path
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            None => path == r,
        })
}

/// The knobs of a deploy, as the API takes them in the query string of
/// `PUT /v1/apps/{name}` and the CLI sends them. Absent knobs keep their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeployParams {
    /// `env=KEY=VALUE`, repeatable.
    pub env: Vec<(String, String)>,
    /// `memory=64MiB`.
    pub memory_bytes: Option<u64>,
    /// `timeout=2s`.
    pub timeout: Option<Duration>,
    /// `replicas=2`.
    pub replicas: Option<u32>,
    /// `concurrency=16`.
    pub concurrency: Option<u32>,
    /// `allow_host=api.example.com`, repeatable.
    pub allowed_hosts: Vec<String>,
    /// `image=hello:v2`: deploy an image already on the node instead of an uploaded body.
    pub image: Option<String>,
}

/// A deploy parameter that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter {param}: {message}")]
pub struct ParamError {
    /// The parameter's name.
    pub param: String,
    /// What was wrong with it.
    pub message: String,
}

fn param_err(param: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        param: param.to_string(),
        message: message.into(),
    }
}

impl DeployParams {
    /// The most replicas one app may ask for on a node.
    pub const MAX_REPLICAS: u32 = 100;

    /// Parses query pairs, refusing unknown keys and out-of-range values.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, ParamError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut p = DeployParams::default();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            match k {
                "env" => p.env.push(parse_env(v)?),
                "memory" => {
                    let bytes = parse_bytes(v).map_err(|e| param_err(k, e))?;
                    if !((1 << 20)..=Limits::MAX_MEMORY_BYTES).contains(&bytes) {
                        return Err(param_err(k, format!("{v} is outside 1MiB..=4GiB")));
                    }
                    p.memory_bytes = Some(bytes);
                }
                "timeout" => {
                    let t = parse_duration(v).map_err(|e| param_err(k, e))?;
                    if t.is_zero() || t.as_millis() > u128::from(Limits::MAX_TIMEOUT_MS) {
                        return Err(param_err(k, format!("{v} is outside 1ms..=1h")));
                    }
                    p.timeout = Some(t);
                }
                "replicas" => {
                    let n: u32 = v
                        .parse()
                        .map_err(|_| param_err(k, format!("{v:?} is not a number")))?;
                    if n > Self::MAX_REPLICAS {
                        return Err(param_err(
                            k,
                            format!("{n} is more than {}", Self::MAX_REPLICAS),
                        ));
                    }
                    p.replicas = Some(n);
                }
                "concurrency" => {
                    let n: u32 = v
                        .parse()
                        .map_err(|_| param_err(k, format!("{v:?} is not a number")))?;
                    if n == 0 || n > Limits::MAX_CONCURRENCY {
                        return Err(param_err(
                            k,
                            format!("{n} is outside 1..={}", Limits::MAX_CONCURRENCY),
                        ));
                    }
                    p.concurrency = Some(n);
                }
                "allow_host" => {
                    if v.is_empty() || v.contains(['/', ' ', '@']) {
                        return Err(param_err(k, format!("{v:?} is not a host or host:port")));
                    }
                    p.allowed_hosts.push(v.to_ascii_lowercase());
                }
                "image" => {
                    if v.is_empty() {
                        return Err(param_err(k, "empty image reference"));
                    }
                    p.image = Some(v.to_string());
                }
                other => {
                    return Err(param_err(
                        other,
                        "unknown parameter (known: env, memory, timeout, replicas, concurrency, allow_host, image)",
                    ));
                }
            }
        }
        Ok(p)
    }

    /// The query pairs that [`DeployParams::from_pairs`] reads back.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in &self.env {
            out.push(("env".into(), format!("{k}={v}")));
        }
        if let Some(m) = self.memory_bytes {
            out.push(("memory".into(), m.to_string()));
        }
        if let Some(t) = self.timeout {
            out.push(("timeout".into(), format!("{}ms", t.as_millis())));
        }
        if let Some(r) = self.replicas {
            out.push(("replicas".into(), r.to_string()));
        }
        if let Some(c) = self.concurrency {
            out.push(("concurrency".into(), c.to_string()));
        }
        for h in &self.allowed_hosts {
            out.push(("allow_host".into(), h.clone()));
        }
        if let Some(image) = &self.image {
            out.push(("image".into(), image.clone()));
        }
        out
    }

    /// The spec these parameters describe for `name` running `image`.
    pub fn into_spec(self, name: AppName, image: Digest, kind: AppKind) -> AppSpec {
        let defaults = Limits::default();
        AppSpec {
            name,
            image,
            kind,
            env: self.env.into_iter().collect(),
            limits: Limits {
                memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
                timeout_ms: self
                    .timeout
                    .map_or(defaults.timeout_ms, |t| t.as_millis() as u64),
                concurrency: self.concurrency.unwrap_or(defaults.concurrency),
            },
            replicas: self.replicas.unwrap_or(1),
            allowed_hosts: self.allowed_hosts,
            routes: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// Parses `KEY=VALUE` as `docker run -e` takes it.
pub fn parse_env(text: &str) -> Result<(String, String), ParamError> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| param_err("env", format!("{text:?} is not KEY=VALUE")))?;
    if k.is_empty() || k.contains('\0') || v.contains('\0') {
        return Err(param_err(
            "env",
            format!("{text:?} has an empty key or a NUL byte"),
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_fill_defaults() {
        let p = DeployParams::from_pairs([
            ("env", "GREETING=hi"),
            ("env", "EMPTY="),
            ("memory", "64MiB"),
            ("timeout", "2s"),
            ("replicas", "2"),
            ("allow_host", "Example.com:8080"),
            ("image", "hello:v2"),
        ])
        .unwrap();
        assert_eq!(DeployParams::from_pairs(p.to_pairs()).unwrap(), p);
        let digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let spec = p.into_spec(AppName::new("hello").unwrap(), digest, AppKind::Http);
        assert_eq!(spec.env["GREETING"], "hi");
        assert_eq!(spec.env["EMPTY"], "");
        assert_eq!(spec.limits.memory_bytes, 64 << 20);
        assert_eq!(spec.limits.timeout_ms, 2000);
        assert_eq!(spec.limits.concurrency, Limits::default().concurrency);
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.allowed_hosts, ["example.com:8080"]);
    }

    #[test]
    fn routes_match_like_spin() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(route_matches(&[], "/anything"));
        assert!(route_matches(&r(&["/..."]), "/x/y"));
        let api = r(&["/api/...", "/health"]);
        assert!(route_matches(&api, "/api"));
        assert!(route_matches(&api, "/api/users/1"));
        assert!(route_matches(&api, "/health"));
        assert!(!route_matches(&api, "/apix"));
        assert!(!route_matches(&api, "/health/deep"));
        assert!(!route_matches(&api, "/"));
    }

    #[test]
    fn params_name_what_is_wrong() {
        let cases = [
            (("memory", "lots"), "memory"),
            (("memory", "10g"), "memory"),
            (("timeout", "0s"), "timeout"),
            (("replicas", "1000"), "replicas"),
            (("replicas", "-1"), "replicas"),
            (("concurrency", "0"), "concurrency"),
            (("env", "NOEQUALS"), "env"),
            (("env", "=v"), "env"),
            (("colour", "blue"), "colour"),
        ];
        for ((k, v), param) in cases {
            let err = DeployParams::from_pairs([(k, v)]).unwrap_err();
            assert_eq!(err.param, param, "{k}={v}: {err}");
        }
    }
}
