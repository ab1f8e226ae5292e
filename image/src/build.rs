//! `skiff build`: a directory plus `skiff.toml` or a Dockerfile, into an image.
//!
//! Both inputs become one [`Plan`]: a Wasm binary or a set of files with a site root,
//! plus runtime settings. The image is then written with fixed timestamps
//! (`SOURCE_DATE_EPOCH`, else 0) and sorted entries, so the same inputs always give the
//! same digest.

mod context;
mod dockerfile;
mod skiff_toml;
use context::*;
pub use context::{BuildFile, Context, ContextLimits, MAX_BUILD_FILE_BYTES};
use dockerfile::*;
use skiff_toml::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use skiff_spec::{AppKind, parse_bytes, parse_duration};

use crate::layer::{LayerEntry, write_tar};
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
    /// Something in the context (or a path naming it) skiff will not read: a path that
    /// leaves it, itself or through a link; one that is missing or not a regular file;
    /// more than [`ContextLimits`] allow. The message names the path, never content.
    #[error("{0}")]
    Context(String),
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
        /// Image path (no leading `/`) to a file or a link.
        files: BTreeMap<String, LayerEntry>,
        /// Absolute directory served.
        root: String,
    },
}

/// Builds `context` with `file` (a path inside the context, relative to it; default:
/// `skiff.toml`, else `Dockerfile`) into `store`. Returns the manifest descriptor and
/// the app kind.
pub fn build(
    store: &ImageStore,
    context: &Path,
    file: Option<&Path>,
) -> Result<(Descriptor, AppKind), BuildError> {
    let context = Context::open(context)?;
    let file = context.build_file(file)?;
    write(store, context.plan(&file.text, &file.name)?)
}

/// Reads a build file's `text` (`file` names it: one ending in `.toml` is a skiff.toml,
/// anything else a Dockerfile) into a plan, taking files from the directory `context`.
pub fn plan(text: &str, file: &str, context: &Path) -> Result<Plan, BuildError> {
    Context::open(context)?.plan(text, file)
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
            let tar = write_tar(&files, created.0);
            let digest = store.blobs().put(&tar).map_err(|e| other(e.to_string()))?;
            let layer = Descriptor {
                media_type: oci::LAYER_TAR.into(),
                digest,
                size: tar.len() as u64,
                annotations: skiff_spec::Labels::new(),
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
        let (d, kind) = build(&store, ctx.path(), Some(Path::new("Dockerfile"))).unwrap();
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
                "Dockerfile:1: FROM IMAGE AS NAME: named stages",
            ),
            (
                b"FROM ubuntu\n",
                "Dockerfile:1: FROM: this base image is not supported",
            ),
            (b"FROM nginx\nFROM nginx\n", "Dockerfile:2: a second FROM"),
            (
                b"FROM nginx\nCOPY --from=build /a /b\n",
                "Dockerfile:2: COPY --from is not supported",
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
