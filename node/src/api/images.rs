//! `/v1/images`: list, load (OCI layout tarball), tag, remove, save.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use skiff_image::archive::{self, ArchiveError};
use skiff_image::{ImageError, ImageName};
use skiff_spec::api::{ImageStatus, LoadedImage};

use crate::Shared;
use crate::api::error::ApiError;
use crate::api::http::{discard, query_pairs};

fn image_err(e: ImageError) -> ApiError {
    match e {
        ImageError::NotFound(_) | ImageError::Ambiguous(_) => ApiError::not_found(e.to_string()),
        e if e.is_disk_full() => ApiError::disk_full(e),
        other => ApiError::internal(other),
    }
}

fn one(pairs: &[(String, String)], key: &str) -> Result<String, ApiError> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", format!("missing parameter {key}"))
        })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

/// `GET /v1/images`
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<ImageStatus>>, ApiError> {
    let images = shared.images.store().clone();
    let infos = blocking(move || images.list()).await?.map_err(image_err)?;
    let users = shared.objects.image_users().await;
    Ok(Json(
        infos
            .into_iter()
            .map(|i| ImageStatus {
                used_by: users.get(&i.digest).cloned().unwrap_or_default(),
                id: i.digest,
                tags: i.tags,
                kind: i.kind,
                size: i.size,
                created: i.created,
            })
            .collect(),
    ))
}

/// An upload (`what`) in an unnamed temp file, refused past `cap` bytes: by its
/// Content-Length before a byte is read, else once it has sent more.
pub(super) async fn spool(
    headers: &axum::http::HeaderMap,
    body: Body,
    cap: u64,
    what: &str,
) -> Result<std::fs::File, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(ApiError::too_large(format!(
            "{what} is larger than the {cap}-byte limit"
        )));
    }
    let mut spool = tempfile::tempfile().map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("bad_body", format!("failed to read the upload: {e}"))
        })?;
        total += chunk.len() as u64;
        if total > cap {
            discard(&mut stream, 1 << 20).await;
            return Err(ApiError::too_large(format!(
                "{what} is larger than the {cap}-byte limit"
            )));
        }
        spool.write_all(&chunk).map_err(ApiError::internal)?;
    }
    Ok(spool)
}

