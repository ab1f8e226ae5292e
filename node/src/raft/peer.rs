//! The peer API's client and its authentication.
//!
//! Nodes call each other's API (Raft RPCs, forwarded writes, pod lists) over mutual TLS:
//! each presents its certificate from the cluster CA (`tls`), which says which node it
//! is. Each request is also signed with a key derived (HKDF-SHA256) from the join
//! secret, binding it to one request id, its sender, its receiver, its path and its
//! body: `x-skiff-peer: <unix ms>.<request id>.<from>.<to>.<hex SHA-256(body)>.<hex
//! HMAC-SHA256(key, all of those)>`. The signature covers the body's digest, so a
//! request is checked before its body is read (a stranger cannot make a node read a
//! body), and the body against the digest once read. The receiver refuses a request
//! whose certificate is not the sender's, that is addressed to another node, whose time
//! is more than [`WINDOW`] from ours, or whose id it has seen ([`Replays`]): a captured
//! request cannot be played again, here or at another node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::NodeId;

/// The header carrying a peer request's signature.
pub const HEADER: &str = "x-skiff-peer";
/// How far a signed request's time may be from ours.
pub const WINDOW: Duration = Duration::from_secs(30);
/// The largest answer read from a peer (a snapshot chunk is at most 3 MiB).
pub const MAX_ANSWER: usize = 16 << 20;

/// The cluster's peer key.
#[derive(Clone)]
pub struct PeerKey([u8; 32]);

/// What a signature binds besides the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Milliseconds since the epoch at the sender.
    pub ms: u64,
    /// Random, one per request.
    pub id: &'a str,
    /// The sender's Raft id.
    pub from: NodeId,
    /// The receiver's Raft id.
    pub to: NodeId,
    /// The request's path.
    pub path: &'a str,
}

impl PeerKey {
    /// The key of cluster `cluster_id` whose join secret is `secret`.
    pub fn new(secret: &str, cluster_id: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"skiff peer api v2"), secret.as_bytes());
        let mut key = [0u8; 32];
        hk.expand(cluster_id.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Self(key)
    }

    fn mac(&self, e: &Envelope<'_>, digest: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        for part in [
            e.ms.to_string().as_bytes(),
            e.id.as_bytes(),
            format!("{:016x}", e.from).as_bytes(),
            format!("{:016x}", e.to).as_bytes(),
            e.path.as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac.update(digest);
        mac
    }

    /// The header value for a request in `envelope` with `body`.
    pub fn sign(&self, envelope: &Envelope<'_>, body: &[u8]) -> String {
        use sha2::Digest as _;
        let digest = Sha256::digest(body);
        format!(
            "{}.{}.{:016x}.{:016x}.{}.{}",
            envelope.ms,
            envelope.id,
            envelope.from,
            envelope.to,
            hex::encode(digest),
            hex::encode(self.mac(envelope, &digest).finalize().into_bytes())
        )
    }

    /// Checks `header` for a request to `path` received by node `me` at our time
    /// `now_ms`, before its body is read: the body must then have the [`Signed`] digest.
    pub fn verify_head(
        &self,
        header: &str,
        path: &str,
        me: NodeId,
        now_ms: u64,
    ) -> Result<Signed, &'static str> {
        let parts: Vec<&str> = header.splitn(6, '.').collect();
        let [ms, id, from, to, digest, sig] = parts[..] else {
            return Err("malformed signature");
        };
        let ms: u64 = ms.parse().map_err(|_| "malformed signature")?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("malformed signature");
        }
        let from = u64::from_str_radix(from, 16).map_err(|_| "malformed signature")?;
        let to = u64::from_str_radix(to, 16).map_err(|_| "malformed signature")?;
        let mut body_digest = [0u8; 32];
        hex::decode_to_slice(digest, &mut body_digest).map_err(|_| "malformed signature")?;
        let sig = hex::decode(sig).map_err(|_| "malformed signature")?;
        if ms.abs_diff(now_ms) > WINDOW.as_millis() as u64 {
            return Err("signature outside the time window (are the clocks apart?)");
        }
        let envelope = Envelope {
            ms,
            id,
            from,
            to,
            path,
        };
        self.mac(&envelope, &body_digest)
            .verify_slice(&sig)
            .map_err(|_| "signature does not verify: not a member of this cluster")?;
        if to != me {
            return Err("the request is addressed to another node");
        }
        Ok(Signed {
            digest: body_digest,
            id: id.to_string(),
            from,
            ms,
        })
    }
}

