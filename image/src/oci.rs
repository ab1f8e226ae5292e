//! The OCI image-spec documents skiff reads and writes, as plain serde types.
//!
//! Field order is fixed by the structs and maps are sorted by key, so the same content
//! always serializes to the same bytes, and builds are reproducible down to the digest.

use std::collections::BTreeMap;

use skiff_spec::Labels;

use serde::{Deserialize, Serialize};
use skiff_spec::Digest;

/// `oci-layout` file content.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// Image manifest.
pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
/// Image index.
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
/// Standard image config.
pub const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed tar layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Gzip tar layer.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Zstandard tar layer.
pub const LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// CNCF Wasm artifact config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// CNCF Wasm artifact layer: the module or component itself.
pub const WASM_LAYER: &str = "application/wasm";
/// Annotation naming a tag in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation with the app kind skiff detected.
pub const KIND_ANNOTATION: &str = "dev.skiff.kind";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Free-form metadata (a store keeps a descriptor per tag: a small map).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub annotations: Labels,
    /// For manifests in an index: the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform of a manifest in an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `wasm`).
    pub architecture: String,
    /// OS (`linux`, `wasip1`, `wasip2`).
    pub os: String,
}

/// An image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_V1`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// For artifacts: what the artifact is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, in order.
    pub layers: Vec<Descriptor>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (the `index.json` of a layout, or a multi-platform image).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`INDEX_V1`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

/// This machine's architecture as OCI platforms name it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl Index {
    /// Whether a descriptor names a nested index (a multi-platform image).
    pub fn is_index(desc: &Descriptor) -> bool {
        Self::is_index_type(&desc.media_type)
    }

    /// Whether a media type is an index's: OCI's, or Docker's manifest list.
    pub fn is_index_type(media_type: &str) -> bool {
        media_type.starts_with(INDEX_V1) || media_type.contains("manifest.list")
    }

    /// The manifest to run from a multi-platform index: a Wasm one, else linux on this
    /// machine's architecture; an index of one manifest without a platform is that one.
    /// The error names what the index offers.
    pub fn choose_platform(&self) -> Result<&Descriptor, String> {
        let on = |os: Option<&str>, arch: &str| {
            self.manifests.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| os.is_none_or(|os| p.os == os) && p.architecture == arch)
            })
        };
        if let Some(d) = on(None, "wasm").or_else(|| on(Some("linux"), host_architecture())) {
            return Ok(d);
        }
        match self.manifests.as_slice() {
            [only] if only.platform.is_none() => Ok(only),
            [] => Err("the index lists no manifests".into()),
            all => {
                let offered: Vec<String> = all
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                Err(format!(
                    "the image has no linux/{} or wasm variant (it has: {})",
                    host_architecture(),
                    if offered.is_empty() {
                        "manifests without a platform".to_string()
                    } else {
                        offered.join(", ")
                    }
                ))
            }
        }
    }
}

/// The runtime settings an image carries: what `docker inspect` shows under `Config`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `KEY=VALUE` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `"80/tcp": {}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `uid[:gid]` (Linux images).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

/// The config blob of a skiff image: the OCI image config's fields (so other tools can
/// read it), plus, for static sites, which directory to serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// RFC 3339 creation time (fixed for reproducible builds).
    #[serde(default)]
    pub created: String,
    /// `wasm` for Wasm images and static sites.
    pub architecture: String,
    /// `wasip1`, `wasip2`, or `static`.
    pub os: String,
    /// Runtime settings.
    #[serde(default)]
    pub config: RunConfig,
    /// Digests of the layers (the CNCF Wasm config field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_digests: Vec<Digest>,
    /// The layers' content digests (OCI `rootfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    /// For static sites: the directory inside the image that is served.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "dev.skiff.siteRoot"
    )]
    pub site_root: Option<String>,
}

impl ImageConfig {
    /// The site root as a path relative to the image's root, or an error naming the
    /// field when it would climb out of the image.
    pub fn site_root_path(&self) -> Result<Option<std::path::PathBuf>, String> {
        self.site_root
            .as_deref()
            .map(|root| image_path("dev.skiff.siteRoot", root))
            .transpose()
    }
}

/// A path from an image (absolute or not, both mean "from the image's root") as clean
/// relative components. `..` is refused, not resolved: an image has no business naming
/// its parent. `field` names where the path came from, for the error.
pub fn image_path(field: &str, value: &str) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in std::path::Path::new(value).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "the image config's {field} {value:?} climbs out of the image with .."
                ));
            }
        }
    }
    if value.contains('\0') {
        return Err(format!(
            "the image config's {field} {value:?} holds a NUL byte"
        ));
    }
    Ok(out)
}

/// OCI `rootfs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests.
    pub diff_ids: Vec<Digest>,
}
