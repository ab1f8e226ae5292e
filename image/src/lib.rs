//! Images: what they are on disk and how they are made.
//!
//! - [`BlobStore`]: content-addressed blobs (`blobs/sha256/<hex>`), streamed into a temp
//!   file under a size cap while hashed, fsynced, and only then renamed into place, so a
//!   crash or a refused upload never leaves half a blob behind.
//! - [`ImageStore`]: the node's images as an OCI image layout (`oci-layout`,
//!   `index.json` naming each tag), Wasm images in the CNCF Wasm artifact format, static
//!   sites as a standard image with one tar layer and a site root in the config.
//! - [`build`]: `skiff.toml` or a Dockerfile subset into a reproducible image.
//! - [`archive`]: `save`/`load` of OCI layout tarballs, checking every digest and
//!   reference before committing anything. [`layer`]: deterministic tar layers and their
//!   safe extraction (whiteouts; nothing escapes the tree).
//! - [`detect_kind`]: which app kind a binary is, or exactly why it is none.
//! - [`disk`]: the free space a write must leave on the data dir's disk.
//!
//! Map change: registry transport (push/pull) lives in the CLI (`cli/src/registry.rs`),
//! not here. It needs an async HTTP client and this crate stays free of tokio; and the
//! CLI moves images through a scratch layout of this crate plus `save`/`load`, so the
//! node never makes outbound registry connections.

#![deny(missing_docs)]

pub mod archive;
pub mod build;
mod detect;
pub mod disk;
pub mod layer;
mod layout;
pub mod oci;
mod reference;
mod store;

pub use detect::{DetectError, detect_kind};
pub use layout::{ImageError, ImageInfo, ImageStore, ImageSummary, Runnable};
pub use reference::{ImageName, NameError};
pub use store::{BlobStore, BlobWriter, StagedBlob, StoreError};
