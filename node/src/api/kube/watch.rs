//! `?watch=true`: a stream of `ADDED`/`MODIFIED`/`DELETED` lines pushed from the
//! [`store`]'s change feed, bounded in number, in length and by how fast the client
//! reads. A watch reads nothing itself: the store is kept current by one feed however
//! many watch.
//!
//! [`store`]: super::store

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::json;

use super::select::Filter;
use super::{Kind, MAX_WATCH, MAX_WATCHES, Params, Resource, store, table};
use crate::Shared;
use crate::api::error::ApiError;

/// Watches open now, against [`MAX_WATCHES`].
static WATCHES: AtomicUsize = AtomicUsize::new(0);

/// Holds a watch's place while it streams.
struct WatchSlot;

impl Drop for WatchSlot {
    fn drop(&mut self) {
        WATCHES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One watch event as a line, for object `json` (as the store keeps it) if `filter`
/// admits it. An object that needs no reading (no selector, no Table) is not parsed.
fn event_line(
    change: &str,
    kind: Kind,
    json: &Bytes,
    filter: &Filter,
    table: Option<table::Include>,
) -> Option<Bytes> {
    if filter.is_everything() && table.is_none() {
        let mut line = Vec::with_capacity(json.len() + 40);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(change.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(json);
        line.extend_from_slice(b"}\n");
        return Some(Bytes::from(line));
    }
    let object = store::parse(json);
    if !filter.admits(&object) {
        return None;
    }
    let object = if let Some(include) = table {
        let version = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        table::table(kind, std::slice::from_ref(&object), include, version, None)
    } else {
        object
    };
    let mut line =
        serde_json::to_vec(&json!({"type": change, "object": object})).expect("events serialize");
    line.push(b'\n');
    Some(Bytes::from(line))
}

/// `?watch=true`: `ADDED`/`MODIFIED`/`DELETED` lines from the version asked for (or
/// every object now, then changes), until `timeoutSeconds`, a client that reads too
/// slowly to keep up (it watches again from its last version), or the node stops.
pub(super) async fn watch(
    shared: Arc<Shared>,
    res: &'static Resource,
    p: Params,
    table: Option<table::Include>,
) -> Result<Response, ApiError> {
    let filter = Filter::new(res.kind, &p)?;
    let from = match p.resource_version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid",
                format!("resourceVersion: {v:?} is not one this server gave"),
            )
        })?),
    };
    if WATCHES.fetch_add(1, Ordering::Relaxed) >= MAX_WATCHES {
        WATCHES.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watches",
            format!("{MAX_WATCHES} watches are open on this node; try again later"),
        ));
    }
    let slot = WatchSlot;
    if let Some(v) = from {
        shared
            .kube_store
            .witness(v)
            .map_err(|e| super::too_large(v, e))?;
    }
    shared
        .kube_store
        .filled(std::time::Duration::from_secs(30))
        .await;
    let kind = res.kind;
    let mut first: Vec<Bytes> = Vec::new();
    let mut last = 0;
    let rx = match shared.kube_store.watch(kind, from) {
        Ok((store::Start::Now(objects, version), rx)) => {
            first.extend(
                objects
                    .iter()
                    .filter_map(|o| event_line("ADDED", kind, o, &filter, table)),
            );
            last = version;
            Some(rx)
        }
        Ok((store::Start::After(events), rx)) => {
            for e in &events {
                first.extend(event_line(
                    e.change.as_str(),
                    kind,
                    &e.object,
                    &filter,
                    table,
                ));
                last = e.version;
            }
            last = last.max(from.unwrap_or(0));
            Some(rx)
        }
        Err(store::Expired { oldest }) => {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {} ({oldest})", from.unwrap_or(0)),
                "reason": "Expired", "code": 410,
            });
            let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": status}))
                .expect("serializes");
            line.push(b'\n');
            first.push(Bytes::from(line));
            None
        }
    };
    let limit = p.timeout.unwrap_or(MAX_WATCH).min(MAX_WATCH);
    let deadline = tokio::time::Instant::now() + limit;
    let state = (shared, rx, filter, last, slot);
    let live = futures_util::stream::unfold(
        state,
        move |(shared, rx, filter, mut last, slot)| async move {
            let mut rx = rx?;
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Ok(e) if e.version > last => {
                            last = e.version;
                            let line = event_line(e.change.as_str(), kind, &e.object, &filter, table);
                            if let Some(line) = line {
                                return Some((line, (shared, Some(rx), filter, last, slot)));
                            }
                        }
                        Ok(_) => {}
                        // Fell behind or the store is gone: end; the client watches again.
                        Err(_) => return None,
                    },
                    () = tokio::time::sleep_until(deadline) => return None,
                    () = shared.shutdown.cancelled() => return None,
                }
            }
        },
    );
    let body = futures_util::stream::iter(first)
        .chain(live)
        .map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}
