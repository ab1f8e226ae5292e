//! skiff-registry: the OCI distribution API, as a client. `skiff push`/`pull` and the
//! Docker API's pull and push speak it.
//!
//! Images move through an image layout: push uploads the blobs and the manifest of an
//! image in a store byte for byte (so the digest a registry reports is the image's id);
//! pull downloads and verifies every blob against its digest before any of them enters
//! the store. Callers pull into a scratch store and load the result as they load an
//! archive, so what a registry sends is checked as an uploaded image is.
//!
//! A registry is an outside party, so nothing it sends is read whole or waited on
//! without end: manifests and indexes are read up to 4 MiB, token and error bodies up
//! to 64 KiB, as streams whatever their Content-Length says; every request has a
//! connect timeout and either a deadline for the whole exchange or, for blobs (which
//! may be large), an idle timeout between reads (and writes). The token service a
//! registry's challenge names is asked only at an https URL, or at http when the
//! registry itself is spoken to in plain HTTP (loopback or `--insecure`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
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
/// Largest manifest or index read from a registry (containerd's bound too).
const MAX_MANIFEST: usize = 4 << 20;
/// Largest token or error body read from a registry or its token service.
const MAX_SMALL_BODY: usize = 64 << 10;
/// Upload chunk: the unit of an upload's progress, for its idle timeout.
const UPLOAD_CHUNK: usize = 64 << 10;

/// How long a registry may take to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection. Default 10 s.
    pub connect: Duration,
    /// For a whole exchange of small things, the answer read too: a manifest, a token,
    /// a check, the start of an upload. Default 60 s.
    pub request: Duration,
    /// With nothing read or sent, for blobs: until a download's answer begins and
    /// between its reads, and while an upload's bytes wait to be taken or its answer to
    /// come. Default 60 s.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// How a call is timed.
enum Wait {
    /// The whole exchange, body included, within [`Timeouts::request`].
    Whole,
    /// Its answer within [`Timeouts::idle`] of the request's last progress (an upload
    /// tells `sent` of each chunk taken); the caller times the body's reads.
    Idle(Option<Arc<tokio::sync::Notify>>),
}

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
    /// Spoken to in plain HTTP (loopback, or `--insecure`): the one case where a token
    /// realm may be plain HTTP too.
    plain_http: bool,
    timeouts: Timeouts,
}

/// Told how a transfer goes, a line at a time (an empty line when it is done).
pub type Progress = Box<dyn Fn(&str) + Send + Sync>;

impl Registry {
    /// Plain HTTP only for loopback registries or with `insecure`.
    pub fn new(reference: Reference, insecure: bool) -> anyhow::Result<Self> {
        let plain_http = insecure || reference.loopback();
        let scheme = if plain_http { "http" } else { "https" };
        let base = format!(
            "{scheme}://{}/v2/{}",
            reference.registry, reference.repository
        );
        let timeouts = Timeouts::default();
        Ok(Self {
            http: client(&timeouts)?,
            base,
            reference,
            token: None,
            basic: None,
            credentials_from: "credentials".into(),
            use_basic: false,
            progress: None,
            max_pull: u64::MAX,
            plain_http,
            timeouts,
        })
    }

