//! Static sites: files from an image, served by the node itself the way nginx serves a
//! static root with its defaults.
//!
//! Every file is opened through a `cap_std::fs::Dir` on the site root, so no request
//! (`..`, `%2e%2e`, `%2f`, NUL, a symlink pointing out) can read outside it: the path is
//! checked here and the kernel-level `openat` beneath the root refuses the rest.
//!
//! Images are immutable, so a file's bytes and headers are cached in memory by path (small
//! files, up to a per-site budget) and its ETag is derived from the image digest and path.

use std::collections::HashMap;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Full};
use percent_encoding::percent_decode_str;
use sha2::{Digest as _, Sha256};

use crate::ResponseBody;

/// Files up to this size are kept in memory after their first request.
const CACHE_FILE_MAX: u64 = 1 << 20;
/// Memory one site may use for cached files.
const CACHE_BUDGET: u64 = 64 << 20;
/// Chunk size when streaming larger files.
const CHUNK: usize = 64 << 10;

/// A static site rooted at one directory of an extracted image.
pub struct StaticSite {
    root: Dir,
    /// Distinguishes this image's ETags from any other's.
    tag: String,
    cache: RwLock<Cache>,
}

/// Paths looked up so far, including directories and misses (so a missing `.gz`
/// variant costs one syscall per site, not one per request).
#[derive(Default)]
struct Cache {
    paths: HashMap<String, Found>,
    bytes: u64,
}

/// Paths remembered per site, so a scan of random URLs cannot grow the cache without end.
const CACHE_PATHS: usize = 16 * 1024;

/// One servable representation of a file (the file itself or a precompressed variant).
struct Entry {
    content: Content,
    len: u64,
    etag: String,
    last_modified: SystemTime,
    /// `last_modified` formatted once, as sent.
    last_modified_http: String,
    content_type: HeaderValue,
    encoding: Option<&'static str>,
}

enum Content {
    Memory(Bytes),
    /// Path relative to the root, reopened (beneath the root) per request.
    Disk(String),
}

/// What a path names.
#[derive(Clone)]
enum Found {
    File(Arc<Entry>),
    Dir,
    Missing,
}

impl StaticSite {
    /// Opens the site root: `site_root` (relative, from the image) beneath the extracted
    /// tree `tree` (the node's own directory). The site root is resolved through a handle
    /// on the tree, so neither `..` nor a symlink in the image (`html -> /`) can make it
    /// a directory outside the image. `image_tag` (e.g. the image digest) seeds the ETags.
    pub fn open(tree: &Path, site_root: &Path, image_tag: &str) -> io::Result<Self> {
        let tree = Dir::open_ambient_dir(tree, ambient_authority())?;
        let root = if site_root.as_os_str().is_empty() {
            tree
        } else {
            tree.open_dir(site_root)?
        };
        Ok(Self {
            root,
            tag: image_tag.to_string(),
            cache: RwLock::new(Cache::default()),
        })
    }

