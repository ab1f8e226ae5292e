//! Builds from `skiff.toml`: the manifest format and its plan.

use super::*;

/// `skiff.toml`, version 1. Unknown fields are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    pub(super) version: u32,
    pub(super) kind: ManifestKind,
    pub(super) wasm: Option<PathBuf>,
    pub(super) root: Option<PathBuf>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) ports: Vec<u16>,
    /// Paths the app answers: `/api/...` (prefix) or `/health` (exact).
    #[serde(default)]
    pub(super) routes: Vec<String>,
    #[serde(default)]
    pub(super) limits: ManifestLimits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ManifestKind {
    Wasm,
    Static,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManifestLimits {
    pub(super) memory: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) concurrency: Option<u32>,
}

pub(super) fn plan_from_manifest(
    context: &Context,
    budget: &mut Budget,
    text: &str,
    file: &str,
) -> Result<Plan, BuildError> {
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
    let content = match m.kind {
        ManifestKind::Wasm => {
            let wasm = m.wasm.ok_or_else(|| {
                other(format!(
                    "{file}: kind = \"wasm\" needs wasm = \"path/to/app.wasm\""
                ))
            })?;
            let refused = |why: String| refused(format!("{file}: wasm = {wasm:?}: {why}"));
            let source = context.source(&wasm.to_string_lossy()).map_err(refused)?;
            let SourceKind::File(f) = source.kind else {
                return Err(refused("not a regular file".into()));
            };
            Content::Wasm(read_file(f, &source.rel, budget).map_err(refused)?.0)
        }
        ManifestKind::Static => {
            let root = m
                .root
                .ok_or_else(|| other(format!("{file}: kind = \"static\" needs root = \"dir\"")))?;
            let refused = |why: String| refused(format!("{file}: root = {root:?}: {why}"));
            let source = context.source(&root.to_string_lossy()).map_err(refused)?;
            if !source.is_dir() {
                return Err(refused("not a directory".into()));
            }
            let ignore = context.dockerignore()?;
            let mut files = BTreeMap::new();
            collect(source, "site", &ignore, budget, &mut files).map_err(refused)?;
            links_hold_nothing(&files)?;
            Content::Static {
                files,
                root: "/site".into(),
            }
        }
    };
    Ok(Plan { content, run })
}
