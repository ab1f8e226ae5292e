//! skiff's shared vocabulary.
//!
//! Everything two crates (or a client and a node) must agree on lives here, as plain data
//! with no I/O: validated names ([`AppName`]), content digests ([`Digest`]), what an app is
//! and how it is bounded ([`AppSpec`], [`Limits`]), the JSON the API speaks ([`api`]),
//! the Kubernetes objects skiff applies ([`k8s`]) and the manifests they come in
//! ([`manifest`]), the OpenAPI document kubectl validates them with ([`openapi`]) and
//! the patches that change them ([`patch`]), Kubernetes' protobuf bodies read as the
//! JSON they stand for ([`protobuf`]), and what confines a Linux container
//! ([`security`]).
//! No tokio, no wasmtime: this crate is cheap to depend on from anywhere.

#![deny(missing_docs)]

pub mod api;
mod app;
pub mod cluster;
mod container;
mod digest;
pub mod k8s;
mod limits;
pub mod manifest;
pub mod map;
mod name;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod security;

pub use app::{AppKind, AppSpec, DeployParams, ParamError, parse_env, route_matches};
pub use container::{PortMapping, RestartPolicy, RunParams};
pub use digest::{Digest, DigestError};
pub use limits::{Limits, parse_bytes, parse_duration};
pub use map::{Labels, SortedMap, Str};
pub use name::{AppName, NameError};
pub use security::{Security, Tmpfs};
