//! `skiff build`: a directory plus `skiff.toml` or a Dockerfile, into an image.
//!
//! Both inputs become one [`Plan`]: a Wasm binary or a set of files with a site root,
//! plus runtime settings. The image is then written with fixed timestamps
//! (`SOURCE_DATE_EPOCH`, else 0) and sorted entries, so the same inputs always give the
//! same digest.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use skiff_spec::{AppKind, parse_bytes, parse_duration};

use crate::layer::{LayerFile, write_tar};
use crate::oci::{self, Descriptor, ImageConfig, RunConfig};
use crate::{ImageStore, detect_kind};

/// The label carrying an image's routes (comma-separated).
pub const ROUTES_LABEL: &str = "dev.skiff.routes";

/// Where nginx images serve from; a `FROM nginx` build serves the same directory.
pub const NGINX_ROOT: &str = "/usr/share/nginx/html";

/// Why a build failed: one line naming the file (and line) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A problem in the build file.
    #[error("{file}:{line}: {message}")]
    At {
        /// The build file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A problem not tied to a line.
    #[error("{0}")]
    Other(String),
}

fn other(msg: impl Into<String>) -> BuildError {
    BuildError::Other(msg.into())
}

/// What to build.
#[derive(Debug)]
pub struct Plan {
    /// The content.
    pub content: Content,
    /// Env, ports, labels, cmd, workdir.
    pub run: RunConfig,
}

/// An image's content.
#[derive(Debug)]
pub enum Content {
    /// A Wasm binary.
    Wasm(Vec<u8>),
    /// Files by image path, and the directory to serve.
    Static {
        /// Image path (no leading `/`) to content.
        files: BTreeMap<String, (Vec<u8>, u32)>,
        /// Absolute directory served.
        root: String,
    },
}

/// Builds `context` with `file` (default: `skiff.toml`, else `Dockerfile`) into `store`.
/// Returns the manifest descriptor and the app kind.
pub fn build(
    store: &ImageStore,
    context: &Path,
    file: Option<&Path>,
) -> Result<(Descriptor, AppKind), BuildError> {
    let file = match file {
        Some(f) => f.to_path_buf(),
        None if context.join("skiff.toml").is_file() => context.join("skiff.toml"),
        None if context.join("Dockerfile").is_file() => context.join("Dockerfile"),
        None => {
            return Err(other(format!(
                "no skiff.toml or Dockerfile in {}",
                context.display()
            )));
        }
    };
    let text = fs::read_to_string(&file)
        .map_err(|e| other(format!("failed to read {}: {e}", file.display())))?;
    write(store, plan(&text, &file.display().to_string(), context)?)
}

/// Reads a build file's `text` (`file` names it: one ending in `.toml` is a skiff.toml,
/// anything else a Dockerfile) into a plan, taking files from `context`.
pub fn plan(text: &str, file: &str, context: &Path) -> Result<Plan, BuildError> {
    if file.ends_with(".toml") {
        plan_from_manifest(text, file, context)
    } else {
        plan_from_dockerfile(text, file, context)
    }
}

