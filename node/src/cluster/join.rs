//! Joining a cluster, as kubeadm and k3s join: the join token carries the SHA-256 of the
//! cluster CA beside the join secret (`SK1<hash>::<secret>`, one string); the joining
//! node connects over TLS, checks the CA it is shown against that hash before it sends
//! a byte, and proves it knows the secret by an HMAC over a nonce the member made, so
//! the secret never crosses the network. The answer (cluster id, gossip seeds, the CA
//! and the SHA-256 of the admin token, never the token) travels inside that TLS.
//!
//! The member's side ([`Gate`]) answers at most a few attempts per client address,
//! checks the node id and name before using them, keeps nonces one use and 30 s each,
//! and logs refusals in aggregate (a counter and one line per 10 s, names escaped).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a join token starts with.
const PREFIX: &str = "SK1";

/// A join token: the cluster CA's SHA-256 and the join secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the cluster CA certificate (DER).
    pub ca_sha256: String,
    /// The join secret (gossip and peer keys derive from it).
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({PREFIX}{}::<secret>)", self.ca_sha256)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}::{}", self.ca_sha256, self.secret)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        let Some((hash, secret)) = s.strip_prefix(PREFIX).and_then(|r| r.split_once("::")) else {
            bail!(
                "the join token has no CA hash (it is `{PREFIX}<sha256>::<secret>`): give the whole token `skiff cluster join-token` prints on a member"
            );
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the join token's CA hash is not 64 hex digits");
        }
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the join token's secret is empty or not printable");
        }
        Ok(Self {
            ca_sha256: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

/// The answer to `POST /v1/cluster/join/challenge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    /// Hex, one use, valid for [`NONCE_TTL`].
    pub nonce: String,
}

/// `POST /v1/cluster/join`: a node asking in, with its proof.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its node id (16 hex digits).
    pub node_id: String,
    /// The name it will go by.
    pub name: String,
    /// The member's nonce.
    pub nonce: String,
    /// HMAC over the nonce, node id, name and CA hash with a key from the secret.
    pub proof: String,
}

/// The answer to a node allowed in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The cluster's id.
    pub cluster_id: String,
    /// Gossip addresses of live members.
    pub seeds: Vec<String>,
    /// The cluster CA's certificate (PEM).
    pub ca_cert: String,
    /// The cluster CA's key (PEM).
    pub ca_key: String,
    /// Hex SHA-256 of the cluster's admin token: what the node accepts from clients.
    pub admin_token_sha256: String,
    /// The member's proof that it knows the secret too, over what it answers
    /// ([`answer_proof`]): what a node that could not pin the CA trusts it by.
    #[serde(default)]
    pub proof: String,
}