    /// Times requests by `timeouts` instead of the defaults.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> anyhow::Result<Self> {
        self.http = client(&timeouts)?;
        self.timeouts = timeouts;
        Ok(self)
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
        wait: Wait,
    ) -> anyhow::Result<reqwest::Response> {
        for attempt in 0..2 {
            let mut req = build(self.http.request(method.clone(), url));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            } else if let (true, Some((user, password))) = (self.use_basic, &self.basic) {
                req = req.basic_auth(user, Some(password));
            }
            let silent = || {
                anyhow!(
                    "registry {} did not answer {} within {:?}",
                    self.reference.registry,
                    self.describe(&method, path),
                    self.timeouts.idle
                )
            };
            let sent = match &wait {
                Wait::Whole => req.timeout(self.timeouts.request).send().await,
                Wait::Idle(progress) => {
                    within_idle(req.send(), progress.as_deref(), self.timeouts.idle)
                        .await
                        .ok_or_else(silent)?
                }
            };
            let resp = sent.map_err(|e| self.unreachable(e, &method, path))?;
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
                if let Some(token) = self.anonymous_token(challenge.as_deref()).await? {
                    self.token = Some(token);
                    continue;
                }
            }
            if ok.contains(&resp.status()) {
                return Ok(resp);
            }
            let status = resp.status();
            // Only a line of it is shown: a body larger than that, or slow, is not read.
            let body = tokio::time::timeout(
                self.timeouts.request,
                read_bounded(resp, MAX_SMALL_BODY, ""),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
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

    /// A failed send as a one-line error: not answering in time, or not reachable.
    fn unreachable(&self, e: reqwest::Error, method: &Method, path: &str) -> anyhow::Error {
        if e.is_timeout() {
            anyhow!(
                "registry {} did not answer {} within {:?}",
                self.reference.registry,
                self.describe(method, path),
                self.timeouts.request
            )
        } else {
            anyhow::Error::new(e)
                .context(format!("cannot reach registry {}", self.reference.registry))
        }
    }

    /// `Bearer realm="…",service="…",scope="…"` → an anonymous token, if the realm gives
    /// one. A realm skiff may not ask (see [`Registry::realm_url`]) and a token body over
    /// 64 KiB are errors; a realm that gives no token is none.
    async fn anonymous_token(&self, challenge: Option<&str>) -> anyhow::Result<Option<String>> {
        let Some(params) = challenge.and_then(|c| c.strip_prefix("Bearer ")) else {
            return Ok(None);
        };
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                return Ok(None);
            };
            let v = v.trim_matches('"').to_string();
            if k == "realm" {
                realm = Some(v)
            } else {
                query.push((k.to_string(), v))
            }
        }
        let Some(realm) = realm else {
            return Ok(None);
        };
        let url = self.realm_url(&realm)?;
        let Ok(resp) = self
            .http
            .get(url)
            .query(&query)
            .timeout(self.timeouts.request)
            .send()
            .await
        else {
            return Ok(None);
        };
        let body = read_bounded(resp, MAX_SMALL_BODY, &format!("the token from {realm}")).await?;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Ok(None);
        };
        Ok(v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string))
    }

    /// The token service a challenge names, if it may be asked: an https URL, or http
    /// when this registry is spoken to in plain HTTP (loopback or `--insecure`). A
    /// registry must not send skiff's request for a token in clear over the network, or
    /// make it read a file.
    fn realm_url(&self, realm: &str) -> anyhow::Result<reqwest::Url> {
        let refused = |why: &str| {
            anyhow!(
                "registry {} names a token service {realm:?} that {why}: refusing it",
                self.reference.registry
            )
        };
        let url = reqwest::Url::parse(realm).map_err(|_| refused("is not a URL"))?;
        match url.scheme() {
            "https" => Ok(url),
            "http" if self.plain_http => Ok(url),
            "http" => Err(refused(
                "is plain HTTP while the registry is HTTPS (plain HTTP is for loopback registries and --insecure)",
            )),
            _ => Err(refused("is not an http(s) URL")),
        }
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
        self.call(
            Method::GET,
            &root,
            "/v2/",
            |r| r,
            &[StatusCode::OK],
            Wait::Whole,
        )
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
                    Wait::Whole,
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
                    Wait::Whole,
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
            let bytes = bytes::Bytes::from(store.blobs().read_verified(&blob.digest)?);
            // Sent a chunk at a time, each taken telling `sent`: an upload may take long,
            // but never long without progress.
            let sent = Arc::new(tokio::sync::Notify::new());
            let body = |bytes: &bytes::Bytes| {
                let (bytes, sent) = (bytes.clone(), sent.clone());
                let chunks = (0..bytes.len()).step_by(UPLOAD_CHUNK).map(move |at| {
                    sent.notify_one();
                    Ok::<_, std::io::Error>(bytes.slice(at..bytes.len().min(at + UPLOAD_CHUNK)))
                });
                reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
            };
            self.call(
                Method::PUT,
                &url,
                "/blobs/uploads/…",
                |r| {
                    r.header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(header::CONTENT_LENGTH, bytes.len())
                        .body(body(&bytes))
                },
                &[StatusCode::CREATED],
                Wait::Idle(Some(sent.clone())),
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
            Wait::Whole,
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
                .call(
                    Method::GET,
                    &url,
                    &path,
                    |r| r,
                    &[StatusCode::OK],
                    Wait::Idle(None),
                )
                .await?;
            // No more than it declares: a registry that sends more is cut off.
            let mut writer = store.blobs().writer(blob.size.min(MAX_BLOB))?;
            let mut stream = resp.bytes_stream();
            let idle = self.timeouts.idle;
            while let Some(chunk) =
                tokio::time::timeout(idle, stream.next())
                    .await
                    .map_err(|_| {
                        anyhow!(
                            "download of {} stalled: nothing came for {idle:?}",
                            blob.digest
                        )
                    })?
            {
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
                Wait::Whole,
            )
            .await?;
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(oci::MANIFEST_V1)
            .to_string();
        let what = format!(
            "manifest {reference} of {}/{}",
            self.reference.registry, self.reference.repository
        );
        let bytes = read_bounded(resp, MAX_MANIFEST, &what).await?;
        Ok((bytes, media_type))
    }
}