/// Writes a plan into the store.
pub fn write(store: &ImageStore, plan: Plan) -> Result<(Descriptor, AppKind), BuildError> {
    let created = source_date();
    let store_err = |e: crate::ImageError| other(e.to_string());
    match plan.content {
        Content::Wasm(wasm) => {
            let kind = detect_kind(&wasm).map_err(|e| other(e.to_string()))?;
            let layer = store.blobs().put(&wasm).map_err(|e| other(e.to_string()))?;
            let desc = store
                .add_wasm(layer, wasm.len() as u64, kind, plan.run, &created.1)
                .map_err(store_err)?;
            Ok((desc, kind))
        }
        Content::Static { files, root } => {
            let files = files
                .into_iter()
                .map(|(p, (data, mode))| (p, LayerFile { data, mode }))
                .collect();
            let tar = write_tar(&files, created.0);
            let digest = store.blobs().put(&tar).map_err(|e| other(e.to_string()))?;
            let layer = Descriptor {
                media_type: oci::LAYER_TAR.into(),
                digest,
                size: tar.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            };
            let config = ImageConfig {
                created: created.1,
                architecture: "wasm".into(),
                os: "static".into(),
                config: plan.run,
                layer_digests: vec![],
                rootfs: Some(oci::RootFs {
                    kind: "layers".into(),
                    diff_ids: vec![digest],
                }),
                site_root: Some(root),
            };
            let annotations =
                BTreeMap::from([(oci::KIND_ANNOTATION.to_string(), "static".to_string())]);
            let desc = store
                .write_image(oci::CONFIG_V1, &config, vec![layer], annotations)
                .map_err(store_err)?;
            Ok((desc, AppKind::Static))
        }
    }
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or 0, as seconds and RFC 3339.
fn source_date() -> (u64, String) {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    (secs, rfc3339(t))
}

/// `t` as RFC 3339 in UTC, to the second.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    // Days-to-civil (Howard Hinnant), to avoid a date crate for one format.
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---- skiff.toml -------------------------------------------------------------------

/// `skiff.toml`, version 1. Unknown fields are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    kind: ManifestKind,
    wasm: Option<PathBuf>,
    root: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<u16>,
    /// Paths the app answers: `/api/...` (prefix) or `/health` (exact).
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    limits: ManifestLimits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ManifestKind {
    Wasm,
    Static,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestLimits {
    memory: Option<String>,
    timeout: Option<String>,
    concurrency: Option<u32>,
}

fn plan_from_manifest(text: &str, file: &str, context: &Path) -> Result<Plan, BuildError> {
    let m: Manifest = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        BuildError::At {
            file: file.into(),
            line,
            message: e.message().to_string(),
        }
    })?;
    if m.version != 1 {
        return Err(other(format!(
            "{file}: version {} is not supported (this skiff reads version 1)",
            m.version
        )));
    }
    let mut run = RunConfig {
        labels: m.labels,
        ..Default::default()
    };
    run.env = m.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for p in m.ports {
        run.exposed_ports
            .insert(format!("{p}/tcp"), serde_json::json!({}));
    }
    // Limits travel as labels so any OCI tool shows them.
    if let Some(mem) = m.limits.memory {
        parse_bytes(&mem).map_err(|e| other(format!("{file}: limits.memory: {e}")))?;
        run.labels.insert("dev.skiff.memory".into(), mem);
    }
    if let Some(t) = m.limits.timeout {
        parse_duration(&t).map_err(|e| other(format!("{file}: limits.timeout: {e}")))?;
        run.labels.insert("dev.skiff.timeout".into(), t);
    }
    if let Some(c) = m.limits.concurrency {
        run.labels
            .insert("dev.skiff.concurrency".into(), c.to_string());
    }
    for r in &m.routes {
        if !r.starts_with('/') || r.contains([',', ' ', '?', '#']) {
            return Err(other(format!(
                "{file}: route {r:?} must be a path like /api/... or /health"
            )));
        }
    }
    if !m.routes.is_empty() {
        run.labels.insert(ROUTES_LABEL.into(), m.routes.join(","));
    }
    let content =
        match m.kind {
            ManifestKind::Wasm => {
                let wasm = m.wasm.ok_or_else(|| {
                    other(format!(
                        "{file}: kind = \"wasm\" needs wasm = \"path/to/app.wasm\""
                    ))
                })?;
                let path = inside(context, &wasm).ok_or_else(|| {
                    other(format!(
                        "{file}: wasm = {wasm:?} is outside the build context"
                    ))
                })?;
                Content::Wasm(fs::read(&path).map_err(|e| {
                    other(format!("{file}: failed to read {}: {e}", path.display()))
                })?)
            }
            ManifestKind::Static => {
                let root = m.root.ok_or_else(|| {
                    other(format!("{file}: kind = \"static\" needs root = \"dir\""))
                })?;
                let dir = inside(context, &root).ok_or_else(|| {
                    other(format!(
                        "{file}: root = {root:?} is outside the build context"
                    ))
                })?;
                let ignore = DockerIgnore::load(context)?;
                let mut files = BTreeMap::new();
                collect(context, &dir, "site", &ignore, &mut files)?;
                Content::Static {
                    files,
                    root: "/site".into(),
                }
            }
        };
    Ok(Plan { content, run })
}

/// `base/rel` if it stays inside `base`.
fn inside(base: &Path, rel: &Path) -> Option<PathBuf> {
    let base = base.canonicalize().ok()?;
    let joined = base.join(rel).canonicalize().ok()?;
    joined.starts_with(&base).then_some(joined)
}

