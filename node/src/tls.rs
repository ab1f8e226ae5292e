//! TLS for the API port, which kubectl needs: client-go sends a bearer token only
//! over TLS. The port answers both: a connection that opens with a TLS handshake is
//! served over TLS, any other as plain HTTP (skiff's CLI, curl, Docker's clients).
//!
//! As k3s does it: a CA is made once and kept in `<data-dir>/tls/` (its key 0600); each
//! start signs a fresh serving certificate with it for the names the node is reached
//! by, so a kubeconfig holding the CA (`skiff kubeconfig`) stays valid across restarts
//! and address changes.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::{self, pki_types};

/// The API's TLS: what serves it, and the CA clients trust.
#[derive(Clone)]
pub(crate) struct ApiTls {
    pub(crate) acceptor: TlsAcceptor,
    /// PEM.
    pub(crate) ca: String,
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

/// Loads the CA from `dir`, or makes it there. The key is the CA: its certificate can
/// be made again from it (same name, same key) and still verifies what it signed.
fn ca(dir: &Path) -> anyhow::Result<(String, KeyPair)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join("ca.key");
    let (key, _) = crate::load_or_create_secret(&key_path, || {
        KeyPair::generate()
            .expect("the OS has randomness")
            .serialize_pem()
    })?;
    let key = KeyPair::from_pem(&key)
        .with_context(|| format!("{} is not a private key", key_path.display()))?;
    let cert_path = dir.join("ca.crt");
    let cert = match std::fs::read_to_string(&cert_path) {
        Ok(cert) => cert,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = ca_params()?.self_signed(&key)?.pem();
            std::fs::write(&cert_path, &cert)
                .with_context(|| format!("cannot write {}", cert_path.display()))?;
            cert
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", cert_path.display())),
    };
    Ok((cert, key))
}

/// The names a serving certificate covers: loopback, this host, and the address the
/// API is bound to or reached at.
fn names(api: &[IpAddr], host: &str) -> Vec<String> {
    let mut out = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
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

/// The API's TLS for a node whose data dir is `data` and which is reached at `api`.
pub(crate) fn load(data: &Path, api: &[IpAddr], host: &str) -> anyhow::Result<ApiTls> {
    let (ca_pem, ca_key) = ca(&data.join("tls"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names(api, host))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "skiff node");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![
        cert.der().clone(),
        pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the CA certificate is not PEM: {e}"))?,
    ];
    let key = pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    // HTTP/1.1 only, as the plain side.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ApiTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca: ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_kept_and_each_start_signs_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = load(dir.path(), &[ip], "box").unwrap();
        let second = load(dir.path(), &["0.0.0.0".parse().unwrap()], "box").unwrap();
        assert_eq!(first.ca, second.ca);
        assert!(first.ca.starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
        assert_eq!(
            names(&[ip, "0.0.0.0".parse().unwrap()], "box"),
            ["10.1.2.3", "127.0.0.1", "::1", "box", "localhost"]
        );
    }
}
