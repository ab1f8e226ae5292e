//! `docker build`: a context streamed to a spool, built as `skiff build` builds, the
//! output as Docker's JSON message stream.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::*;
use crate::Shared;
use crate::api::http::query_pairs;

/// The build's query keys that change the result and that skiff does not take.
pub(super) const BUILD_UNSUPPORTED: &[&str] =
    &["buildargs", "labels", "target", "platform", "extrahosts"];

/// `POST /build?t=NAME&dockerfile=PATH`, the body a tar (or gzipped tar) of the context,
/// as the legacy builder sends it: built with skiff's Dockerfile subset (or skiff.toml),
/// answered with Docker's JSON progress stream; a build that fails is an `error` in it.
pub(super) async fn build(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    for key in BUILD_UNSUPPORTED {
        if let Some(v) = param(&pairs, key).filter(|v| !v.is_empty() && *v != "{}" && *v != "[]") {
            return Err(bad(format!(
                "build option {key}={v} is not supported by skiff"
            )));
        }
    }
    let tags = pairs
        .iter()
        .filter(|(k, _)| k == "t")
        .map(|(_, v)| skiff_image::ImageName::parse(familiar(v)).map_err(|e| bad(e.to_string())))
        .collect::<Answer<Vec<_>>>()?;
    let dockerfile = param(&pairs, "dockerfile")
        .filter(|d| !d.is_empty())
        .map(String::from);
    let mut spool =
        crate::api::images::spool(&headers, body, shared.config.upload_cap, "build context")
            .await?;
    let (store, limits, scratch) = (
        shared.images.store().clone(),
        shared.config.extract,
        shared.config.data_dir.clone(),
    );
    let outcome = tokio::task::spawn_blocking(
        move || -> Result<(Vec<String>, skiff_spec::Digest, Vec<String>), BuildFailure> {
            use skiff_image::build::{BuildError, Context};
            use std::io::{Read as _, Seek as _};
            let failed = BuildFailure::Failed;
            let dir = tempfile::Builder::new()
                .prefix(crate::images::BUILD_SCRATCH)
                .tempdir_in(&scratch)
                .map_err(|e| failed(format!("no scratch directory: {e}")))?;
            let mut magic = [0u8; 2];
            spool.rewind().map_err(|e| failed(e.to_string()))?;
            let gzipped = spool.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
            spool.rewind().map_err(|e| failed(e.to_string()))?;
            let reader: Box<dyn std::io::Read> = if gzipped {
                Box::new(flate2::read::GzDecoder::new(spool))
            } else {
                Box::new(spool)
            };
            skiff_image::layer::extract_stream(reader, dir.path(), limits).map_err(|e| {
                let message = format!("the build context: {e}");
                // A context the client crafted (a link out, past a limit) is its fault.
                match e {
                    skiff_image::layer::LayerError::Io { .. } => BuildFailure::Failed(message),
                    _ => BuildFailure::Refused(message),
                }
            })?;
            // Messages name files as the client knows them, not where the node put them.
            let inside = format!("{}/", dir.path().display());
            let fail = |e: BuildError| match e {
                BuildError::Context(m) => BuildFailure::Refused(m.replace(&inside, "")),
                e => BuildFailure::Failed(e.to_string().replace(&inside, "")),
            };
            // The context is a client's: every path in it, the build file's first, is
            // opened beneath it (the node reads it as root).
            let context = Context::open(dir.path()).map_err(fail)?;
            let file = match &dockerfile {
                Some(name) => {
                    let rel = std::path::Path::new(name);
                    if rel.is_absolute()
                        || rel
                            .components()
                            .any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(BuildFailure::Refused(format!(
                            "dockerfile {name:?} is not a path inside the build context"
                        )));
                    }
                    Some(rel)
                }
                None => ["Dockerfile", "skiff.toml"]
                    .into_iter()
                    .find(|n| context.contains(n))
                    .map(std::path::Path::new),
            };
            let file = context.build_file(file).map_err(fail)?;
            let steps = instructions(&file.text);
            let plan = context.plan(&file.text, &file.name).map_err(fail)?;
            let (desc, _kind) = skiff_image::build::write(&store, plan).map_err(fail)?;
            let mut tagged = Vec::new();
            for t in &tags {
                store.tag(t, &desc).map_err(|e| failed(e.to_string()))?;
                tagged.push(t.to_string());
            }
            Ok((steps, desc.digest, tagged))
        },
    )
    .await
    .unwrap_or_else(|e| Err(BuildFailure::Failed(format!("the build failed: {e}"))));
    // Another node holds a copy before the build is reported done, as with `skiff load`.
    let outcome = match outcome {
        Ok((steps, digest, tagged)) => {
            let picked: Vec<(Option<skiff_image::ImageName>, skiff_spec::Digest)> = tagged
                .iter()
                .map(|t| (skiff_image::ImageName::parse(t).ok(), digest))
                .collect();
            let picked = if picked.is_empty() {
                vec![(None, digest)]
            } else {
                picked
            };
            match shared.images.replicate(&picked).await {
                Ok(()) => Ok((steps, digest, tagged)),
                Err(e) => Err(format!("the image was built but not replicated: {e}")),
            }
        }
        // A context the node will not read is refused as Docker refuses a bad request
        // (`Error response from daemon`), naming the path; nothing was built.
        Err(BuildFailure::Refused(message)) => {
            return Err(bad(message.lines().next().unwrap_or_default()));
        }
        Err(BuildFailure::Failed(message)) => Err(message),
    };
    let mut events = Vec::new();
    match outcome {
        Ok((steps, digest, tagged)) => {
            let n = steps.len();
            for (i, s) in steps.iter().enumerate() {
                events.push(json!({"stream": format!("Step {}/{n} : {s}\n", i + 1)}));
            }
            events.push(json!({"aux": {"ID": digest.to_string()}}));
            events.push(json!({"stream": format!("Successfully built {}\n", &digest.hex()[..12])}));
            for t in tagged {
                events.push(json!({"stream": format!("Successfully tagged {t}\n")}));
            }
        }
        Err(message) => {
            let message = message.lines().next().unwrap_or_default().to_string();
            events.push(json!({"errorDetail": {"message": message}, "error": message}));
        }
    }
    let body: String = events.iter().map(|e| format!("{e}\r\n")).collect();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Why a build did not finish.
pub(super) enum BuildFailure {
    /// The context, or a path the request named in it, is refused: answered 400.
    Refused(String),
    /// The build failed: answered as the `error` line of the progress stream.
    Failed(String),
}

/// A Dockerfile's instructions, one per entry (continuation lines joined), for the
/// build's `Step i/n` lines.
pub(super) fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}