/// Adds `src` (a file or a directory, recursively) under image path `dest`.
fn collect(
    context: &Path,
    src: &Path,
    dest: &str,
    ignore: &DockerIgnore,
    out: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), BuildError> {
    let ctx = context
        .canonicalize()
        .map_err(|e| other(format!("build context {}: {e}", context.display())))?;
    let rel = src
        .strip_prefix(&ctx)
        .unwrap_or(src)
        .to_string_lossy()
        .into_owned();
    if !rel.is_empty() && ignore.ignored(&rel) {
        return Ok(());
    }
    let meta = fs::symlink_metadata(src).map_err(|e| other(format!("{}: {e}", src.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(|e| other(format!("{}: {e}", src.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            let name = e
                .file_name()
                .expect("entries have names")
                .to_string_lossy()
                .into_owned();
            collect(context, &e, &format!("{dest}/{name}"), ignore, out)?;
        }
    } else if meta.is_file() || meta.file_type().is_symlink() {
        let real = src
            .canonicalize()
            .map_err(|e| other(format!("{}: {e}", src.display())))?;
        if !real.starts_with(&ctx) {
            return Err(other(format!(
                "{} links outside the build context",
                src.display()
            )));
        }
        let data = fs::read(&real).map_err(|e| other(format!("{}: {e}", src.display())))?;
        let mode = if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        out.insert(dest.trim_start_matches('/').to_string(), (data, mode));
    }
    Ok(())
}

// ---- .dockerignore ----------------------------------------------------------------

/// `.dockerignore` patterns: `*`, `?`, `**`, leading `!` to re-include, later lines win.
struct DockerIgnore {
    rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    fn load(context: &Path) -> Result<Self, BuildError> {
        let text = match fs::read_to_string(context.join(".dockerignore")) {
            Ok(t) => t,
            Err(_) => return Ok(Self { rules: vec![] }),
        };
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (negate, pat) = l.strip_prefix('!').map_or((false, l), |p| (true, p));
                let parts = pat
                    .trim_start_matches("./")
                    .trim_matches('/')
                    .split('/')
                    .map(str::to_string)
                    .collect();
                (negate, parts)
            })
            .collect();
        Ok(Self { rules })
    }

    fn ignored(&self, rel: &str) -> bool {
        let path: Vec<&str> = rel.split('/').collect();
        let mut ignored = false;
        for (negate, pat) in &self.rules {
            // A pattern matching a directory also matches everything beneath it.
            let hit = (1..=path.len()).any(|n| glob_path(pat, &path[..n]));
            if hit {
                ignored = !negate;
            }
        }
        ignored
    }
}

fn glob_path(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| glob_path(rest, &path[i..])),
        Some((p, rest)) => {
            !path.is_empty()
                && glob(p.as_bytes(), path[0].as_bytes())
                && glob_path(rest, &path[1..])
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

// ---- Dockerfile -------------------------------------------------------------------

enum Base {
    Scratch,
    Nginx,
}

/// An absolute path in the image, cleaned as Docker cleans COPY and WORKDIR paths:
/// `.` dropped, `..` taken back (never above `/`), a trailing `/` kept. No path in a
/// built image ever holds `..`.
fn image_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

fn plan_from_dockerfile(text: &str, file: &str, context: &Path) -> Result<Plan, BuildError> {
    let at = |line: usize, message: String| BuildError::At {
        file: file.into(),
        line,
        message,
    };
    let ignore = DockerIgnore::load(context)?;
    let mut base = None;
    let mut run = RunConfig::default();
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for (line, instr) in logical_lines(text) {
        let (word, args) = instr
            .split_once(char::is_whitespace)
            .map_or((instr.as_str(), ""), |(w, a)| (w, a.trim()));
        let word = word.to_ascii_uppercase();
        if base.is_none() && word != "FROM" {
            return Err(at(
                line,
                format!("{word} before FROM: a Dockerfile starts with FROM"),
            ));
        }
        match word.as_str() {
            "FROM" => {
                if base.is_some() {
                    return Err(at(
                        line,
                        "a second FROM: multi-stage builds are not supported".into(),
                    ));
                }
                let mut parts = args.split_whitespace();
                let image = parts.next().unwrap_or("");
                if parts.next().is_some() {
                    return Err(at(
                        line,
                        format!("FROM {args}: named stages are not supported"),
                    ));
                }
                let repo = image.split(['@', ':']).next().unwrap_or("");
                base = Some(match repo {
                    "scratch" => Base::Scratch,
                    "nginx"
                    | "library/nginx"
                    | "docker.io/library/nginx"
                    | "nginx-unprivileged" => Base::Nginx,
                    _ => {
                        return Err(at(
                            line,
                            format!(
                                "FROM {image} is not supported: skiff builds FROM scratch (a Wasm image) or FROM nginx (a static site)"
                            ),
                        ));
                    }
                });
            }
            "COPY" => {
                let words = words(args).map_err(|m| at(line, m))?;
                if let Some(flag) = words.iter().find(|w| w.starts_with("--")) {
                    return Err(at(line, format!("COPY {flag} is not supported")));
                }
                let (dest, srcs) = words
                    .split_last()
                    .filter(|(_, s)| !s.is_empty())
                    .ok_or_else(|| at(line, "COPY needs a source and a destination".into()))?;
                let dest = if dest.starts_with('/') {
                    image_abs(dest)
                } else {
                    image_abs(&format!("{}/{dest}", run.working_dir.trim_end_matches('/')))
                };
                for src in srcs {
                    let path = inside(context, Path::new(src)).ok_or_else(|| {
                        at(
                            line,
                            format!("COPY {src}: not found in the build context (or outside it)"),
                        )
                    })?;
                    let into_dir = dest.ends_with('/') || srcs.len() > 1 || path.is_dir();
                    let target = if path.is_dir() {
                        dest.trim_end_matches('/').to_string()
                    } else if into_dir {
                        format!(
                            "{}/{}",
                            dest.trim_end_matches('/'),
                            path.file_name()
                                .expect("files have names")
                                .to_string_lossy()
                        )
                    } else {
                        dest.clone()
                    };
                    collect(context, &path, &target, &ignore, &mut files)
                        .map_err(|e| at(line, e.to_string()))?;
                }
            }
            "ENV" => {
                let words = words(args).map_err(|m| at(line, m))?;
                if words.len() == 2 && !words[0].contains('=') {
                    run.env.push(format!("{}={}", words[0], words[1]));
                } else {
                    for w in words {
                        let (k, v) = w
                            .split_once('=')
                            .ok_or_else(|| at(line, format!("ENV {w}: expected KEY=VALUE")))?;
                        run.env.retain(|e| !e.starts_with(&format!("{k}=")));
                        run.env.push(format!("{k}={v}"));
                    }
                }
            }
            "EXPOSE" => {
                for p in args.split_whitespace() {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp") {
                        return Err(at(line, format!("EXPOSE {p}: expected PORT or PORT/tcp")));
                    }
                    run.exposed_ports
                        .insert(format!("{port}/{proto}"), serde_json::json!({}));
                }
            }
            "LABEL" => {
                for w in words(args).map_err(|m| at(line, m))? {
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| at(line, format!("LABEL {w}: expected KEY=VALUE")))?;
                    run.labels.insert(k.to_string(), v.to_string());
                }
            }
            "WORKDIR" => {
                let dir = args.trim();
                run.working_dir = if dir.starts_with('/') {
                    image_abs(dir)
                } else {
                    image_abs(&format!("{}/{dir}", run.working_dir.trim_end_matches('/')))
                };
            }
            "CMD" | "ENTRYPOINT" => {
                let argv = if args.trim_start().starts_with('[') {
                    serde_json::from_str::<Vec<String>>(args)
                        .map_err(|e| at(line, format!("{word}: invalid JSON array: {e}")))?
                } else {
                    words(args).map_err(|m| at(line, m))?
                };
                if word == "CMD" {
                    run.cmd = argv
                } else {
                    run.entrypoint = argv
                }
            }
            other => {
                return Err(at(
                    line,
                    format!(
                        "{other} is not supported (skiff builds run nothing; supported: FROM, COPY, ENV, EXPOSE, LABEL, WORKDIR, CMD, ENTRYPOINT)"
                    ),
                ));
            }
        }
    }
    let content = match base {
        None => return Err(other(format!("{file}: no FROM line"))),
        Some(Base::Nginx) => Content::Static {
            files,
            root: NGINX_ROOT.into(),
        },
        Some(Base::Scratch) => {
            // The binary is what ENTRYPOINT names, else the one .wasm copied in.
            let wanted = run
                .entrypoint
                .first()
                .map(|e| e.trim_start_matches('/').to_string());
            let key = match wanted {
                Some(w) => w,
                None => {
                    let wasm: Vec<&String> =
                        files.keys().filter(|k| k.ends_with(".wasm")).collect();
                    match wasm.as_slice() {
                        [one] => (*one).clone(),
                        _ => {
                            return Err(other(format!(
                                "{file}: FROM scratch needs ENTRYPOINT [\"/app.wasm\"] naming the copied module"
                            )));
                        }
                    }
                }
            };
            let (wasm, _) = files.remove(&key).ok_or_else(|| {
                other(format!(
                    "{file}: ENTRYPOINT /{key} was not copied into the image"
                ))
            })?;
            if let Some(extra) = files.keys().next() {
                return Err(other(format!(
                    "{file}: a Wasm image holds only its module; /{extra} was also copied"
                )));
            }
            // The module is the entrypoint; only its arguments remain.
            if !run.entrypoint.is_empty() {
                run.entrypoint.remove(0);
            }
            Content::Wasm(wasm)
        }
    };
    Ok(Plan { content, run })
}

/// Joins `\`-continued lines and drops comments and blanks; yields (first line, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if current.is_some() && line.starts_with('#') {
            continue;
        }
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        if let Some(cont) = line.strip_suffix('\\') {
            acc.push_str(cont);
            acc.push(' ');
            current = Some((start, acc));
        } else {
            acc.push_str(line);
            out.push((start, acc));
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    out
}

