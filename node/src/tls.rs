//! The cluster's TLS: one CA, a certificate per node, and the three ways nodes and
//! clients check each other.
//!
//! As k3s does it: the first node makes the cluster CA once and keeps it in
//! `<data-dir>/tls/` (its key 0600); a node that joins receives it over the pinned join
//! connection (`cluster::join`) and keeps it the same way. Every node holds the CA key,
//! because every node already holds the join secret, which lets anyone who knows it
//! join and be given the CA: the key adds no trust the secret did not give.
//!
//! Each start signs a fresh certificate for the node with the CA, for the names the node
//! is reached by and for `<node id>.node.skiff`, valid for serving and as a client. So:
//! - the API port serves it (a kubeconfig holding the CA works against every node);
//! - a node calling a peer presents it, and the peer learns who calls from it
//!   ([`node_of`]), never from a header;
//! - a node calling a peer checks the peer's certificate against the CA only
//!   ([`peer_client`]): peers are reached by whatever address gossip gives, and every
//!   certificate the CA signed is a member's;
//! - a node joining checks the CA it is shown against the SHA-256 in its join token
//!   before it sends anything ([`join_client`]); a node that joined before tokens held
//!   that hash records the CA it is shown ([`first_seen_client`]) and trusts it only once
//!   the member has proven the join secret over that CA's hash.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::Digest as _;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The suffix of the name that says which node a certificate is: `<node id>.node.skiff`.
const NODE_SUFFIX: &str = ".node.skiff";

/// The cluster CA as a data dir keeps it.
pub(crate) struct Ca {
    /// PEM.
    pub(crate) cert: String,
    /// PEM (private).
    pub(crate) key: String,
}

impl Ca {
    /// The SHA-256 of the CA certificate's DER, hex: what a join token pins.
    pub(crate) fn sha256(&self) -> anyhow::Result<String> {
        Ok(hex::encode(sha2::Sha256::digest(der(&self.cert)?)))
    }
}

fn der(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the CA certificate is not PEM: {e}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "skiff node CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Loads the CA from `dir` (`ca.key`, `ca.crt`), or makes it there. The key is the CA:
/// its certificate can be made again from it (same name, same key) and still verifies
/// what it signed.
pub(crate) fn ca(dir: &Path) -> anyhow::Result<Ca> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join("ca.key");
    let (key, _) = crate::files::load_or_create_secret(&key_path, || {
        KeyPair::generate()
            .expect("the OS has randomness")
            .serialize_pem()
    })?;
    let pair = KeyPair::from_pem(&key)
        .with_context(|| format!("{} is not a private key", key_path.display()))?;
    let cert_path = dir.join("ca.crt");
    let cert = match std::fs::read_to_string(&cert_path) {
        Ok(cert) => cert,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = ca_params()?.self_signed(&pair)?.pem();
            std::fs::write(&cert_path, &cert)
                .with_context(|| format!("cannot write {}", cert_path.display()))?;
            cert
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cert_path.display())),
    };
    Ok(Ca { cert, key })
}

/// Writes a CA received at join into `dir`, in place of any it held.
pub(crate) fn adopt_ca(dir: &Path, ca: &Ca) -> anyhow::Result<()> {
    KeyPair::from_pem(&ca.key).context("the cluster CA key received is not a private key")?;
    der(&ca.cert).context("the cluster CA certificate received")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::files::write_private(&dir.join("ca.key"), &ca.key)?;
    crate::files::write_private(&dir.join("ca.crt"), &ca.cert)?;
    Ok(())
}

/// The names a node's certificate covers: loopback, this host, the addresses the API is
/// bound to or reached at, and `<node id>.node.skiff`.
fn names(api: &[IpAddr], host: &str, node_id: &str) -> Vec<String> {
    let mut out = vec![
        "localhost".to_string(),
        "127.0.0.1".into(),
        "::1".into(),
        format!("{node_id}{NODE_SUFFIX}"),
    ];
    if !host.is_empty() {
        out.push(host.to_string());
    }
    for ip in api.iter().filter(|ip| !ip.is_unspecified()) {
        out.push(ip.to_string());
    }
    out.sort();
    out.dedup();
    out
}

/// This node's TLS: the API port's acceptor, the client its peer calls use, and the CA.
#[derive(Clone)]
pub(crate) struct NodeTls {
    /// Serves the API port: any client, and a peer's certificate when one is shown.
    pub(crate) acceptor: TlsAcceptor,
    /// Calls peers, presenting this node's certificate.
    pub(crate) peer: Arc<rustls::ClientConfig>,
    /// The cluster CA's certificate (PEM), which kubeconfigs carry.
    pub(crate) ca: String,
    /// This node's certificate.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) cert: CertificateDer<'static>,
}

