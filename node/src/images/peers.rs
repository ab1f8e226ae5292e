//! Images a pod needs that this node lacks come from the other nodes: the first live
//! peer that has the image sends it as an image archive (`GET /v1/images/archive`, over
//! TLS with this node's certificate from the cluster CA, which is how the peer knows a
//! node asks: no admin token crosses the network), and it is loaded as `skiff load`
//! loads one: bounded, every blob checked against its digest.

use std::io::{Seek as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use skiff_image::archive;
use tracing::{info, warn};

use skiff_image::ImageStore;

use crate::error::AppError;

/// How long a peer that answers 401 is asked again: a node that has just joined hears
/// of the others within a gossip round or two.
const UNKNOWN_FOR: Duration = Duration::from_secs(2);

/// Longest a pull from one peer may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// The body of requests to other nodes' APIs.
type PeerBody = http_body_util::Full<Bytes>;

/// Image copies between this node and its peers.
pub(super) struct Peers {
    store: Arc<ImageStore>,
    /// What this node sees of the cluster.
    view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// Other nodes' APIs, over TLS with this node's certificate.
    client: hyper_util::client::legacy::Client<crate::raft::peer::PeerConnector, PeerBody>,
    /// The largest image archive pulled from a peer.
    pull_cap: u64,
}

impl Peers {
    pub(super) fn new(
        store: Arc<ImageStore>,
        view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
        tls: Arc<tokio_rustls::rustls::ClientConfig>,
        pull_cap: u64,
    ) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(crate::raft::peer::connector(tls));
        Self {
            store,
            view,
            client,
            pull_cap,
        }
    }

    /// Fetches `reference` from a live peer that has it. `Ok(false)`: none has it.
    pub(super) async fn pull(&self, reference: &str) -> Result<bool, AppError> {
        let view = self.view.borrow().clone();
        let peers: Vec<(String, String)> = view
            .nodes
            .iter()
            .filter(|n| n.id != view.me)
            .filter_map(|n| Some((n.name.clone(), n.api.clone()?)))
            .collect();
        let mut failures = Vec::new();
        for (name, api) in peers {
            match tokio::time::timeout(PULL_TIMEOUT, self.pull_from(&api, reference)).await {
                Ok(Ok(true)) => {
                    info!(image = reference, from = %name, "image pulled from a peer");
                    return Ok(true);
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => failures.push(format!("{name}: {e}")),
                Err(_) => failures.push(format!("{name}: took longer than {PULL_TIMEOUT:?}")),
            }
        }
        if failures.is_empty() {
            Ok(false)
        } else {
            warn!(image = reference, failures = %failures.join("; "), "pulling from peers failed");
            Err(AppError::not_found(format!(
                "image {reference} is not on this node, and pulling it from peers failed: {}",
                failures.join("; ")
            )))
        }
    }

    /// One peer: `Ok(false)` when it does not have the image.
    async fn pull_from(&self, api: &str, reference: &str) -> Result<bool, String> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("ref", reference)
            .finish();
        let request = http::Request::get(format!("https://{api}/v1/images/archive?{query}"))
            .body(http_body_util::Full::default())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        if response.status() == http::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let cap = self.pull_cap;
        let mut spool = tempfile::tempfile().map_err(|e| e.to_string())?;
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(data) = frame.data_ref() {
                total += data.len() as u64;
                if total > cap {
                    return Err(format!("the archive is larger than {cap} bytes"));
                }
                spool.write_all(data).map_err(|e| e.to_string())?;
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            spool.rewind().map_err(|e| e.to_string())?;
            archive::import(&store, spool, cap).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(true)
    }
}

/// The header on an image load that is itself a copy from another node (it is not copied
/// on again).
pub(crate) const REPLICA_HEADER: &str = "x-skiff-replica";

impl Peers {
    /// Copies the images `loaded` (name or digest, manifest digest) to one other node, so
    /// a load, build or upload is on two nodes (all when there are fewer) before it is
    /// acknowledged. Peers are tried in an order fixed by the digest, so copies of an
    /// image land on the same node; the first that takes it ends the search.
    pub(super) async fn replicate(
        &self,
        loaded: &[(Option<skiff_image::ImageName>, skiff_spec::Digest)],
    ) -> Result<(), AppError> {
        let view = self.view.borrow().clone();
        let Some(first) = loaded.first() else {
            return Ok(());
        };
        let mut peers: Vec<(String, String)> = view
            .nodes
            .iter()
            .filter(|n| n.id != view.me && !n.gateway)
            .filter_map(|n| Some((n.name.clone(), n.api.clone()?)))
            .collect();
        if peers.is_empty() {
            return Ok(());
        }
        let key = first.1.to_string();
        peers.sort_by_key(|(name, _)| {
            use sha2::Digest as _;
            sha2::Sha256::digest(format!("{key}/{name}").as_bytes())
        });
        let store = self.store.clone();
        let picked = loaded.to_vec();
        let mut spool = tokio::task::spawn_blocking(move || {
            let mut spool = tempfile::tempfile().map_err(|e| e.to_string())?;
            archive::export(&store, &picked, &mut spool).map_err(|e| e.to_string())?;
            spool.rewind().map_err(|e| e.to_string())?;
            Ok::<_, String>(spool)
        })
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
        let mut failures = Vec::new();
        for (name, api) in peers {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            spool.rewind().map_err(AppError::internal)?;
            spool.read_to_end(&mut bytes).map_err(AppError::internal)?;
            match tokio::time::timeout(PULL_TIMEOUT, self.push_to(&api, bytes)).await {
                Ok(Ok(())) => {
                    info!(image = %key, to = %name, "image copied to a peer");
                    return Ok(());
                }
                Ok(Err(e)) => failures.push(format!("{name}: {e}")),
                Err(_) => failures.push(format!("{name}: took longer than {PULL_TIMEOUT:?}")),
            }
        }
        Err(AppError::Unavailable {
            code: "not_replicated",
            message: format!(
                "the image is stored on this node, but no other node took a copy ({}); it is not acknowledged until two nodes hold it: try again",
                failures.join("; ")
            ),
        })
    }

    /// Sends `archive` to the peer at `api`. A peer that does not know this node yet
    /// (401: it joined a moment ago and its gossip has not heard of this node) is asked
    /// again for up to [`UNKNOWN_FOR`].
    async fn push_to(&self, api: &str, archive: Vec<u8>) -> Result<(), String> {
        let archive = Bytes::from(archive);
        let deadline = tokio::time::Instant::now() + UNKNOWN_FOR;
        loop {
            let request = http::Request::post(format!("https://{api}/v1/images"))
                .header(http::header::CONTENT_TYPE, "application/x-tar")
                .header(REPLICA_HEADER, "1")
                .body(http_body_util::Full::new(archive.clone()))
                .map_err(|e| e.to_string())?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            if status != http::StatusCode::UNAUTHORIZED || tokio::time::Instant::now() >= deadline {
                return Err(format!("answered {status}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