/// `POST /v1/images`: the body is an OCI image layout tarball (`skiff save` output).
pub(super) async fn load(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let cap = shared.config.upload_cap;
    // Spooled to a temp file under the cap, then checked and loaded off the executor.
    let spool = spool(&headers, body, cap, "image archive").await?;
    let replicate = !headers.contains_key(crate::images::REPLICA_HEADER);
    let out = import(&shared, spool, replicate).await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Loads an archive spooled to `spool` (any layout `skiff load` takes) into the node's
/// store, as an upload is loaded; with `replicate`, answers once another node holds a
/// copy too.
pub(super) async fn import(
    shared: &Shared,
    mut spool: std::fs::File,
    replicate: bool,
) -> Result<Vec<LoadedImage>, ApiError> {
    let cap = shared.config.upload_cap;
    let images = shared.images.store().clone();
    let loaded = blocking(move || {
        use std::io::Seek as _;
        spool
            .rewind()
            .map_err(|e| ArchiveError::Tar(e.to_string()))?;
        archive::import(&images, spool, cap)
    })
    .await?
    .map_err(|e| match e {
        e if e.is_disk_full() => ApiError::disk_full(e),
        ArchiveError::Store(_) | ArchiveError::Write(_) => ApiError::internal(e),
        ArchiveError::TooLarge(_) => ApiError::too_large(e.to_string()),
        other => ApiError::bad_request("invalid_archive", other.to_string()),
    })?;
    // Acknowledged once another node holds a copy too (unless this is that copy).
    if replicate {
        let picked: Vec<(Option<ImageName>, skiff_spec::Digest)> = loaded
            .iter()
            .map(|l| {
                let name = l.tags.first().and_then(|t| ImageName::parse(t).ok());
                (name, l.digest)
            })
            .collect();
        shared.images.replicate(&picked).await?;
    }
    Ok(loaded
        .into_iter()
        .map(|l| LoadedImage {
            id: l.digest,
            tags: l.tags,
        })
        .collect())
}

/// `POST /v1/images/tag?source=REF&target=NAME`
pub(super) async fn tag(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let pairs = query_pairs(q);
    let source = one(&pairs, "source")?;
    let target = ImageName::parse(&one(&pairs, "target")?)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let images = shared.images.store().clone();
    blocking(move || {
        let digest = images.resolve(&source)?;
        let size = images.blobs().size(&digest)?;
        let desc = skiff_image::oci::Descriptor {
            media_type: skiff_image::oci::MANIFEST_V1.into(),
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        };
        images.tag(&target, &desc)
    })
    .await?
    .map_err(image_err)?;
    shared.objects.collect_garbage_now().await;
    Ok(StatusCode::CREATED)
}

/// `DELETE /v1/images?ref=REF&force=true`: untags (a name) or removes every tag (an id).
/// An image an app runs keeps running; without `force`, removing its last name is refused.
pub(super) async fn remove(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let pairs = query_pairs(q);
    let reference = one(&pairs, "ref")?;
    let force = pairs
        .iter()
        .any(|(k, v)| k == "force" && matches!(v.as_str(), "" | "1" | "true"));
    let images = shared.images.store().clone();
    let r = reference.clone();
    let (digest, tags) = blocking(move || {
        let digest = images.resolve(&r)?;
        let tags = images.tags_of(&digest)?;
        Ok::<_, ImageError>((digest, tags))
    })
    .await?
    .map_err(image_err)?;
    // A name removes that name; an id removes all of them.
    let by_name = ImageName::parse(&reference)
        .ok()
        .map(|n| n.to_string())
        .filter(|n| tags.contains(n));
    let removing: Vec<String> = match &by_name {
        Some(n) => vec![n.clone()],
        None => tags.clone(),
    };
    let last = removing.len() == tags.len();
    if last && !force {
        let users = shared
            .objects
            .image_users()
            .await
            .remove(&digest)
            .unwrap_or_default();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "image {reference} is used by {}; remove them first or force it (-f)",
                users.join(", ")
            )));
        }
    }
    let images = shared.images.store().clone();
    blocking(move || {
        for t in removing {
            images.untag(&ImageName::parse(&t).expect("stored names parse"))?;
        }
        Ok::<_, ImageError>(())
    })
    .await?
    .map_err(image_err)?;
    shared.objects.collect_garbage_now().await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/images/archive?ref=A&ref=B`: an OCI layout tarball of those images.
pub(super) async fn save(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let refs: Vec<String> = query_pairs(q)
        .into_iter()
        .filter(|(k, _)| k == "ref")
        .map(|(_, v)| v)
        .collect();
    if refs.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "name at least one image: ref=NAME",
        ));
    }
    let images = shared.images.store().clone();
    let picked = blocking(move || {
        let mut picked = Vec::new();
        let mut seen = BTreeSet::new();
        for r in &refs {
            let digest = images.resolve(r)?;
            let name = ImageName::parse(r).ok().filter(|n| {
                images
                    .tags_of(&digest)
                    .is_ok_and(|t| t.contains(&n.to_string()))
            });
            if seen.insert((name.clone(), digest)) {
                picked.push((name, digest));
            }
        }
        Ok::<_, ImageError>(picked)
    })
    .await?
    .map_err(image_err)?;
    // Streamed: the tarball is written in chunks as the client takes them, never whole
    // in memory (images are gigabytes). A client that goes away stops the export.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let images = shared.images.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = archive::export(&images, &picked, &mut out)
            .and_then(|()| out.flush_chunk().map_err(ArchiveError::Write));
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Bytes of the tarball sent at a time.
const CHUNK: usize = 256 << 10;

/// A `Write` that hands full chunks to the response body (blocking while it is full).
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