/// An HMAC over `parts` with the key HKDF gives `secret` for `purpose`.
fn mac(secret: &str, purpose: &[u8], parts: &[&str]) -> String {
    let hk = Hkdf::<Sha256>::new(Some(b"skiff join v1"), secret.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(purpose, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The proof of node `node_id` named `name` that it knows `secret`, for `nonce`, at the
/// cluster whose CA hash is `ca_sha256`.
pub fn proof(secret: &str, nonce: &str, node_id: &str, name: &str, ca_sha256: &str) -> String {
    mac(secret, b"proof", &[nonce, node_id, name, ca_sha256])
}

/// The member's proof, for the join of `node_id` over `nonce`, that it knows `secret` and
/// answers with the CA of hash `ca_sha256`, the cluster `cluster_id` and the admin token
/// hash `admin_sha256`.
pub fn answer_proof(
    secret: &str,
    nonce: &str,
    node_id: &str,
    ca_sha256: &str,
    cluster_id: &str,
    admin_sha256: &str,
) -> String {
    mac(
        secret,
        b"answer",
        &[nonce, node_id, ca_sha256, cluster_id, admin_sha256],
    )
}

/// What a joining node knows of the cluster's CA.
#[derive(Clone, Copy, Debug)]
pub enum Pin<'a> {
    /// Its SHA-256 (hex), from the join token: only that CA is talked to.
    Ca(&'a str),
    /// Nothing (a node that joined before tokens carried the hash): the CA the member
    /// shows is trusted only when the member proves the secret over its hash.
    FirstSeen,
}

/// How long a nonce stays good.
pub const NONCE_TTL: Duration = Duration::from_secs(30);
/// Nonces outstanding at once; past it the oldest go.
const MAX_NONCES: usize = 1024;
/// Join calls a client address may make in a burst, and how many it earns back a second.
const BURST: f64 = 10.0;
const REFILL_PER_SEC: f64 = 0.5;
/// Client addresses remembered for rate limiting; past it the quietest are forgotten.
const MAX_CLIENTS: usize = 4096;

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Too many attempts from this address.
    #[error("too many join attempts from this address: try again in a few seconds")]
    RateLimited,
    /// The request names no valid node id or name.
    #[error("{0}")]
    Invalid(String),
    /// The proof does not verify (wrong secret, or an old or unknown nonce).
    #[error("the join token is wrong for this cluster (or the challenge expired)")]
    WrongToken,
    /// The name is a live node's.
    #[error("node name {name:?} is held by live node {node_id}: choose another --node-name")]
    NameTaken {
        /// The name.
        name: String,
        /// The live node holding it.
        node_id: String,
    },
    /// The node id is a live node's (a node joins once, with an id of its own).
    #[error("node id {0} is a live node's")]
    IdTaken(String),
}

/// The member's side of joins: nonces, per-client budgets, refusal counts.
#[derive(Default)]
pub struct Gate {
    nonces: Mutex<HashMap<String, Instant>>,
    clients: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    refused: AtomicU64,
    last_line: Mutex<Option<(Instant, u64)>>,
}

impl Gate {
    /// Spends one of `client`'s attempts, or refuses it.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            // Forget the addresses with the most attempts left (the quietest).
            let mut by_budget: Vec<(IpAddr, f64)> =
                clients.iter().map(|(ip, (left, _))| (*ip, *left)).collect();
            by_budget.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (ip, _) in by_budget.into_iter().take(MAX_CLIENTS / 4) {
                clients.remove(&ip);
            }
        }
        let (left, at) = clients.entry(client).or_insert((BURST, now));
        *left = (*left + now.duration_since(*at).as_secs_f64() * REFILL_PER_SEC).min(BURST);
        *at = now;
        if *left < 1.0 {
            return Err(Refusal::RateLimited);
        }
        *left -= 1.0;
        Ok(())
    }

    /// A new nonce.
    pub fn challenge(&self, now: Instant) -> Challenge {
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, made| now.duration_since(*made) < NONCE_TTL);
        if nonces.len() >= MAX_NONCES
            && let Some(oldest) = nonces
                .iter()
                .min_by_key(|(_, made)| **made)
                .map(|(n, _)| n.clone())
        {
            nonces.remove(&oldest);
        }
        let nonce = crate::ids::random_hex(32);
        nonces.insert(nonce.clone(), now);
        Challenge { nonce }
    }

    /// Checks `request` against `secret` and the CA hash: the nonce is used up either way.
    pub fn check(
        &self,
        request: &JoinRequest,
        secret: &str,
        ca_sha256: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        if crate::raft::raft_id(&request.node_id).is_none() {
            return Err(Refusal::Invalid("the node id is not 16 hex digits".into()));
        }
        // Checked on a bounded copy, so the error (which names it) stays short.
        let shown: String = request.name.chars().take(64).collect();
        if shown.len() < request.name.len() {
            return Err(Refusal::Invalid(format!(
                "node name {shown:?}...: at most 63 characters"
            )));
        }
        skiff_spec::AppName::new(shown).map_err(|e| Refusal::Invalid(format!("node {e}")))?;
        let fresh = self
            .nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&request.nonce)
            .is_some_and(|made| now.duration_since(made) < NONCE_TTL);
        let expected = proof(
            secret,
            &request.nonce,
            &request.node_id,
            &request.name,
            ca_sha256,
        );
        use subtle::ConstantTimeEq as _;
        let proven = bool::from(expected.as_bytes().ct_eq(request.proof.as_bytes()));
        if fresh && proven {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }

    /// Counts a refusal; logs one line per 10 s with the count since the last.
    pub fn refused(&self, client: IpAddr, why: &Refusal, now: Instant) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|(at, _)| now.duration_since(at) >= Duration::from_secs(10));
        if due {
            let since = total - last.map_or(0, |(_, n)| n);
            *last = Some((now, total));
            // `why` holds only our own text and escaped names.
            tracing::warn!(%client, refused = since, why = %why, "join requests refused (the last one's reason)");
        }
    }

    /// Refusals since start.
    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Joins through the member whose API is at `join`, proving `secret` as node `node_id`