    /// Answers one request. Never fails: every problem is a status code.
    pub async fn handle(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Response<ResponseBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let head = method == Method::HEAD;
        let Some(rel) = clean_path(uri.path()) else {
            return text(StatusCode::BAD_REQUEST, "400 Bad Request");
        };
        let accepts = accepted_encodings(headers);
        match self.find(&rel, accepts) {
            Found::File(entry) => self.respond(&entry, headers, head, StatusCode::OK),
            Found::Dir if !uri.path().ends_with('/') => {
                // Always path-absolute: `//evil.example/x` as a Location would send the
                // browser to another host.
                let path = format!("/{}/", uri.path().trim_start_matches('/'));
                let location = match uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let mut r = text(StatusCode::MOVED_PERMANENTLY, "301 Moved Permanently");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Found::Dir => {
                let index = if rel.is_empty() {
                    "index.html".to_string()
                } else {
                    format!("{rel}/index.html")
                };
                match self.find(&index, accepts) {
                    Found::File(entry) => self.respond(&entry, headers, head, StatusCode::OK),
                    // A directory without an index, as nginx without autoindex.
                    _ => text(StatusCode::FORBIDDEN, "403 Forbidden"),
                }
            }
            Found::Missing => match self.find("404.html", Accepts::default()) {
                Found::File(entry) => {
                    self.respond(&entry, &HeaderMap::new(), head, StatusCode::NOT_FOUND)
                }
                _ => text(StatusCode::NOT_FOUND, "404 Not Found"),
            },
        }
    }

    /// Looks `rel` up, preferring a precompressed variant the client accepts.
    fn find(&self, rel: &str, accepts: Accepts) -> Found {
        if accepts.br
            && let Found::File(e) = self.resolve(&format!("{rel}.br"), rel, Some("br"))
        {
            return Found::File(e);
        }
        if accepts.gzip
            && let Found::File(e) = self.resolve(&format!("{rel}.gz"), rel, Some("gzip"))
        {
            return Found::File(e);
        }
        self.resolve(rel, rel, None)
    }

    /// What `file` is, from the cache or the disk (served with `original`'s type).
    fn resolve(&self, file: &str, original: &str, encoding: Option<&'static str>) -> Found {
        if let Some(found) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .paths
            .get(file)
        {
            return found.clone();
        }
        let (found, cost) = self.load(file, original, encoding);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.paths.len() < CACHE_PATHS && cache.bytes + cost <= CACHE_BUDGET {
            cache.bytes += cost;
            cache.paths.insert(file.to_string(), found.clone());
        }
        found
    }

    /// Reads what `file` is off the disk; small files are read whole. Returns the bytes
    /// the cache would hold.
    fn load(&self, file: &str, original: &str, encoding: Option<&'static str>) -> (Found, u64) {
        let path = if file.is_empty() { "." } else { file };
        let meta = match self.root.metadata(path) {
            Ok(m) => m,
            Err(_) => return (Found::Missing, 0),
        };
        if meta.is_dir() {
            return (Found::Dir, 0);
        }
        if !meta.is_file() {
            return (Found::Missing, 0);
        }
        let Ok(mut f) = self.root.open(path) else {
            return (Found::Missing, 0);
        };
        let len = meta.len();
        let last_modified = meta.modified().map(|t| t.into_std()).unwrap_or(UNIX_EPOCH);
        let small = len <= CACHE_FILE_MAX;
        let content = if small {
            let mut buf = Vec::with_capacity(len as usize);
            if f.read_to_end(&mut buf).is_err() {
                return (Found::Missing, 0);
            }
            Content::Memory(Bytes::from(buf))
        } else {
            Content::Disk(file.to_string())
        };
        let mut h = Sha256::new();
        h.update(self.tag.as_bytes());
        h.update(b"\0");
        h.update(file.as_bytes());
        let etag = format!("\"{}\"", &hex::encode(h.finalize())[..20]);
        let mime = mime_guess::from_path(original).first_or_octet_stream();
        let content_type = HeaderValue::from_str(mime.essence_str())
            .unwrap_or(HeaderValue::from_static("application/octet-stream"));
        let entry = Entry {
            content,
            len,
            etag,
            last_modified,
            last_modified_http: httpdate::fmt_http_date(last_modified),
            content_type,
            encoding,
        };
        (Found::File(Arc::new(entry)), if small { len } else { 0 })
    }

    fn respond(
        &self,
        e: &Entry,
        req: &HeaderMap,
        head: bool,
        status: StatusCode,
    ) -> Response<ResponseBody> {
        let last_modified = &e.last_modified_http;
        let mut builder = Response::builder()
            .header(header::CONTENT_TYPE, e.content_type.clone())
            .header(header::LAST_MODIFIED, last_modified)
            .header(header::ETAG, &e.etag)
            .header(header::ACCEPT_RANGES, "bytes");
        if let Some(enc) = e.encoding {
            builder = builder
                .header(header::CONTENT_ENCODING, enc)
                .header(header::VARY, "Accept-Encoding");
        }
        if status == StatusCode::OK && not_modified(req, e) {
            return finish(builder.status(StatusCode::NOT_MODIFIED), empty());
        }
        let range = if status == StatusCode::OK && if_range_holds(req, e, last_modified) {
            req.get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(|r| parse_range(r, e.len))
        } else {
            None
        };
        let (status, start, len) = match range {
            None | Some(RangeReq::Ignore) => (status, 0, e.len),
            Some(RangeReq::Unsatisfiable) => {
                let b = builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{}", e.len));
                return finish(b, full(Bytes::from_static(b"416 Range Not Satisfiable\n")));
            }
            Some(RangeReq::Range(start, end)) => {
                builder = builder.header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{end}/{}", e.len),
                );
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
        };
        let builder = builder.status(status).header(header::CONTENT_LENGTH, len);
        if head {
            return finish(builder, empty());
        }
        let body = match &e.content {
            Content::Memory(bytes) => full(bytes.slice(start as usize..(start + len) as usize)),
            Content::Disk(rel) => match self.stream(rel, start, len) {
                Ok(b) => b,
                Err(_) => return text(StatusCode::NOT_FOUND, "404 Not Found"),
            },
        };
        finish(builder, body)
    }

    /// Streams `len` bytes of a large file from `start`, reading off the executor.
    fn stream(&self, rel: &str, start: u64, len: u64) -> io::Result<ResponseBody> {
        let mut file = self.root.open(rel)?.into_std();
        file.seek(SeekFrom::Start(start))?;
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, crate::BoxError>>(2);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        if tx
                            .blocking_send(Ok(http_body::Frame::data(Bytes::from(buf))))
                            .is_err()
                        {
                            return; // client went away
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Box::new(e)));
                        return;
                    }
                }
            }
        });
        let frames =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        Ok(http_body_util::StreamBody::new(frames).boxed_unsync())
    }
}

