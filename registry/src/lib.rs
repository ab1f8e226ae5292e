//! skiff-registry: the OCI distribution API, as a client. `skiff push`/`pull` and the
//! Docker API's pull and push speak it.
//!
//! Images move through an image layout: push uploads the blobs and the manifest of an
//! image in a store byte for byte (so the digest a registry reports is the image's id);
//! pull downloads and verifies every blob against its digest before any of them enters
//! the store. Callers pull into a scratch store and load the result as they load an
//! archive, so what a registry sends is checked as an uploaded image is.

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode, header};
use sha2::{Digest as _, Sha256};
use skiff_image::oci::{self, Index, Manifest};
use skiff_image::{ImageStore, StagedBlob};
use skiff_spec::Digest;

/// Manifests skiff can read, in order of preference.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest blob accepted from a registry.
const MAX_BLOB: u64 = 4 << 30;

/// `HOST[:PORT]/REPOSITORY[:TAG|@sha256:…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .with_context(|| format!("invalid reference {s:?}"))?,
                ),
            ),
            None => (s, None),
        };
        let (registry, rest) = name
            .split_once('/')
            .filter(|(host, _)| host.contains(['.', ':']) || *host == "localhost")
            .with_context(|| {
                format!(
                    "invalid reference {s:?}: name the registry, as HOST[:PORT]/REPOSITORY[:TAG]"
                )
            })?;
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (rest, "latest"),
        };
        let ok = !repository.is_empty()
            && repository.split('/').all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !ok {
            bail!(
                "invalid reference {s:?}: repository {repository:?} must be lowercase letters, digits, '.', '_', '-' and '/'"
            );
        }
        Ok(Self {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.into(),
            digest,
        })
    }

    /// The tag, or the digest when one was given.
    fn reference(&self) -> String {
        self.digest
            .map_or_else(|| self.tag.clone(), |d| d.to_string())
    }

    /// The local name the image gets: `host:port/repo:tag`.
    pub fn local_name(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }

    fn loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        let host = host.trim_matches(['[', ']']);
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// A registry session: one repository, with a bearer token once challenged.
pub struct Registry {
    http: reqwest::Client,
    base: String,
    reference: Reference,
    token: Option<String>,
    /// User and password, sent when the registry asks for Basic auth.
    basic: Option<(String, String)>,
    /// Where the credentials come from, for errors (`SKIFF_REGISTRY_AUTH`).
    credentials_from: String,
    use_basic: bool,
    progress: Option<Progress>,
    /// The most bytes one pull may bring (its blobs as its manifest declares them).
    max_pull: u64,
}

/// Told how a transfer goes, a line at a time (an empty line when it is done).
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

impl Registry {
    /// Plain HTTP only for loopback registries or with `insecure`.
    pub fn new(reference: Reference, insecure: bool) -> anyhow::Result<Self> {
        let scheme = if insecure || reference.loopback() {
            "http"
        } else {
            "https"
        };
        let base = format!(
            "{scheme}://{}/v2/{}",
            reference.registry, reference.repository
        );
        Ok(Self {
            http: reqwest::Client::new(),
            base,
            reference,
            token: None,
            basic: None,
            credentials_from: "credentials".into(),
            use_basic: false,
            progress: None,
            max_pull: u64::MAX,
        })
    }

    /// Refuses a pull whose blobs add up to more than `bytes`, before downloading any.
    pub fn with_max_pull(mut self, bytes: u64) -> Self {
        self.max_pull = bytes;
        self
    }

    /// Credentials for registries that ask for Basic auth; `from` says where they come
    /// from, for errors (`SKIFF_REGISTRY_AUTH`, `X-Registry-Auth`).
    pub fn with_basic_auth(mut self, basic: Option<(String, String)>, from: &str) -> Self {
        self.basic = basic;
        self.credentials_from = from.to_string();
        self
    }