/// A verified signature, waiting for its body.
#[derive(Debug)]
pub struct Signed {
    digest: [u8; 32],
    /// The request id.
    pub id: String,
    /// The sender.
    pub from: NodeId,
    /// The sender's time.
    pub ms: u64,
}

impl Signed {
    /// Whether `body` is the one that was signed.
    pub fn matches(&self, body: &[u8]) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        bool::from(Sha256::digest(body).as_slice().ct_eq(&self.digest))
    }
}

/// Request ids seen within the window, so none is served twice.
#[derive(Default)]
pub struct Replays(Mutex<HashMap<String, u64>>);

/// Ids remembered at most; past it new requests are refused until old ones age out
/// (refusing is safe, a peer retries; forgetting an id inside the window is not).
const MAX_REMEMBERED: usize = 200_000;

impl Replays {
    /// Records `signed`'s id at our time `now_ms`; `Err` when it was seen.
    pub fn first_time(&self, signed: &Signed, now_ms: u64) -> Result<(), &'static str> {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let horizon = now_ms.saturating_sub(2 * WINDOW.as_millis() as u64);
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, at| *at >= horizon);
            if seen.len() >= MAX_REMEMBERED {
                return Err("too many peer requests in the replay window");
            }
        }
        if seen.contains_key(&signed.id) {
            return Err("a replayed request (its id was seen)");
        }
        // Kept by the sender's time, which the window already bounds.
        seen.insert(signed.id.clone(), signed.ms.max(horizon));
        Ok(())
    }
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: nothing was sent.
    #[error("cannot connect to {addr}: {message}")]
    Refused {
        /// The peer.
        addr: String,
        /// Why.
        message: String,
    },
    /// The connection broke before an answer (the request may have arrived).
    #[error("cannot reach {addr}: {message}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// Why.
        message: String,
    },
    /// No answer in time.
    #[error("{addr} did not answer within {after:?}")]
    Timeout {
        /// The peer.
        addr: String,
        /// How long it was given.
        after: Duration,
    },
    /// It answered with an error status.
    #[error("{addr} answered {status}: {message}")]
    Status {
        /// The peer.
        addr: String,
        /// The status.
        status: http::StatusCode,
        /// Its body.
        message: String,
    },
    /// It answered something that is not what skiff sends.
    #[error("{addr} answered something unreadable: {message}")]
    Garbled {
        /// The peer.
        addr: String,
        /// Why.
        message: String,
    },
}

/// The connector of peer calls: TCP, then TLS with this node's certificate.
pub type PeerConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A TLS client for other nodes' APIs, presenting this node's certificate (`tls`): for
/// peer calls and image copies alike.
pub fn connector(tls: Arc<tokio_rustls::rustls::ClientConfig>) -> PeerConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(1)));
    http.set_nodelay(true);
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_only()
        .enable_http1()
        .wrap_connector(http)
}

/// A pooled client for peer calls.
#[derive(Clone)]
pub struct PeerClient {
    key: PeerKey,
    me: NodeId,
    client: Client<PeerConnector, Full<Bytes>>,
}

