//! The peer API's client and its authentication.
//!
//! Nodes call each other's API (Raft RPCs, forwarded writes) with JSON bodies signed by
//! a key derived (HKDF-SHA256) from the cluster's join secret: the header
//! `x-skiff-peer: <unix ms>.<hex SHA-256(body)>.<hex HMAC-SHA256(key, ms "\n" path "\n"
//! body digest)>`. The signature covers the body's digest, so a request is checked before
//! its body is read (a stranger cannot make a node read a body), and the body against
//! the digest once read. The key never crosses the network; a request whose signature
//! does not verify, or whose time is more than [`WINDOW`] from ours, is refused. A replay
//! inside the window repeats a Raft RPC, which Raft tolerates (terms and indexes make it
//! idempotent).

use std::time::Duration;

use bytes::Bytes;
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

/// The header carrying a peer request's signature.
pub const HEADER: &str = "x-skiff-peer";
/// How far a signed request's time may be from ours.
pub const WINDOW: Duration = Duration::from_secs(30);
/// The largest answer read from a peer (a snapshot chunk is at most 3 MiB).
pub const MAX_ANSWER: usize = 16 << 20;

/// The cluster's peer key.
#[derive(Clone)]
pub struct PeerKey([u8; 32]);

impl PeerKey {
    /// The key of cluster `cluster_id` whose join secret is `secret`.
    pub fn new(secret: &str, cluster_id: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"skiff peer api v1"), secret.as_bytes());
        let mut key = [0u8; 32];
        hk.expand(cluster_id.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Self(key)
    }

    fn mac(&self, ms: u64, path: &str, digest: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(digest);
        mac
    }

    /// The header value for a request to `path` with `body`, at `ms`.
    pub fn sign(&self, ms: u64, path: &str, body: &[u8]) -> String {
        use sha2::Digest as _;
        let digest = Sha256::digest(body);
        format!(
            "{ms}.{}.{}",
            hex::encode(digest),
            hex::encode(self.mac(ms, path, &digest).finalize().into_bytes())
        )
    }

    /// Checks `header` for a request to `path` at our time `now_ms`, before its body is
    /// read: the body must then have the [`Signed`] digest.
    pub fn verify_head(
        &self,
        header: &str,
        path: &str,
        now_ms: u64,
    ) -> Result<Signed, &'static str> {
        let mut parts = header.splitn(3, '.');
        let (Some(ms), Some(digest), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("malformed signature");
        };
        let ms: u64 = ms.parse().map_err(|_| "malformed signature")?;
        let mut body_digest = [0u8; 32];
        hex::decode_to_slice(digest, &mut body_digest).map_err(|_| "malformed signature")?;
        let sig = hex::decode(sig).map_err(|_| "malformed signature")?;
        if ms.abs_diff(now_ms) > WINDOW.as_millis() as u64 {
            return Err("signature outside the time window (are the clocks apart?)");
        }
        self.mac(ms, path, &body_digest)
            .verify_slice(&sig)
            .map_err(|_| "signature does not verify: not a member of this cluster")?;
        Ok(Signed(body_digest))
    }
}

/// A verified signature, waiting for its body.
#[derive(Debug)]
pub struct Signed([u8; 32]);

impl Signed {
    /// Whether `body` is the one that was signed.
    pub fn matches(&self, body: &[u8]) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        bool::from(Sha256::digest(body).as_slice().ct_eq(&self.0))
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

/// A pooled client for peer calls.
#[derive(Clone)]
pub struct PeerClient {
    key: PeerKey,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl PeerClient {
    /// Signs with `key`.
    pub fn new(key: PeerKey) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        Self {
            key,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// The key it signs with.
    pub fn key(&self) -> &PeerKey {
        &self.key
    }

    /// POSTs `body` as JSON to `path` on the peer whose API is at `addr`, within `timeout`.
    pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
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
        let signature = self.key.sign(crate::apps::now_ms(), path, &body);
        let request = http::Request::post(format!("http://{addr}{path}"))
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

    #[test]
    fn a_signature_verifies_only_for_its_path_body_key_and_time() {
        let key = PeerKey::new("secret", "cluster");
        let now = 1_000_000_000;
        let sig = key.sign(now, "/v1/raft/vote", b"{}");
        let signed = key.verify_head(&sig, "/v1/raft/vote", now + 5_000).unwrap();
        assert!(signed.matches(b"{}"));
        assert!(!signed.matches(b"{ }"), "another body");
        assert!(key.verify_head(&sig, "/v1/raft/append", now).is_err());
        for other in [
            PeerKey::new("other", "cluster"),
            PeerKey::new("secret", "another"),
        ] {
            assert!(other.verify_head(&sig, "/v1/raft/vote", now).is_err());
        }
        // Another body's digest in this header: the signature no longer verifies.
        let other = key.sign(now, "/v1/raft/vote", b"{ }");
        let parts: Vec<&str> = sig.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(key.verify_head(&swapped, "/v1/raft/vote", now).is_err());
        let late = now + WINDOW.as_millis() as u64 + 1;
        assert!(
            key.verify_head(&sig, "/v1/raft/vote", late)
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
            &format!("1.{}.", "0".repeat(64)),
        ] {
            assert!(
                key.verify_head(bad, "/v1/raft/vote", now).is_err(),
                "{bad:?}"
            );
        }
    }
}
