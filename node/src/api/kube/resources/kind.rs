//! What a kind is, as the API serves it: its discovery entry ([`Resource`]) and the
//! [`Served`] trait, which carries everything else the generic code asks of a kind
//! (its OpenAPI definitions, defaults, field selectors, Table columns, and how the API
//! changes its objects). Each kind implements it in its own file under `resources/`,
//! registered once in `resources/mod.rs`, which re-exports what is here.
//!
//! A kind is a description, not a store: how its objects are rendered from where they
//! live is `served.rs`, when they are rendered the feed's (`feed.rs`), and their
//! versions and watches the store's (`store.rs`).

use axum::body::Bytes;
use axum::http::Method;
use axum::response::Response;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use skiff_spec::protobuf;

use super::super::Stored;
use super::Kind;
use crate::Shared;
use crate::api::error::ApiError;

/// A resource as discovery describes it.
pub(crate) struct Resource {
    pub(crate) kind: Kind,
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) kind_name: &'static str,
    /// `""` for the core group.
    pub(crate) group: &'static str,
    /// `v1`, `apps/v1`: the group and its version, as objects carry it.
    pub(crate) api_version: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) verbs: &'static [&'static str],
    pub(crate) short_names: &'static [&'static str],
    /// `["all"]` for the kinds `kubectl get all` shows.
    pub(crate) categories: &'static [&'static str],
}

/// The verbs of a kind only skiff writes.
pub(crate) const READ: &[&str] = &["get", "list", "watch"];

/// The verbs of a kind the API writes whole.
pub(crate) const WRITE: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

impl Resource {
    pub(crate) fn api_version(&self) -> &'static str {
        self.api_version
    }

    /// What the generic code asks of this kind.
    pub(crate) fn served(&self) -> &'static dyn Served {
        self.kind.served()
    }

    /// A `Status`'s `details` about object `name` of this resource.
    pub(crate) fn details(&self, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": self.plural});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }

    /// `deployments.apps`, `pods`: as Kubernetes names a resource in messages.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// A Table column: (name, type, priority, description). Priority 1 shows with `-o wide`.
pub(crate) type Column = (&'static str, &'static str, u8, &'static str);

/// A request to a subresource of one object (`deployments/web/scale`).
pub(crate) struct SubRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) sub: &'a str,
    pub(crate) method: Method,
    pub(crate) content_type: &'a str,
    pub(crate) body: Bytes,
}

/// An answer still to be computed, borrowing the request.
pub(crate) type Answer<'a, T> = BoxFuture<'a, Result<T, ApiError>>;

/// A kind of object the Kubernetes API serves. Everything but [`Served::resource`],
/// [`Served::columns`] and [`Served::cells`] has a default: that of a kind only skiff
/// writes, with no defaults, no field selectors beyond a name, and no OpenAPI schema.
pub(crate) trait Served: Sync {
    /// Its discovery entry.
    fn resource(&self) -> &'static Resource;

    /// Adds its OpenAPI v2 definitions (those kubectl validates a manifest of it with)
    /// to `definitions`, which hold [`skiff_spec::openapi::common`] already.
    fn schema(&self, _definitions: &mut Map<String, Value>) {}

    /// Discovery entries of its subresources (`deployments/scale`), after its own.
    fn subresources(&self) -> Vec<Value> {
        Vec::new()
    }

    /// The API server's defaulting pass of it (see [`super::defaults`]).
    fn defaults(&self) -> Option<fn(&mut Value)> {
        None
    }

    /// Fields a field selector may name beyond `metadata.name` and
    /// `metadata.namespace` (the API server registry's for the kind).
    fn field_selectors(&self) -> &'static [&'static str] {
        &[]
    }

    /// The columns `kubectl get` shows of it.
    fn columns(&self) -> &'static [Column];

    /// A Table row's cells for `object`, one per column.
    fn cells(&self, object: &Value) -> Vec<Value>;

    /// Its protobuf message, if bodies of it are read in protobuf.
    fn protobuf(&self) -> Option<protobuf::Kind> {
        None
    }

    /// Whether the API creates, replaces and patches it as a whole object: checked by
    /// the manifest reader and applied as `skiff apply` applies a file. Other kinds are
    /// skiff's (a patch may still change one, see [`Served::patched`]).
    fn writable(&self) -> bool {
        false
    }

    /// The object `name` as stored, to take the defaults it was served with out of what
    /// a client sends back (writable kinds that have defaults).
    fn stored(&self, _shared: &Shared, _name: &str) -> Option<Stored> {
        None
    }

    /// Applies `patched` (the object as served with a client's patch applied) when the
    /// kind takes patches other than as a whole object (a node's cordon); `None`: as
    /// an update of a writable kind.
    fn patched<'a>(
        &'a self,
        _shared: &'a Shared,
        _name: &'a str,
        _patched: &'a Value,
    ) -> Option<Answer<'a, Response>> {
        None
    }

    /// Deletes `object` (as served), if the API deletes objects of this kind.
    fn delete<'a>(
        &'a self,
        _shared: &'a Shared,
        _name: &'a str,
        _object: &'a Value,
    ) -> Option<Answer<'a, ()>> {
        None
    }

    /// Answers a request to a subresource other than `status`, if the kind has it.
    fn subresource<'a>(
        &'a self,
        _shared: &'a Shared,
        _request: SubRequest<'a>,
    ) -> Option<Answer<'a, Response>> {
        None
    }
}