/// named `name`: TLS to the CA `pin` allows, a challenge, the proof; then the member's
/// proof and its CA are checked. Returns the member's answer.
pub async fn ask(
    join: &str,
    pin: Pin<'_>,
    secret: &str,
    node_id: &str,
    name: &str,
) -> anyhow::Result<JoinAnswer> {
    let (connector, seen) = match pin {
        Pin::Ca(hash) => (crate::tls::join_client(hash)?, None),
        Pin::FirstSeen => {
            let (connector, seen) = crate::tls::first_seen_client()?;
            (connector, Some(seen))
        }
    };
    let host = join
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .with_context(|| format!("--join {join:?} is not a host:port"))?;
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => tokio_rustls::rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
            .with_context(|| format!("--join {join:?}: {host:?} is not a host name"))?,
    };
    let within = Duration::from_secs(10);
    let tcp = tokio::time::timeout(within, tokio::net::TcpStream::connect(join))
        .await
        .with_context(|| format!("{join} did not answer within 10 s"))?
        .with_context(|| format!("cannot reach {join} to join its cluster"))?;
    let tls = tokio::time::timeout(within, connector.connect(server_name, tcp))
        .await
        .with_context(|| format!("{join} did not finish the TLS handshake within 10 s"))?
        .with_context(|| format!("cannot join through {join}: TLS failed"))?;
    let ca_sha256 = match (pin, seen) {
        (Pin::Ca(hash), _) => hash.to_ascii_lowercase(),
        (Pin::FirstSeen, seen) => hex::encode(
            seen.and_then(|s| *s.lock().unwrap_or_else(|e| e.into_inner()))
                .context("the TLS handshake recorded no CA")?,
        ),
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let challenge: Challenge = post(&mut sender, join, "/v1/cluster/join/challenge", &()).await?;
    let request = JoinRequest {
        node_id: node_id.to_string(),
        name: name.to_string(),
        proof: proof(secret, &challenge.nonce, node_id, name, &ca_sha256),
        nonce: challenge.nonce,
    };
    let answer: JoinAnswer = post(&mut sender, join, "/v1/cluster/join", &request).await?;
    driver.abort();
    let expected = answer_proof(
        secret,
        &request.nonce,
        node_id,
        &ca_sha256,
        &answer.cluster_id,
        &answer.admin_token_sha256,
    );
    use subtle::ConstantTimeEq as _;
    if !bool::from(expected.as_bytes().ct_eq(answer.proof.as_bytes())) {
        bail!("{join} let this node in without proving it knows the join secret: not trusted");
    }
    let ca = crate::tls::Ca {
        cert: answer.ca_cert.clone(),
        key: answer.ca_key.clone(),
    };
    if ca.sha256()? != ca_sha256 {
        bail!("{join} answered with a CA other than the one its TLS showed");
    }
    Ok(answer)
}