/// The TLS of node `node_id`, whose data dir is `data` and which is reached at `api`.
pub(crate) fn load(
    data: &Path,
    node_id: &str,
    api: &[IpAddr],
    host: &str,
) -> anyhow::Result<NodeTls> {
    let ca = ca(&data.join("tls"))?;
    let ca_der = der(&ca.cert)?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca.key)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names(api, host, node_id)
        .into_iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("skiff node {node_id}"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![cert.der().clone(), ca_der.clone()];
    let cert = chain[0].clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut roots = RootCertStore::empty();
    roots.add(ca_der)?;
    let roots = Arc::new(roots);

    // Clients without a certificate (kubectl, curl, the CLI) are served as before; one
    // that shows a certificate must show one the CA signed.
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.clone(), key.clone_key())?;
    // HTTP/1.1 only, as the plain side.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];

    let peer = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignedBy::roots(roots)))
        .with_client_auth_cert(chain, key)?;
    Ok(NodeTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        peer: Arc::new(peer),
        ca: ca.cert,
        cert,
    })
}

/// The TLS node `node_id` calls its peers with: a certificate for it, fresh from the CA
/// in the data dir `data` (its `tls/`), as a start makes one. Whoever holds a member's
/// data dir holds the CA key and can make it, which gives no trust the join secret in
/// the same dir does not (see above); the end-to-end tests make one to call a node as a
/// member whose data dir was stolen would.
pub fn member_client(data: &Path, node_id: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let key = data.join("tls/ca.key");
    anyhow::ensure!(key.exists(), "{} holds no cluster CA", data.display());
    Ok(load(data, node_id, &[], "")?.peer)
}

/// The node a verified peer certificate names, if it is `claimed` (a node id the caller
/// says it is: the certificate must be valid for `<claimed>.node.skiff`).
pub(crate) fn node_of(cert: &CertificateDer<'_>, claimed: &str) -> bool {
    node_among(cert, [claimed])
}

/// Whether a verified peer certificate is valid for one of the node ids `ids` (the
/// certificate is parsed once, however many ids are asked about).
pub(crate) fn node_among<'a>(
    cert: &CertificateDer<'_>,
    ids: impl IntoIterator<Item = &'a str>,
) -> bool {
    let Ok(parsed) = ParsedCertificate::try_from(cert) else {
        return false;
    };
    ids.into_iter().any(|id| {
        ServerName::try_from(format!("{id}{NODE_SUFFIX}"))
            .is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
    })
}

/// A client that joins: it trusts only a chain whose CA has SHA-256 `pinned` (hex), and
/// says so by name when the server shows another.
pub(crate) fn join_client(pinned: &str) -> anyhow::Result<TlsConnector> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(pinned, &mut pin)
        .context("the join token's CA hash is not 64 hex digits")?;
    join_connector(Roots::Pinned(pin))
}

/// The CA a [`first_seen_client`] was shown: the SHA-256 of its certificate.
pub(crate) type SeenCa = Arc<std::sync::Mutex<Option<[u8; 32]>>>;

/// A client for a node that knows the join secret but not the CA's hash (it joined
/// before joins were pinned): it accepts any chain whose end certificate a CA in the
/// chain signed, and records that CA's hash. Trust comes after, from both sides proving
/// the secret over that hash (`cluster::join`), never from this handshake alone.
pub(crate) fn first_seen_client() -> anyhow::Result<(TlsConnector, SeenCa)> {
    let seen = SeenCa::default();
    Ok((join_connector(Roots::FirstSeen(seen.clone()))?, seen))
}

fn join_connector(roots: Roots) -> anyhow::Result<TlsConnector> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignedBy {
            roots,
            algs: provider().signature_verification_algorithms,
        }))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Where a [`SignedBy`] verifier's trust anchor comes from.
#[derive(Debug)]
enum Roots {
    /// The cluster CA.
    Known(Arc<RootCertStore>),
    /// Whichever certificate of the presented chain has this SHA-256 (a join: the CA is
    /// not known yet, its hash is).
    Pinned([u8; 32]),
    /// Whichever certificate of the presented chain signed the end certificate; its
    /// hash is recorded for the caller to prove the join secret over.
    FirstSeen(SeenCa),
}

/// Accepts a server certificate signed by the trust anchor, whatever names it carries:
/// nodes are reached at addresses gossip or a user gives, and membership is the CA's
/// signature, not a name.
#[derive(Debug)]
struct SignedBy {
    roots: Roots,
    algs: WebPkiSupportedAlgorithms,
}

