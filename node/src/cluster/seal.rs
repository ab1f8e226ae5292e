//! Sealed gossip: a UDP transport under chitchat that encrypts and authenticates every
//! datagram, because chitchat itself does neither.
//!
//! A datagram is `nonce (24) || XChaCha20-Poly1305(time_ms (8) || message)`, with the
//! cluster id as associated data and a key derived by HKDF-SHA256 from the cluster's join
//! secret. One that does not open (forged, truncated, another cluster's, a key that is
//! not ours) or whose time is outside the replay window is counted and dropped; `recv`
//! never fails for a bad datagram, since chitchat's loop ends on a receive error.
//! Replays inside the window are accepted: gossip messages are idempotent digests and
//! deltas, so an attacker without the key can only repeat what a member said moments ago.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hkdf::Hkdf;
use sha2::Sha256;
use tracing::warn;

/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
const NONCE: usize = 24;
const TAG: usize = 16;
const TIME: usize = 8;
/// What sealing adds to a message.
pub const OVERHEAD: usize = NONCE + TAG + TIME;
/// How far a datagram's time may be from ours (clock skew plus delivery).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a seal.
    Truncated,
    /// Did not authenticate: forged, corrupted, another cluster's or another key's.
    Forged,
    /// Authentic, but its time is outside the replay window.
    Stale,
    /// Authentic, but not a chitchat message.
    Garbled,
    /// Ours, too large to send once sealed.
    Oversize,
}

impl Dropped {
    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Truncated => "truncated",
            Dropped::Forged => "forged",
            Dropped::Stale => "stale",
            Dropped::Garbled => "garbled",
            Dropped::Oversize => "oversize",
        }
    }

    const ALL: [Dropped; 5] = [
        Dropped::Truncated,
        Dropped::Forged,
        Dropped::Stale,
        Dropped::Garbled,
        Dropped::Oversize,
    ];
}

/// Datagrams dropped, by reason.
#[derive(Debug, Default)]
pub struct GossipStats {
    dropped: [AtomicU64; 5],
}

impl GossipStats {
    fn count(&self, why: Dropped) {
        let i = Dropped::ALL.iter().position(|d| *d == why).expect("listed");
        self.dropped[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count.
    pub fn dropped(&self) -> Vec<(Dropped, u64)> {
        Dropped::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(d, n)| (*d, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The cluster's gossip key and associated data.
pub struct Seal {
    cipher: XChaCha20Poly1305,
    cluster_id: Vec<u8>,
}

impl Seal {
    /// The seal of cluster `cluster_id` whose join secret is `secret`.
    pub fn new(secret: &str, cluster_id: &str) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"skiff gossip v1"), secret.as_bytes());
        let mut key = [0u8; 32];
        hk.expand(cluster_id.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
            cluster_id: cluster_id.as_bytes().to_vec(),
        }
    }

    /// `message` sealed at `time_ms`.
    pub fn seal(&self, time_ms: u64, message: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).expect("the OS has randomness");
        let mut plain = Vec::with_capacity(TIME + message.len());
        plain.extend_from_slice(&time_ms.to_be_bytes());
        plain.extend_from_slice(message);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &self.cluster_id,
                },
            )
            .expect("encryption of a bounded message cannot fail");
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The message inside `datagram`, if it is ours and fresh at `now_ms`.
    pub fn open(&self, now_ms: u64, datagram: &[u8]) -> Result<Vec<u8>, Dropped> {
        if datagram.len() < OVERHEAD {
            return Err(Dropped::Truncated);
        }
        let (nonce, sealed) = datagram.split_at(NONCE);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &self.cluster_id,
                },
            )
            .map_err(|_| Dropped::Forged)?;
        let (time, message) = plain.split_at(TIME);
        let time = u64::from_be_bytes(time.try_into().expect("8 bytes"));
        if now_ms.abs_diff(time) > REPLAY_WINDOW.as_millis() as u64 {
            return Err(Dropped::Stale);
        }
        Ok(message.to_vec())
    }
}

/// chitchat's transport: hands chitchat the node's gossip socket, bound beforehand (so
/// an ephemeral port is known before chitchat advertises it), sealed.
pub struct SealedTransport {
    socket: Mutex<Option<tokio::net::UdpSocket>>,
    seal: std::sync::Arc<Seal>,
    stats: std::sync::Arc<GossipStats>,
}

impl SealedTransport {
    /// A transport over `socket`.
    pub fn new(
        socket: tokio::net::UdpSocket,
        seal: std::sync::Arc<Seal>,
        stats: std::sync::Arc<GossipStats>,
    ) -> Self {
        Self {
            socket: Mutex::new(Some(socket)),
            seal,
            stats,
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gossip socket is open already"))?;
        Ok(Box::new(SealedSocket {
            socket,
            seal: self.seal.clone(),
            stats: self.stats.clone(),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    seal: std::sync::Arc<Seal>,
    stats: std::sync::Arc<GossipStats>,
    buf: Box<[u8]>,
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::WouldBlock
    )
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut plain = Vec::with_capacity(message.serialized_len());
        message.serialize(&mut plain);
        let datagram = self.seal.seal(crate::clock::now_ms(), &plain);
        if datagram.len() > MAX_DATAGRAM {
            // chitchat fills datagrams up to the UDP limit; ours carry a seal too. The
            // node's keys are small, so this means a very large cluster: say so.
            self.stats.count(Dropped::Oversize);
            warn!(
                bytes = datagram.len(),
                "a gossip message is too large to seal; dropped"
            );
            return Ok(());
        }
        match self.socket.send_to(&datagram, to).await {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("gossip send to {to} failed: {e}")),
        }
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(anyhow::anyhow!("gossip receive failed: {e}")),
            };
            let opened = if len > MAX_DATAGRAM {
                Err(Dropped::Oversize)
            } else {
                self.seal.open(crate::clock::now_ms(), &self.buf[..len])
            };
            let plain = match opened {
                Ok(p) => p,
                Err(why) => {
                    self.stats.count(why);
                    continue;
                }
            };
            match ChitchatMessage::deserialize(&mut &plain[..]) {
                Ok(message) => return Ok((from, message)),
                Err(_) => self.stats.count(Dropped::Garbled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_fresh_datagrams_open() {
        let seal = Seal::new("secret", "cluster-a");
        let now = 1_000_000;
        let d = seal.seal(now, b"hello");
        assert_eq!(d.len(), 5 + OVERHEAD);
        assert_eq!(seal.open(now + 10, &d), Ok(b"hello".to_vec()));
        // Another secret, another cluster: forged.
        assert_eq!(
            Seal::new("other", "cluster-a").open(now, &d),
            Err(Dropped::Forged)
        );
        assert_eq!(
            Seal::new("secret", "cluster-b").open(now, &d),
            Err(Dropped::Forged)
        );
        // A flipped bit, a cut datagram.
        let mut bad = d.clone();
        bad[30] ^= 1;
        assert_eq!(seal.open(now, &bad), Err(Dropped::Forged));
        assert_eq!(seal.open(now, &d[..d.len() - 1]), Err(Dropped::Forged));
        assert_eq!(seal.open(now, &d[..10]), Err(Dropped::Truncated));
        // Replayed after the window.
        let late = now + REPLAY_WINDOW.as_millis() as u64 + 1;
        assert_eq!(seal.open(late, &d), Err(Dropped::Stale));
        // Two seals of one message differ (fresh nonces).
        assert_ne!(seal.seal(now, b"hello"), d);
    }
}