async fn post<T: serde::de::DeserializeOwned>(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    join: &str,
    path: &str,
    body: &impl Serialize,
) -> anyhow::Result<T> {
    use http_body_util::BodyExt as _;
    let req = http::Request::post(path)
        .header(http::header::HOST, join)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::to_vec(body)?,
        )))?;
    let within = Duration::from_secs(10);
    let resp = tokio::time::timeout(within, async {
        // One connection carries both requests: the second waits for it to be free.
        sender.ready().await?;
        sender.send_request(req).await
    })
    .await
    .with_context(|| format!("{join} did not answer the join within 10 s"))??;
    let status = resp.status();
    // The server proved it holds the CA's key, but is bounded all the same.
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20);
    let bytes = tokio::time::timeout(within, body.collect())
        .await
        .context("the join answer did not arrive")?
        .map_err(|e| anyhow::anyhow!("the join answer could not be read: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        bail!("{join} refused to let this node in: {message}");
    }
    serde_json::from_slice(&bytes).context("the join answer is not what skiff expects")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_the_ca_hash_and_the_secret() {
        let hash = "ab".repeat(32);
        let token: JoinToken = format!("{PREFIX}{hash}::s3cret").parse().unwrap();
        assert_eq!(token.ca_sha256, hash);
        assert_eq!(token.secret, "s3cret");
        assert_eq!(token.to_string().parse::<JoinToken>().unwrap(), token);
        assert!(!format!("{token:?}").contains("s3cret"), "Debug hides it");
        for bad in [
            "s3cret".to_string(),
            format!("{PREFIX}abc::s3cret"),
            format!("{PREFIX}{hash}::"),
            format!("{PREFIX}{hash}::a b"),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_proof_holds_for_its_nonce_once_and_names_and_ids_are_checked_first() {
        let gate = Gate::default();
        let now = Instant::now();
        let ca = "cd".repeat(32);
        let ask = |nonce: &str, secret: &str, name: &str| JoinRequest {
            node_id: "00000000000000aa".into(),
            name: name.into(),
            nonce: nonce.into(),
            proof: proof(secret, nonce, "00000000000000aa", name, &ca),
        };
        let c = gate.challenge(now);
        assert!(
            gate.check(&ask(&c.nonce, "right", "two"), "right", &ca, now)
                .is_ok()
        );
        assert!(
            matches!(
                gate.check(&ask(&c.nonce, "right", "two"), "right", &ca, now),
                Err(Refusal::WrongToken)
            ),
            "a nonce is good once: a replayed proof is refused"
        );
        let c = gate.challenge(now);
        assert!(matches!(
            gate.check(&ask(&c.nonce, "wrong", "two"), "right", &ca, now),
            Err(Refusal::WrongToken)
        ));
        let c = gate.challenge(now);
        assert!(
            matches!(
                gate.check(
                    &ask(&c.nonce, "right", "two"),
                    "right",
                    &ca,
                    now + NONCE_TTL
                ),
                Err(Refusal::WrongToken)
            ),
            "an expired nonce"
        );
        assert!(
            gate.check(&ask("made-up", "right", "two"), "right", &ca, now)
                .is_err()
        );
        let forged = JoinRequest {
            node_id: "x\nINFO forged line".into(),
            ..ask("n", "right", "two")
        };
        assert!(matches!(
            gate.check(&forged, "right", &ca, now),
            Err(Refusal::Invalid(_))
        ));
        let c = gate.challenge(now);
        assert!(matches!(
            gate.check(&ask(&c.nonce, "right", "a\nb"), "right", &ca, now),
            Err(Refusal::Invalid(m)) if !m.contains('\n')
        ));
        // A long name is named shortly.
        let c = gate.challenge(now);
        let long = "x\n".repeat(10_000);
        assert!(matches!(
            gate.check(&ask(&c.nonce, "right", &long), "right", &ca, now),
            Err(Refusal::Invalid(m)) if m.len() < 300
        ));
    }

    #[test]
    fn a_client_gets_a_burst_then_one_attempt_every_two_seconds() {
        let gate = Gate::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..100).filter(|_| gate.admit(ip, now).is_ok()).count();
        assert_eq!(admitted, BURST as usize);
        assert!(
            gate.admit("192.0.2.2".parse().unwrap(), now).is_ok(),
            "others still get in"
        );
        assert!(gate.admit(ip, now + Duration::from_secs(1)).is_err());
        assert!(gate.admit(ip, now + Duration::from_secs(3)).is_ok());
        // Many addresses: the table stays bounded.
        for i in 0..(MAX_CLIENTS as u32 * 2) {
            let _ = gate.admit(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(gate.clients.lock().unwrap().len() <= MAX_CLIENTS);
    }
}

#[cfg(test)]
mod impostor {
    use super::*;
    use std::sync::Arc;

    /// A member impostor over TLS with a CA of its own, which does not know the secret:
    /// it hands out a nonce, then answers every join with its CA and `proof`.
    async fn impostor(proof: &'static str) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let tls = crate::tls::load(dir.path(), "00000000000000ee", &[], "").unwrap();
        let ca = crate::tls::ca(&dir.path().join("tls")).unwrap();
        let ca = Arc::new((ca.cert, ca.key));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, ca) = (tls.acceptor.clone(), ca.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let body = if req.uri().path().ends_with("/challenge") {
                            serde_json::json!({"nonce": "n1"})
                        } else {
                            serde_json::to_value(JoinAnswer {
                                cluster_id: "evil".into(),
                                seeds: Vec::new(),
                                ca_cert: ca.0.clone(),
                                ca_key: ca.1.clone(),
                                admin_token_sha256: "00".repeat(32),
                                proof: proof.to_string(),
                            })
                            .unwrap()
                        };
                        let _: &hyper::body::Incoming = req.body();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body.to_string())),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, dir)
    }

    #[tokio::test]
    async fn a_node_that_cannot_pin_trusts_no_member_that_does_not_prove_the_secret() {
        for proof in ["", "made-up"] {
            let (addr, _dir) = impostor(proof).await;
            let err = ask(
                &addr,
                Pin::FirstSeen,
                "the secret",
                "00000000000000aa",
                "old",
            )
            .await
            .unwrap_err();
            assert!(
                format!("{err:#}").contains("without proving it knows the join secret"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn the_answer_proof_binds_the_ca_the_cluster_and_the_admin_hash() {
        let good = answer_proof("s", "n", "id", "ca", "c", "admin");
        assert_eq!(good, answer_proof("s", "n", "id", "ca", "c", "admin"));
        for other in [
            answer_proof("other", "n", "id", "ca", "c", "admin"),
            answer_proof("s", "n2", "id", "ca", "c", "admin"),
            answer_proof("s", "n", "id", "ca2", "c", "admin"),
            answer_proof("s", "n", "id", "ca", "c2", "admin"),
            answer_proof("s", "n", "id", "ca", "c", "admin2"),
        ] {
            assert_ne!(good, other);
        }
        // A join proof is not an answer proof for the same parts.
        assert_ne!(proof("s", "n", "id", "ca", "c"), good);
    }
}