impl SignedBy {
    fn roots(roots: Arc<RootCertStore>) -> Self {
        Self {
            roots: Roots::Known(roots),
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SignedBy {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned;
        let roots = match &self.roots {
            Roots::Known(roots) => roots.as_ref(),
            Roots::Pinned(pin) => {
                let shown = intermediates
                    .iter()
                    .find(|c| sha2::Sha256::digest(c.as_ref()).as_slice() == pin)
                    .ok_or_else(|| {
                        let seen: Vec<String> = intermediates
                            .iter()
                            .map(|c| hex::encode(sha2::Sha256::digest(c.as_ref())))
                            .collect();
                        rustls::Error::General(format!(
                            "the server's CA is not the one the join token names: the token pins sha256 {}, the server showed {}",
                            hex::encode(pin),
                            if seen.is_empty() {
                                "no CA".to_string()
                            } else {
                                seen.join(", ")
                            }
                        ))
                    })?;
                let mut store = RootCertStore::empty();
                store.add(shown.clone().into_owned())?;
                pinned = store;
                &pinned
            }
            Roots::FirstSeen(seen) => {
                let cert = ParsedCertificate::try_from(end_entity)?;
                for ca in intermediates {
                    let mut store = RootCertStore::empty();
                    if store.add(ca.clone().into_owned()).is_ok()
                        && rustls::client::verify_server_cert_signed_by_trust_anchor(
                            &cert,
                            &store,
                            &[],
                            now,
                            self.algs.all,
                        )
                        .is_ok()
                    {
                        *seen.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(sha2::Sha256::digest(ca.as_ref()).into());
                        return Ok(ServerCertVerified::assertion());
                    }
                }
                return Err(rustls::Error::General(
                    "the server's certificate is not signed by a CA in its chain".into(),
                ));
            }
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_kept_and_each_start_signs_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = load(dir.path(), "00aa", &[ip], "box").unwrap();
        let second = load(dir.path(), "00aa", &["0.0.0.0".parse().unwrap()], "box").unwrap();
        assert_eq!(first.ca, second.ca);
        assert!(first.ca.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
        assert_eq!(
            names(&[ip, "0.0.0.0".parse().unwrap()], "box", "00aa"),
            [
                "00aa.node.skiff",
                "10.1.2.3",
                "127.0.0.1",
                "::1",
                "box",
                "localhost"
            ]
        );
    }

    /// A TLS handshake between `client` and `server` over an in-memory pipe; the
    /// server's view of the client's certificate, or the client's error.
    async fn handshake(
        client: TlsConnector,
        server: TlsAcceptor,
    ) -> Result<Option<CertificateDer<'static>>, String> {
        let (a, b) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(async move {
            server
                .accept(b)
                .await
                .ok()
                .and_then(|s| s.get_ref().1.peer_certificates().map(|c| c[0].clone()))
        });
        let name = ServerName::try_from("10.9.9.9").unwrap();
        match client.connect(name, a).await {
            Ok(_) => Ok(served.await.unwrap()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test]
    async fn peers_know_each_other_by_certificate_and_a_join_checks_the_pinned_ca() {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = load(one.path(), "000000000000000a", &[], "").unwrap();
        // A node of the same cluster: the CA copied, as a join does.
        let ca = ca(&one.path().join("tls")).unwrap();
        adopt_ca(&other.path().join("tls"), &ca).unwrap();
        let b = load(other.path(), "000000000000000b", &[], "").unwrap();
        let seen = handshake(TlsConnector::from(b.peer.clone()), a.acceptor.clone())
            .await
            .expect("a member's certificate verifies, whatever address it is reached at")
            .expect("the server sees the peer's certificate");
        assert!(node_of(&seen, "000000000000000b"));
        assert!(!node_of(&seen, "000000000000000a"), "not another node's");
        assert!(node_among(&seen, ["000000000000000a", "000000000000000b"]));
        assert!(!node_among(&seen, ["000000000000000a", "000000000000000c"]));

        // Another cluster's node is refused by both sides.
        let stranger = tempfile::tempdir().unwrap();
        let s = load(stranger.path(), "000000000000000c", &[], "").unwrap();
        assert!(
            handshake(TlsConnector::from(s.peer.clone()), a.acceptor.clone())
                .await
                .map_or(true, |cert| cert.is_none()),
            "a stranger's certificate is not accepted"
        );
        assert!(
            handshake(TlsConnector::from(a.peer.clone()), s.acceptor.clone())
                .await
                .is_err()
        );

        // A join pinned to this cluster's CA hash reaches its node, and names the
        // mismatch at another cluster's.
        let pin = ca.sha256().unwrap();
        handshake(join_client(&pin).unwrap(), a.acceptor.clone())
            .await
            .expect("the pinned CA is the server's");
        let err = handshake(join_client(&pin).unwrap(), s.acceptor.clone())
            .await
            .unwrap_err();
        assert!(
            err.contains("not the one the join token names") && err.contains(&pin),
            "{err}"
        );

        // A node that knows no hash records the CA that signed the server's certificate
        // (which the join then proves the secret over).
        let (client, seen) = first_seen_client().unwrap();
        handshake(client, a.acceptor.clone()).await.unwrap();
        let seen = seen.lock().unwrap().map(hex::encode);
        assert_eq!(seen.as_deref(), Some(pin.as_str()));
        // A chain whose CA did not sign its end certificate records nothing.
        let stranger_ca = der(&super::ca(&stranger.path().join("tls")).unwrap().cert).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["10.9.9.9".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mismatched = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), stranger_ca],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let (client, seen) = first_seen_client().unwrap();
        let err = handshake(client, TlsAcceptor::from(Arc::new(mismatched)))
            .await
            .unwrap_err();
        assert!(err.contains("not signed by a CA in its chain"), "{err}");
        assert!(seen.lock().unwrap().is_none());
    }
}
