//! Images: where uploaded binaries live and what they are.
//!
//! - [`BlobStore`]: content-addressed blobs on disk (`blobs/sha256/<hex>`). A blob is
//!   streamed into a temp file under a size cap while it is hashed, fsynced, and only then
//!   renamed into place, so a crash or a refused upload never leaves half a blob behind.
//! - [`detect_kind`]: validates a binary with `wasmparser` and tells which app kind it is
//!   (`wasi:http` component or WAGI command module), or says exactly why it is neither.
//!
//! This crate starts small: the OCI layout, tags, build, save/load and registry transport
//! grow here with the images issue.

#![deny(missing_docs)]

pub mod archive;
pub mod build;
mod detect;
pub mod layer;
mod layout;
pub mod oci;
mod reference;
mod store;

pub use detect::{DetectError, detect_kind};
pub use layout::{ImageError, ImageInfo, ImageStore, ImageSummary, Runnable};
pub use reference::{ImageName, NameError};
pub use store::{BlobStore, BlobWriter, StagedBlob, StoreError};