/// The HTTP client: every connection opened within `timeouts.connect`.
fn client(timeouts: &Timeouts) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .build()
        .context("failed to set up the HTTP client")
}

/// `fut`'s output, or none once `idle` passes with no word from `progress` (and, with
/// no `progress`, once `idle` passes).
async fn within_idle<T>(
    fut: impl Future<Output = T>,
    progress: Option<&tokio::sync::Notify>,
    idle: Duration,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let moved = async {
            match progress {
                Some(p) => p.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = &mut fut => return Some(out),
            () = moved => {}
            () = tokio::time::sleep(idle) => return None,
        }
    }
}

/// A body of at most `max` bytes, read as a stream: refused at once when its
/// Content-Length says more, and as soon as more arrives whatever it says. `what` names
/// it in the error.
async fn read_bounded(resp: reqwest::Response, max: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    let too_large = || {
        anyhow!(
            "{what} is larger than {}: refusing it",
            if max >= 1 << 20 {
                format!("{} MiB", max >> 20)
            } else {
                format!("{} KiB", max >> 10)
            }
        )
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {what} broke off"))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
    use std::net::SocketAddr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;

    /// How the test registry answers a request.
    enum Answer {
        /// A status line and headers (no blank line), then `body` with its length.
        Fixed(String, Vec<u8>),
        /// 200 and `total` bytes of JSON whitespace, written as long as the client
        /// reads, with a Content-Length or (without) until the connection closes.
        Endless { total: usize, length: bool },
        /// 200 with a Content-Length of 1,000 and then only these bytes, the
        /// connection held open.
        Stalled(Vec<u8>),
        /// Nothing, ever, the connection held open.
        Silent,
    }

    type Route = Arc<dyn Fn(&str, SocketAddr) -> Answer + Send + Sync>;

    /// A registry on 127.0.0.1 (raw HTTP/1.1, so it can lie and stall) that answers
    /// each request as `route` says from its path and the server's address. An
    /// `Endless` answer's bytes written before the client stopped reading come on the
    /// receiver.
    async fn serve(
        route: impl Fn(&str, SocketAddr) -> Answer + Send + Sync + 'static,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let route: Route = Arc::new(route);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(connection(conn, addr, route.clone(), tx.clone()));
            }
        });
        (addr, rx)
    }

    async fn connection(
        mut conn: TcpStream,
        addr: SocketAddr,
        route: Route,
        written: mpsc::UnboundedSender<usize>,
    ) {
        loop {
            // The request's head (the client sends GETs without bodies here).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split(' ').nth(1).unwrap_or("");
            match route(path, addr) {
                Answer::Fixed(status, body) => {
                    let head = format!("{status}\r\nContent-Length: {}\r\n\r\n", body.len());
                    if conn.write_all(head.as_bytes()).await.is_err()
                        || conn.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
                Answer::Endless { total, length } => {
                    let framing = if length {
                        format!("Content-Length: {total}")
                    } else {
                        "Connection: close".to_string()
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{framing}\r\n\r\n",
                        oci::MANIFEST_V1
                    );
                    let chunk = vec![b' '; 64 << 10];
                    let mut sent = 0;
                    if conn.write_all(head.as_bytes()).await.is_ok() {
                        while sent < total && conn.write_all(&chunk).await.is_ok() {
                            sent += chunk.len();
                        }
                    }
                    let _ = written.send(sent);
                    return;
                }
                Answer::Stalled(part) => {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&part).await;
                    let _ = conn.read(&mut byte).await;
                    return;
                }
                Answer::Silent => {
                    let _ = conn.read(&mut byte).await;
                    return;
                }
            }
        }
    }

    fn registry(addr: SocketAddr) -> Registry {
        Registry::new(Reference::parse(&format!("{addr}/app:v1")).unwrap(), false).unwrap()
    }

    /// A pull into a scratch store, given up on after 30 s (a test must not hang).
    async fn pull(registry: &mut Registry) -> anyhow::Result<Digest> {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::open(dir.path())?;
        tokio::time::timeout(Duration::from_secs(30), registry.pull(&store))
            .await
            .context("the pull hung")?
    }

    #[tokio::test]
    async fn a_manifest_over_4_mib_is_refused_and_not_read_on() {
        const TOTAL: usize = 64 << 20;
        for length in [true, false] {
            let (addr, mut written) = serve(move |_, _| Answer::Endless {
                total: TOTAL,
                length,
            })
            .await;
            let mut r = registry(addr);
            let err = format!("{:#}", pull(&mut r).await.unwrap_err());
            assert!(
                err.contains(&format!(
                    "manifest v1 of {addr}/app is larger than 4 MiB: refusing it"
                )),
                "{err}"
            );
            drop(r);
            // The registry sees the client hang up long before its 64 MiB are taken.
            let wrote = tokio::time::timeout(Duration::from_secs(30), written.recv())
                .await
                .expect("the client stops reading")
                .unwrap();
            assert!(
                wrote < TOTAL / 2,
                "the client read {wrote} bytes (length: {length})"
            );
        }
    }

    #[tokio::test]
    async fn a_token_body_over_64_kib_is_refused() {
        let (addr, _) = serve(|path, addr| {
            if path.starts_with("/token") {
                Answer::Endless {
                    total: 64 << 20,
                    length: false,
                }
            } else {
                Answer::Fixed(
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"test\""
                    ),
                    Vec::new(),
                )
            }
        })
        .await;
        let err = format!("{:#}", pull(&mut registry(addr)).await.unwrap_err());
        assert!(
            err.contains(&format!(
                "the token from http://{addr}/token is larger than 64 KiB"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_is_given_up_on() {
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_millis(300),
            idle: Duration::from_millis(300),
        };
        // Nothing at all: the manifest's deadline.
        let (addr, _) = serve(|_, _| Answer::Silent).await;
        let mut r = registry(addr).with_timeouts(timeouts).unwrap();
        let started = Instant::now();
        let err = format!("{:#}", pull(&mut r).await.unwrap_err());
        assert!(
            err.contains(&format!(
                "registry {addr} did not answer GET {addr}/app/manifests/v1 within 300ms"
            )),
            "{err}"
        );
        assert!(started.elapsed() >= timeouts.request);
        // A blob that stops coming: its idle timeout, though the blob has no deadline.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MANIFEST_V1,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{}", "a".repeat(64)), "size": 1000},
            "layers": [],
        });
        let (addr, _) = serve(move |path, _| {
            if path.contains("/blobs/") {
                Answer::Stalled(b"{\"partial".to_vec())
            } else {
                Answer::Fixed(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: {}", oci::MANIFEST_V1),
                    manifest.to_string().into_bytes(),
                )
            }
        })
        .await;
        let mut r = registry(addr).with_timeouts(timeouts).unwrap();
        let err = format!("{:#}", pull(&mut r).await.unwrap_err());
        assert!(err.contains("stalled: nothing came for 300ms"), "{err}");
    }

    #[tokio::test]
    async fn token_realms_are_https_or_the_registrys_own_plain_http() {
        // An HTTPS registry naming a plain-HTTP token service: refused without
        // connecting to it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let remote = || Reference::parse("registry.example.com/app:v1").unwrap();
        let r = Registry::new(remote(), false).unwrap();
        let challenge = format!("Bearer realm=\"{realm}\",service=\"x\"");
        let err =
            tokio::time::timeout(Duration::from_secs(30), r.anonymous_token(Some(&challenge)))
                .await
                .expect("the token request hung")
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("is plain HTTP while the registry is HTTPS"),
            "{err}"
        );
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the client connected to the realm"
        );
        assert!(r.realm_url("https://auth.example.com/token").is_ok());
        // With --insecure the registry is plain HTTP too, and so may its realm be.
        assert!(
            Registry::new(remote(), true)
                .unwrap()
                .realm_url(&realm)
                .is_ok()
        );

        // A file, from a loopback registry: refused, named.
        let (addr, _) = serve(|_, _| {
            Answer::Fixed(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"file:///etc/passwd\"".into(),
                Vec::new(),
            )
        })
        .await;
        let err = format!("{:#}", pull(&mut registry(addr)).await.unwrap_err());
        assert!(
            err.contains(
                r#"names a token service "file:///etc/passwd" that is not an http(s) URL"#
            ),
            "{err}"
        );
    }

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