    /// Reports transfers to `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    fn describe(&self, method: &Method, path: &str) -> String {
        format!(
            "{method} {}/{}{path}",
            self.reference.registry, self.reference.repository
        )
    }

    /// Sends a request, answering one bearer-token challenge anonymously, and turns any
    /// status outside `ok` into a one-line error naming the registry, the call and the
    /// registry's own error code.
    async fn call(
        &mut self,
        method: Method,
        url: &str,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        ok: &[StatusCode],
    ) -> anyhow::Result<reqwest::Response> {
        for attempt in 0..2 {
            let mut req = build(self.http.request(method.clone(), url));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            } else if let (true, Some((user, password))) = (self.use_basic, &self.basic) {
                req = req.basic_auth(user, Some(password));
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach registry {}", self.reference.registry))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && self.token.is_none()
                && !self.use_basic
            {
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if challenge.as_deref().is_some_and(|c| c.starts_with("Basic"))
                    && self.basic.is_some()
                {
                    self.use_basic = true;
                    continue;
                }
                if let Some(token) = self.anonymous_token(challenge.as_deref()).await {
                    self.token = Some(token);
                    continue;
                }
            }
            if ok.contains(&resp.status()) {
                return Ok(resp);
            }
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let e = v.get("errors")?.get(0)?;
                    Some(format!(
                        "{}: {}",
                        e.get("code")?.as_str()?,
                        e.get("message")?.as_str()?
                    ))
                })
                .unwrap_or_else(|| {
                    body.lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(200)
                        .collect()
                });
            let hint = match (status, self.basic.is_some()) {
                (StatusCode::UNAUTHORIZED, false) => format!(
                    " (the registry wants credentials: give them in {})",
                    self.credentials_from
                ),
                (StatusCode::UNAUTHORIZED, true) => format!(
                    " (the credentials in {} were refused)",
                    self.credentials_from
                ),
                _ => String::new(),
            };
            let detail = if detail.trim().is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            bail!(
                "registry answered {status}{hint} to {}{detail}",
                self.describe(&method, path)
            );
        }
        unreachable!("the loop returns or bails")
    }

    /// `Bearer realm="…",service="…",scope="…"` → an anonymous token, if the realm gives one.
    async fn anonymous_token(&self, challenge: Option<&str>) -> Option<String> {
        let params = challenge?.strip_prefix("Bearer ")?;
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            let (k, v) = part.trim().split_once('=')?;
            let v = v.trim_matches('"').to_string();
            if k == "realm" {
                realm = Some(v)
            } else {
                query.push((k.to_string(), v))
            }
        }
        let resp = self.http.get(realm?).query(&query).send().await.ok()?;
        let v: serde_json::Value = resp.json().await.ok()?;
        v.get("token")
            .or_else(|| v.get("access_token"))?
            .as_str()
            .map(str::to_string)
    }

    fn show(&self, what: &str) {
        if let Some(progress) = &self.progress {
            progress(what);
        }
    }

    /// Checks that the registry takes the credentials given (`docker login`): its API
    /// root answers with them.
    pub async fn check_login(mut self) -> anyhow::Result<()> {
        let root = match self.base.find("/v2/") {
            Some(at) => format!("{}/v2/", &self.base[..at]),
            None => bail!("not a registry URL: {}", self.base),
        };
        self.call(Method::GET, &root, "/v2/", |r| r, &[StatusCode::OK])
            .await
            .map(drop)
    }

    /// Uploads the image `manifest` from `store` under this reference's tag.
    pub async fn push(&mut self, store: &ImageStore, manifest: Digest) -> anyhow::Result<()> {
        let m = store.manifest(&manifest)?;
        let blobs: Vec<_> = m
            .layers
            .iter()
            .chain(std::iter::once(&m.config))
            .cloned()
            .collect();
        for (i, blob) in blobs.iter().enumerate() {
            let path = format!("/blobs/{}", blob.digest);
            let url = format!("{}{path}", self.base);
            let exists = self
                .call(
                    Method::HEAD,
                    &url,
                    &path,
                    |r| r,
                    &[StatusCode::OK, StatusCode::NOT_FOUND],
                )
                .await?;
            if exists.status() == StatusCode::OK {
                self.show(&format!(
                    "{}: exists ({}/{})",
                    blob.digest.short(),
                    i + 1,
                    blobs.len()
                ));
                continue;
            }
            self.show(&format!(
                "{} {} uploading {} bytes ({}/{})",
                blob.digest.short(),
                bar(i as u64, blobs.len() as u64),
                blob.size,
                i + 1,
                blobs.len()
            ));
            let start = self
                .call(
                    Method::POST,
                    &format!("{}/blobs/uploads/", self.base),
                    "/blobs/uploads/",
                    |r| r,
                    &[StatusCode::ACCEPTED],
                )
                .await?;
            let location = start
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .context("registry started an upload without a Location")?
                .to_string();
            let location = if location.starts_with('/') {
                let origin = self.base.split("/v2/").next().unwrap_or(&self.base);
                format!("{origin}{location}")
            } else {
                location
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{sep}digest={}", blob.digest);
            let bytes = store.blobs().read_verified(&blob.digest)?;
            self.call(
                Method::PUT,
                &url,
                "/blobs/uploads/…",
                |r| {
                    r.header(header::CONTENT_TYPE, "application/octet-stream")
                        .body(bytes.clone())
                },
                &[StatusCode::CREATED],
            )
            .await?;
        }
        let bytes = store.blobs().read_verified(&manifest)?;
        let media_type = m
            .media_type
            .clone()
            .unwrap_or_else(|| oci::MANIFEST_V1.into());
        let path = format!("/manifests/{}", self.reference.tag);
        let url = format!("{}{path}", self.base);
        self.call(
            Method::PUT,
            &url,
            &path,
            |r| {
                r.header(header::CONTENT_TYPE, &media_type)
                    .body(bytes.clone())
            },
            &[StatusCode::CREATED],
        )
        .await?;
        self.show("");
        Ok(())
    }

    /// Downloads the image this reference names into `store`, checking every digest.
    /// From a multi-platform index it takes the Wasm image, else the one for this
    /// machine (linux/amd64 on x86-64).
    /// Returns the manifest's digest.
    pub async fn pull(&mut self, store: &ImageStore) -> anyhow::Result<Digest> {
        let (mut bytes, mut media_type) = self.manifest(&self.reference.reference()).await?;
        if let Some(want) = self.reference.digest {
            check_digest(&bytes, want, "manifest")?;
        }
        if Index::is_index_type(&media_type) {
            let index: Index = serde_json::from_slice(&bytes)
                .context("the registry's index is not an OCI index")?;
            let chosen = index.choose_platform().map_err(anyhow::Error::msg)?.digest;
            (bytes, media_type) = self.manifest(&chosen.to_string()).await?;
            check_digest(&bytes, chosen, "manifest")?;
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).with_context(|| {
            format!("the registry's manifest ({media_type}) is not an image manifest")
        })?;
        let blobs: Vec<_> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .cloned()
            .collect();
        let total = blobs.iter().fold(0u64, |t, b| t.saturating_add(b.size));
        if total > self.max_pull {
            bail!(
                "the image is {total} bytes, more than the {} this node takes in one pull",
                self.max_pull
            );
        }
        let mut staged: Vec<StagedBlob> = Vec::new();
        for (i, blob) in blobs.iter().enumerate() {
            if store.blobs().contains(&blob.digest) {
                continue;
            }
            let path = format!("/blobs/{}", blob.digest);
            let url = format!("{}{path}", self.base);
            let resp = self
                .call(Method::GET, &url, &path, |r| r, &[StatusCode::OK])
                .await?;
            // No more than it declares: a registry that sends more is cut off.
            let mut writer = store.blobs().writer(blob.size.min(MAX_BLOB))?;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.with_context(|| format!("download of {} broke off", blob.digest))?;
                writer.write(&chunk)?;
                self.show(&format!(
                    "{} {} {} / {} bytes ({}/{})",
                    blob.digest.short(),
                    bar(writer.len(), blob.size),
                    writer.len(),
                    blob.size,
                    i + 1,
                    blobs.len()
                ));
            }
            let blob_file = writer.finish()?;
            if blob_file.digest() != blob.digest {
                bail!(
                    "blob {} from the registry hashes to {}: refusing it",
                    blob.digest,
                    blob_file.digest()
                );
            }
            staged.push(blob_file);
        }
        self.show("");
        // Every blob checked out: only now does anything enter the store.
        for b in staged {
            b.commit()?;
        }
        Ok(store.blobs().put(&bytes)?)
    }

    async fn manifest(&mut self, reference: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let path = format!("/manifests/{reference}");
        let url = format!("{}{path}", self.base);
        let resp = self
            .call(
                Method::GET,
                &url,
                &path,
                |r| r.header(header::ACCEPT, ACCEPT),
                &[StatusCode::OK],
            )
            .await?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(oci::MANIFEST_V1)
            .to_string();
        Ok((resp.bytes().await?.to_vec(), media_type))
    }
}

/// `[########------------]`: how much of `total` is `done`.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 24;
    let filled = (done.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}

fn check_digest(bytes: &[u8], want: Digest, what: &str) -> anyhow::Result<()> {
    let got = Digest::from_sha256(Sha256::digest(bytes).into());
    if got != want {
        bail!("{what} from the registry hashes to {got}, not {want}: refusing it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bars() {
        assert_eq!(bar(0, 100), format!("[{}]", "-".repeat(24)));
        assert_eq!(
            bar(50, 100),
            format!("[{}{}]", "#".repeat(12), "-".repeat(12))
        );
        assert_eq!(bar(200, 100), format!("[{}]", "#".repeat(24)));
    }

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000", "team/app", "v1")
        );
        assert!(r.loopback());
        assert_eq!(r.local_name(), "127.0.0.1:5000/team/app:v1");
        let r = Reference::parse("localhost:5000/app").unwrap();
        assert_eq!(r.tag, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("registry.example.com/app@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert!(!r.loopback());
        for bad in [
            "app",
            "app:v1",
            "docker/app",
            "127.0.0.1:5000/App",
            "127.0.0.1:5000/",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