impl PeerClient {
    /// Calls as node `me` over TLS with `tls`, signing with `key`.
    pub fn new(key: PeerKey, me: NodeId, tls: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        Self {
            key,
            me,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector(tls)),
        }
    }

    /// The key it signs with.
    pub fn key(&self) -> &PeerKey {
        &self.key
    }

    /// POSTs `body` as JSON to `path` on node `to`, whose API is at `addr`, within
    /// `timeout`.
    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        to: NodeId,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let garbled = |message: String| CallError::Garbled {
            addr: addr.to_string(),
            message,
        };
        let body = serde_json::to_vec(body).map_err(|e| garbled(e.to_string()))?;
        let id = crate::ids::random_hex(16);
        let envelope = Envelope {
            ms: crate::clock::now_ms(),
            id: &id,
            from: self.me,
            to,
            path,
        };
        let signature = self.key.sign(&envelope, &body);
        let request = http::Request::post(format!("https://{addr}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| garbled(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let (addr, message) = (addr.to_string(), e.to_string());
                if e.is_connect() {
                    CallError::Refused { addr, message }
                } else {
                    CallError::Unreachable { addr, message }
                }
            })?;
            let status = response.status();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| CallError::Unreachable {
                    addr: addr.to_string(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, CallError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout {
                addr: addr.to_string(),
                after: timeout,
            })??;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(CallError::Status {
                addr: addr.to_string(),
                status,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| garbled(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(ms: u64) -> Envelope<'static> {
        Envelope {
            ms,
            id: "0123456789abcdef0123456789abcdef",
            from: 1,
            to: 2,
            path: "/v1/raft/vote",
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_path_body_key_receiver_and_time() {
        let key = PeerKey::new("secret", "cluster");
        let now = 1_000_000_000;
        let sig = key.sign(&envelope(now), b"{}");
        let signed = key
            .verify_head(&sig, "/v1/raft/vote", 2, now + 5_000)
            .unwrap();
        assert!(signed.matches(b"{}"));
        assert!(!signed.matches(b"{ }"), "another body");
        assert_eq!((signed.from, signed.id.len()), (1, 32));
        assert!(key.verify_head(&sig, "/v1/raft/append", 2, now).is_err());
        assert_eq!(
            key.verify_head(&sig, "/v1/raft/vote", 3, now).unwrap_err(),
            "the request is addressed to another node"
        );
        for other in [
            PeerKey::new("other", "cluster"),
            PeerKey::new("secret", "another"),
        ] {
            assert!(other.verify_head(&sig, "/v1/raft/vote", 2, now).is_err());
        }
        // Any part changed: the signature no longer verifies.
        let parts: Vec<&str> = sig.split('.').collect();
        let other = key.sign(&envelope(now), b"{ }");
        let other: Vec<&str> = other.split('.').collect();
        for (i, value) in [
            (1, "f123456789abcdef0123456789abcdef"),
            (2, "0000000000000003"),
            (4, other[4]),
        ] {
            let mut changed = parts.clone();
            changed[i] = value;
            assert!(
                key.verify_head(&changed.join("."), "/v1/raft/vote", 2, now)
                    .is_err(),
                "part {i}"
            );
        }
        let late = now + WINDOW.as_millis() as u64 + 1;
        assert!(
            key.verify_head(&sig, "/v1/raft/vote", 2, late)
                .unwrap_err()
                .contains("time window")
        );
        for bad in [
            "",
            "x",
            "1.zz",
            "abc.00",
            "1.",
            "1.00.00",
            "1..",
            "1.a.1.2.00.00",
            &format!("1.{}.", "0".repeat(64)),
        ] {
            assert!(
                key.verify_head(bad, "/v1/raft/vote", 2, now).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_request_id_is_served_once() {
        let key = PeerKey::new("secret", "cluster");
        let now = 1_000_000_000;
        let replays = Replays::default();
        let sig = key.sign(&envelope(now), b"{}");
        let signed = key.verify_head(&sig, "/v1/raft/vote", 2, now).unwrap();
        assert!(replays.first_time(&signed, now).is_ok());
        let again = key.verify_head(&sig, "/v1/raft/vote", 2, now + 10).unwrap();
        assert!(
            replays
                .first_time(&again, now + 10)
                .unwrap_err()
                .contains("replayed")
        );
    }
}