#[derive(Clone, Copy, Default)]
struct Accepts {
    gzip: bool,
    br: bool,
}

fn accepted_encodings(headers: &HeaderMap) -> Accepts {
    let mut a = Accepts::default();
    for v in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in v.split(',') {
            let mut parts = item.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            if refused {
                continue;
            }
            match name {
                "gzip" => a.gzip = true,
                "br" => a.br = true,
                _ => {}
            }
        }
    }
    a
}

/// The request path as a relative path beneath the root, or `None` if it tries to leave
/// it or is not a valid path: percent-decoded once, `.` and empty segments dropped, any
/// `..`, NUL or backslash refused.
fn clean_path(raw: &str) -> Option<String> {
    let decoded = percent_decode_str(raw).collect::<Vec<u8>>();
    let decoded = String::from_utf8(decoded).ok()?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut parts = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// `If-None-Match` (preferred) or `If-Modified-Since` says the client's copy is current.
fn not_modified(req: &HeaderMap, e: &Entry) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == e.etag);
    }
    if let Some(ims) = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        && let Ok(since) = httpdate::parse_http_date(ims)
    {
        let modified = e
            .last_modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        return modified <= since;
    }
    false
}

/// `If-Range`: ranges apply only if the validator still matches.
fn if_range_holds(req: &HeaderMap, e: &Entry, last_modified: &str) -> bool {
    match req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v == e.etag || v == last_modified,
    }
}

enum RangeReq {
    /// Serve the whole file (multiple ranges, or a unit we do not know).
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Range(u64, u64),
}

fn parse_range(value: &str, len: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Ignore;
    };
    if spec.contains(',') {
        return RangeReq::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeReq::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            Err(_) => return RangeReq::Ignore,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeReq::Ignore;
            };
            let end = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(end) if end >= start => end.min(len.saturating_sub(1)),
                    _ => return RangeReq::Ignore,
                }
            };
            (start, end)
        }
        (true, true) => return RangeReq::Ignore,
    };
    if len == 0 || range.0 >= len {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Range(range.0, range.1)
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn finish(builder: http::response::Builder, body: ResponseBody) -> Response<ResponseBody> {
    builder.body(body).unwrap_or_else(|_| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error",
        )
    })
}