/// Splits shell-like words: whitespace-separated, with "double" or 'single' quotes.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut has = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                has = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (None, c) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (_, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {s:?}"));
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, data) in files {
            let path = dir.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        dir
    }

    fn wasm() -> Vec<u8> {
        wat::parse_str(r#"(module (func (export "_start")))"#).unwrap()
    }

    #[test]
    fn the_nginx_example_builds_unchanged_and_reproducibly() {
        let ctx = context(&[
            (
                "Dockerfile",
                b"FROM nginx:latest\nCOPY ./html /usr/share/nginx/html\nEXPOSE 80\n",
            ),
            ("html/index.html", b"<h1>hi</h1>"),
            ("html/css/site.css", b"body{}"),
            ("html/notes.tmp", b"ignored"),
            (".dockerignore", b"# temp files\n**/*.tmp\n"),
        ]);
        let out = tempfile::tempdir().unwrap();
        let store = ImageStore::open(out.path()).unwrap();
        let (a, kind) = build(&store, ctx.path(), None).unwrap();
        assert_eq!(kind, AppKind::Static);
        let (b, _) = build(&store, ctx.path(), None).unwrap();
        assert_eq!(a.digest, b.digest, "same inputs, same digest");
        let summary = store.summary(&a.digest).unwrap();
        assert!(summary.run.exposed_ports.contains_key("80/tcp"));
        let crate::Runnable::Static { layers, site_root } = summary.runnable else {
            panic!("static")
        };
        assert_eq!(site_root, NGINX_ROOT);
        let dest = tempfile::tempdir().unwrap();
        crate::layer::extract(store.blobs(), &layers, dest.path(), Default::default()).unwrap();
        let root = dest.path().join("usr/share/nginx/html");
        assert_eq!(fs::read(root.join("index.html")).unwrap(), b"<h1>hi</h1>");
        assert!(root.join("css/site.css").is_file());
        assert!(!root.join("notes.tmp").exists(), ".dockerignore applies");
    }

    #[test]
    fn scratch_wasm_images_and_manifests() {
        let ctx = context(&[
            ("Dockerfile", b"FROM scratch\nENV A=1 B=\"two words\"\nCOPY app.wasm /app.wasm\nENTRYPOINT [\"/app.wasm\", \"--flag\"]\nLABEL team=web\n"),
            ("app.wasm", &wasm()),
            ("skiff.toml", b"version = 1\nkind = \"wasm\"\nwasm = \"app.wasm\"\nroutes = [\"/api/...\", \"/health\"]\n[env]\nGREETING = \"hi\"\n[limits]\nmemory = \"64MiB\"\n"),
        ]);
        let out = tempfile::tempdir().unwrap();
        let store = ImageStore::open(out.path()).unwrap();
        let (d, kind) = build(&store, ctx.path(), Some(&ctx.path().join("Dockerfile"))).unwrap();
        assert_eq!(kind, AppKind::Wagi);
        let s = store.summary(&d.digest).unwrap();
        assert_eq!(s.run.env, ["A=1", "B=two words"]);
        assert_eq!(s.run.entrypoint, ["--flag"]);
        assert_eq!(s.run.labels["team"], "web");
        let manifest = store.manifest(&d.digest).unwrap();
        assert_eq!(manifest.config.media_type, oci::WASM_CONFIG);
        assert_eq!(manifest.layers[0].media_type, oci::WASM_LAYER);

        let (d, _) = build(&store, ctx.path(), None).unwrap();
        let s = store.summary(&d.digest).unwrap();
        assert_eq!(s.run.env, ["GREETING=hi"]);
        assert_eq!(s.run.labels["dev.skiff.memory"], "64MiB");
        assert_eq!(s.run.labels[ROUTES_LABEL], "/api/...,/health");
    }

    #[test]
    fn unsupported_lines_name_the_file_line_and_instruction() {
        let out = tempfile::tempdir().unwrap();
        let store = ImageStore::open(out.path()).unwrap();
        let cases: &[(&[u8], &str)] = &[
            (
                b"FROM nginx\nRUN apt-get update\n",
                "Dockerfile:2: RUN is not supported",
            ),
            (
                b"FROM nginx\n\n# c\nADD https://x/y /y\n",
                "Dockerfile:4: ADD is not supported",
            ),
            (
                b"FROM golang AS build\n",
                "Dockerfile:1: FROM golang AS build: named stages",
            ),
            (
                b"FROM ubuntu\n",
                "Dockerfile:1: FROM ubuntu is not supported",
            ),
            (b"FROM nginx\nFROM nginx\n", "Dockerfile:2: a second FROM"),
            (
                b"FROM nginx\nCOPY --from=build /a /b\n",
                "Dockerfile:2: COPY --from=build is not supported",
            ),
            (b"COPY a b\n", "Dockerfile:1: COPY before FROM"),
            (
                b"FROM nginx\nCOPY missing /x\n",
                "Dockerfile:2: COPY missing: not found",
            ),
            (b"FROM nginx\nCOPY ../etc /x\n", "Dockerfile:2: COPY ../etc"),
        ];
        for (text, want) in cases {
            let ctx = context(&[("Dockerfile", text)]);
            let err = build(&store, ctx.path(), None).unwrap_err().to_string();
            let err = err.replace(&format!("{}/", ctx.path().display()), "");
            assert!(err.starts_with(want), "want {want:?}, got {err:?}");
        }
        let ctx = context(&[(
            "skiff.toml",
            b"version = 1\nkind = \"wasm\"\nwasm = \"a.wasm\"\ncolour = \"blue\"\n",
        )]);
        let err = build(&store, ctx.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("skiff.toml:4") && err.contains("colour"),
            "{err}"
        );
        let ctx = context(&[("skiff.toml", b"version = 2\nkind = \"wasm\"\n")]);
        let err = build(&store, ctx.path(), None).unwrap_err().to_string();
        assert!(err.contains("version 2 is not supported"), "{err}");
    }

    #[test]
    fn copy_and_workdir_paths_are_cleaned_as_docker_cleans_them() {
        // Found by the `dockerfile` fuzz target: `..` in a COPY destination reached the
        // image's file list (and its layer) as written.
        let ctx = context(&[
            (
                "Dockerfile",
                b"FROM nginx\nCOPY ./html /usr/../share/nginx/../../../x/\nWORKDIR /a/../../w\nCOPY html y\n",
            ),
            ("html/index.html", b"hi"),
        ]);
        let plan = plan(
            &std::fs::read_to_string(ctx.path().join("Dockerfile")).unwrap(),
            "Dockerfile",
            ctx.path(),
        )
        .unwrap();
        let Content::Static { files, .. } = plan.content else {
            panic!("a static plan");
        };
        let paths: Vec<&String> = files.keys().collect();
        assert_eq!(paths, ["w/y/index.html", "x/index.html"]);
        assert_eq!(plan.run.working_dir, "/w");
        assert_eq!(image_abs("/a/./b/"), "/a/b/");
        assert_eq!(image_abs("/.."), "/");
    }

    #[test]
    fn dockerignore_globs() {
        let ig = DockerIgnore {
            rules: vec![
                (false, vec!["**".into(), "*.tmp".into()]),
                (false, vec!["secret".into()]),
                (true, vec!["keep.tmp".into()]),
            ],
        };
        assert!(ig.ignored("a/b/c.tmp"));
        assert!(ig.ignored("x.tmp"));
        assert!(!ig.ignored("keep.tmp"));
        assert!(ig.ignored("secret/inner/file"));
        assert!(!ig.ignored("public/index.html"));
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }
}