fn text(status: StatusCode, msg: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(full(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_leave_the_root() {
        assert_eq!(clean_path("/").as_deref(), Some(""));
        assert_eq!(clean_path("/a/./b//c.html").as_deref(), Some("a/b/c.html"));
        assert_eq!(clean_path("/a%20b/%63.html").as_deref(), Some("a b/c.html"));
        for evil in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E%2Fx",
            "/a%2f..%2f..%2fx",
            "/x%00.html",
            "/..\\x",
        ] {
            assert_eq!(clean_path(evil), None, "{evil}");
        }
    }

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range("bytes=0-4", 10),
            RangeReq::Range(0, 4)
        ));
        assert!(matches!(parse_range("bytes=5-", 10), RangeReq::Range(5, 9)));
        assert!(matches!(parse_range("bytes=-3", 10), RangeReq::Range(7, 9)));
        assert!(matches!(
            parse_range("bytes=-30", 10),
            RangeReq::Range(0, 9)
        ));
        assert!(matches!(
            parse_range("bytes=8-100", 10),
            RangeReq::Range(8, 9)
        ));
        assert!(matches!(
            parse_range("bytes=10-", 10),
            RangeReq::Unsatisfiable
        ));
        assert!(matches!(
            parse_range("bytes=-0", 10),
            RangeReq::Unsatisfiable
        ));
        assert!(matches!(parse_range("bytes=0-1,3-4", 10), RangeReq::Ignore));
        assert!(matches!(parse_range("items=0-1", 10), RangeReq::Ignore));
        assert!(matches!(parse_range("bytes=5-2", 10), RangeReq::Ignore));
    }

    #[test]
    fn encodings() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br;q=0"),
        );
        let a = accepted_encodings(&h);
        assert!(a.gzip && !a.br);
    }

    fn site() -> (tempfile::TempDir, StaticSite) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("html");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
        std::fs::write(root.join("style.css"), "body{}").unwrap();
        std::fs::write(root.join("404.html"), "<h1>lost</h1>").unwrap();
        std::fs::write(root.join("app.js"), "console.log(1)").unwrap();
        std::fs::write(root.join("app.js.gz"), b"\x1f\x8bfake-gzip").unwrap();
        std::fs::write(
            root.join("big.bin"),
            vec![7u8; (CACHE_FILE_MAX + 10) as usize],
        )
        .unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("style.css", root.join("inside")).unwrap();
        let site = StaticSite::open(dir.path(), Path::new("html"), "sha256:test").unwrap();
        (dir, site)
    }

    #[test]
    fn a_site_root_never_resolves_outside_the_tree() {
        let host = tempfile::tempdir().unwrap();
        let tree = host.path().join("tree");
        std::fs::create_dir_all(tree.join("www")).unwrap();
        std::os::unix::fs::symlink("/", tree.join("html")).unwrap();
        std::os::unix::fs::symlink("/root", tree.join("www/root")).unwrap();
        std::os::unix::fs::symlink("../..", tree.join("up")).unwrap();
        for root in ["html", "www/root", "up", "../", "www/../.."] {
            assert!(
                StaticSite::open(&tree, Path::new(root), "t").is_err(),
                "{root} opened"
            );
        }
        assert!(StaticSite::open(&tree, Path::new("www"), "t").is_ok());
    }

    async fn get(
        site: &StaticSite,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: http::Uri = path.parse().unwrap();
        let r = site.handle(&method, &uri, &h).await;
        let (parts, body) = r.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn serves_like_nginx_defaults() {
        let (_d, site) = site();
        let (s, h, b) = get(&site, Method::GET, "/", &[]).await;
        assert_eq!((s, b.as_ref()), (StatusCode::OK, &b"<h1>home</h1>"[..]));
        assert_eq!(h["content-type"], "text/html");
        assert_eq!(h["content-length"], "13");
        let (s, h, _) = get(&site, Method::GET, "/docs?x=1", &[]).await;
        assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(h["location"], "/docs/?x=1");
        for open_redirect in ["//docs", "///docs"] {
            let (s, h, _) = get(&site, Method::GET, open_redirect, &[]).await;
            assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
            assert_eq!(h["location"], "/docs/", "{open_redirect}");
        }
        let (s, _, b) = get(&site, Method::GET, "/docs/", &[]).await;
        assert_eq!((s, b.as_ref()), (StatusCode::OK, &b"<h1>docs</h1>"[..]));
        let (s, _, _) = get(&site, Method::GET, "/empty/", &[]).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, h, _) = get(&site, Method::GET, "/style.css", &[]).await;
        assert_eq!(
            (s, h["content-type"].to_str().unwrap()),
            (StatusCode::OK, "text/css")
        );
        let (s, _, b) = get(&site, Method::GET, "/nope.html", &[]).await;
        assert_eq!(
            (s, b.as_ref()),
            (StatusCode::NOT_FOUND, &b"<h1>lost</h1>"[..])
        );
        let (s, h, b) = get(&site, Method::HEAD, "/style.css", &[]).await;
        assert_eq!(
            (s, h["content-length"].to_str().unwrap(), b.len()),
            (StatusCode::OK, "6", 0)
        );
        let (s, h, _) = get(&site, Method::POST, "/", &[]).await;
        assert_eq!(
            (s, h["allow"].to_str().unwrap()),
            (StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD")
        );
        let (s, _, b) = get(&site, Method::GET, "/inside", &[]).await;
        assert_eq!(
            (s, b.as_ref()),
            (StatusCode::OK, &b"body{}"[..]),
            "symlinks inside the root work"
        );
        let (s, _, b) = get(&site, Method::GET, "/big.bin", &[]).await;
        assert_eq!((s, b.len() as u64), (StatusCode::OK, CACHE_FILE_MAX + 10));
    }

    #[tokio::test]
    async fn never_reads_outside_the_root() {
        let (_d, site) = site();
        for evil in [
            "/../secret",
            "/%2e%2e/secret",
            "/%2e%2e%2fsecret",
            "/docs/..%2f..%2fsecret",
            "/escape",
            "/secret%00.html",
        ] {
            let (s, _, b) = get(&site, Method::GET, evil, &[]).await;
            assert!(
                s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
                "{evil}: {s}"
            );
            assert!(
                !String::from_utf8_lossy(&b).contains("outside"),
                "{evil} leaked the file"
            );
        }
    }

    #[tokio::test]
    async fn conditional_requests_ranges_and_precompressed_files() {
        let (_d, site) = site();
        let (_, h, _) = get(&site, Method::GET, "/index.html", &[]).await;
        let etag = h["etag"].to_str().unwrap().to_string();
        let lm = h["last-modified"].to_str().unwrap().to_string();
        let (s, _, b) = get(
            &site,
            Method::GET,
            "/index.html",
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!((s, b.len()), (StatusCode::NOT_MODIFIED, 0));
        let (s, _, _) = get(
            &site,
            Method::GET,
            "/index.html",
            &[("if-none-match", "\"other\"")],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _, _) = get(
            &site,
            Method::GET,
            "/index.html",
            &[("if-modified-since", &lm)],
        )
        .await;
        assert_eq!(s, StatusCode::NOT_MODIFIED);
        let (s, _, _) = get(
            &site,
            Method::GET,
            "/index.html",
            &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        )
        .await;
        assert_eq!(s, StatusCode::OK);

        let (s, h, b) = get(&site, Method::GET, "/index.html", &[("range", "bytes=4-7")]).await;
        assert_eq!((s, b.as_ref()), (StatusCode::PARTIAL_CONTENT, &b"home"[..]));
        assert_eq!(h["content-range"], "bytes 4-7/13");
        let (s, _, b) = get(&site, Method::GET, "/index.html", &[("range", "bytes=-5")]).await;
        assert_eq!(
            (s, b.as_ref()),
            (StatusCode::PARTIAL_CONTENT, &b"</h1>"[..])
        );
        let (s, h, _) = get(
            &site,
            Method::GET,
            "/index.html",
            &[("range", "bytes=100-")],
        )
        .await;
        assert_eq!(
            (s, h["content-range"].to_str().unwrap()),
            (StatusCode::RANGE_NOT_SATISFIABLE, "bytes */13")
        );
        let (s, _, b) = get(
            &site,
            Method::GET,
            "/index.html",
            &[("range", "bytes=0-1"), ("if-range", "\"stale\"")],
        )
        .await;
        assert_eq!(
            (s, b.len()),
            (StatusCode::OK, 13),
            "a stale If-Range gets the whole file"
        );
        let (s, _, b) = get(
            &site,
            Method::GET,
            "/big.bin",
            &[("range", "bytes=1048570-")],
        )
        .await;
        assert_eq!((s, b.len()), (StatusCode::PARTIAL_CONTENT, 16));

        let (s, h, b) = get(
            &site,
            Method::GET,
            "/app.js",
            &[("accept-encoding", "gzip, deflate")],
        )
        .await;
        assert_eq!(
            (
                s,
                h["content-encoding"].to_str().unwrap(),
                h["vary"].to_str().unwrap()
            ),
            (StatusCode::OK, "gzip", "Accept-Encoding")
        );
        assert_eq!(h["content-type"], "text/javascript");
        assert!(b.starts_with(b"\x1f\x8b"));
        let (_, h, b) = get(&site, Method::GET, "/app.js", &[]).await;
        assert!(!h.contains_key("content-encoding"));
        assert_eq!(b.as_ref(), b"console.log(1)");
    }
}
