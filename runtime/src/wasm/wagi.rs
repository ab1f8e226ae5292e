//! WAGI: a WASI preview1 command module run once per request, CGI style (RFC 3875).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use percent_encoding::percent_decode_str;
use wasmtime::{InstancePre, Store};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use super::guest::{Limiter, RunError, WagiState, bound_store, classify, wasi_builder};
use super::{Compiled, ContainerConfig, NodeMemory};
use crate::{BoxError, HandleError, RequestInfo, ResponseBody};

/// Largest request body handed to a WAGI guest on stdin.
const MAX_BODY: usize = 16 << 20;
/// Largest CGI output taken from a guest's stdout; writes past it fail in the guest.
const MAX_OUTPUT: usize = 32 << 20;

/// A container of a WAGI app.
pub struct WagiWorkload {
    pre: InstancePre<WagiState>,
    config: ContainerConfig,
    /// Keeps the code in the runtime's shared cache while this container lives.
    _code: Arc<Compiled>,
    memory: NodeMemory,
    usage: Arc<crate::Usage>,
}

impl WagiWorkload {
    pub(crate) fn new(
        pre: InstancePre<WagiState>,
        config: ContainerConfig,
        code: Arc<Compiled>,
        memory: NodeMemory,
    ) -> Self {
        Self {
            pre,
            config,
            _code: code,
            memory,
            usage: Arc::default(),
        }
    }

    /// The most memory one instance may have.
    pub fn instance_memory(&self) -> u64 {
        self.config.limits.memory_bytes
    }

    /// What it has used so far.
    pub fn usage(&self) -> &Arc<crate::Usage> {
        &self.usage
    }

    pub(crate) async fn handle<B>(
        &self,
        req: hyper::Request<B>,
        info: &RequestInfo,
    ) -> Result<hyper::Response<ResponseBody>, HandleError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let timeout = self.config.limits.timeout();
        let deadline = Instant::now() + timeout;
        // Held until the instance is gone (the end of this call).
        let _reservation = self
            .memory
            .reserve(self.config.limits.memory_bytes)
            .map_err(|e| HandleError::Overloaded(e.to_string()))?;
        let (parts, body) = req.into_parts();
        let body =
            match tokio::time::timeout_at(deadline.into(), Limited::new(body, MAX_BODY).collect())
                .await
            {
                Err(_) => return Err(HandleError::Timeout(timeout)),
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(HandleError::BodyTooLarge(MAX_BODY as u64));
                }
                Ok(Err(e)) => return Err(HandleError::BadRequest(e.to_string())),
            };

        let stdout = MemoryOutputPipe::new(MAX_OUTPUT);
        let mut builder = wasi_builder(&self.config);
        builder
            .envs(&cgi_env(&parts, info, body.len()))
            .args(&cgi_args(parts.uri.query().unwrap_or("")))
            .stdin(MemoryInputPipe::new(body))
            .stdout(stdout.clone());
        self.usage.request();
        let (limiter, memory_hit) =
            Limiter::new(self.config.limits.memory_bytes, self.usage.clone());
        let mut store = Store::new(
            self.pre.module().engine(),
            WagiState {
                wasi: builder.build_p1(),
                limiter,
            },
        );
        bound_store(&mut store, deadline, |s: &mut WagiState| &mut s.limiter);

        let run = async {
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(RunError::Instantiate)?;
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .map_err(RunError::Instantiate)?;
            start
                .call_async(&mut store, ())
                .await
                .map_err(RunError::Guest)
        };
        let run = crate::usage::CpuTimed::new(run, self.usage.clone());
        match tokio::time::timeout_at(deadline.into(), run).await {
            Err(_) => return Err(HandleError::Timeout(timeout)),
            Ok(Ok(())) => {}
            Ok(Err(RunError::Instantiate(e))) => {
                return Err(HandleError::Instantiate(format!("{e:#}")));
            }
            Ok(Err(RunError::Guest(e))) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                // `exit(0)` is how many CGI programs end.
                Some(exit) if exit.0 == 0 => {}
                _ => return Err(classify(&e, memory_hit.load(Ordering::Relaxed), timeout)),
            },
        }
        drop(store);
        parse_cgi(&stdout.contents()).map_err(HandleError::BadResponse)
    }
}

/// The RFC 3875 meta-variables for a request.
fn cgi_env(
    parts: &http::request::Parts,
    info: &RequestInfo,
    body_len: usize,
) -> Vec<(String, String)> {
    let host_header = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (server_name, server_port) = match host_header.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
        _ if !host_header.is_empty() => (host_header.to_string(), info.local.port().to_string()),
        _ => (info.local.ip().to_string(), info.local.port().to_string()),
    };
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            concat!("skiff/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("SERVER_PROTOCOL".into(), format!("{:?}", parts.version)),
        ("SERVER_NAME".into(), server_name),
        ("SERVER_PORT".into(), server_port),
        ("REQUEST_METHOD".into(), parts.method.to_string()),
        ("SCRIPT_NAME".into(), String::new()),
        (
            "PATH_INFO".into(),
            percent_decode_str(path).decode_utf8_lossy().into_owned(),
        ),
        ("QUERY_STRING".into(), query.to_string()),
        ("REMOTE_ADDR".into(), info.remote.ip().to_string()),
        ("REMOTE_HOST".into(), info.remote.ip().to_string()),
        (
            "X_FULL_URL".into(),
            format!(
                "http://{host_header}{}",
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            ),
        ),
        ("X_MATCHED_ROUTE".into(), "/...".into()),
    ];
    if body_len > 0 || parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        env.push(("CONTENT_LENGTH".into(), body_len.to_string()));
    }
    if let Some(ct) = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        env.push(("CONTENT_TYPE".into(), ct.to_string()));
    }
    for name in parts.headers.keys() {
        // RFC 3875 4.1.18: the body's own fields are CONTENT_*, and credentials are not
        // handed to scripts.
        if matches!(
            name.as_str(),
            "content-type" | "content-length" | "authorization" | "proxy-authorization"
        ) {
            continue;
        }
        let value: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let var = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        env.push((var, value.join(", ")));
    }
    env
}

/// The query's words, which follow the container's own argv. RFC 3875 4.4 splits an
/// "indexed" query (no `=`) on `+`; like WAGI we also pass `a=b&c=d` as `a=b`, `c=d`.
fn cgi_args(query: &str) -> Vec<String> {
    let mut args = Vec::new();
    if query.is_empty() {
        return args;
    }
    let sep = if query.contains('=') { '&' } else { '+' };
    args.extend(query.split(sep).filter(|w| !w.is_empty()).map(|w| {
        percent_decode_str(&w.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    }));
    args
}

/// Turns CGI output (header fields, a blank line, the body) into a response, or says
/// exactly what is wrong with it. What a WAGI guest prints is untrusted input.
pub fn parse_cgi(output: &Bytes) -> Result<hyper::Response<ResponseBody>, String> {
    let (head_end, body_start) = find_blank_line(output).ok_or_else(|| {
        format!(
            "no blank line after the CGI header block in {} bytes of output",
            output.len()
        )
    })?;
    let head = std::str::from_utf8(&output[..head_end])
        .map_err(|_| "CGI header block is not UTF-8".to_string())?;
    let mut builder = hyper::Response::builder();
    let mut status = None;
    let mut has_location = false;
    let mut has_content_type = false;
    for (n, line) in head.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("CGI header line {} is not `Name: value`: {line:?}", n + 1))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            let code = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            status =
                Some(code.ok_or_else(|| format!("CGI Status {value:?} is not a status code"))?);
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid CGI header name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("invalid value for CGI header {name}"))?;
        has_location |= name == http::header::LOCATION;
        has_content_type |= name == http::header::CONTENT_TYPE;
        builder = builder.header(name, value);
    }
    if status.is_none() && !has_location && !has_content_type {
        return Err("CGI output has none of Status, Location or Content-Type".into());
    }
    let status = status.unwrap_or(if has_location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    let body = Full::new(output.slice(body_start..))
        .map_err(|never| match never {})
        .boxed_unsync();
    builder
        .status(status)
        .body(body)
        .map_err(|e| format!("invalid CGI response: {e}"))
}

/// Where the header block ends and the body starts: the first `\n\n` or `\r\n\r\n`.
fn find_blank_line(out: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(pos) = out[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        let rest = &out[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some((nl, nl + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((nl, nl + 3));
        }
        i = nl + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: hyper::Response<ResponseBody>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn parses_cgi_output() {
        let r = parse_cgi(&Bytes::from_static(
            b"Content-Type: text/plain\nX-A: 1\n\nhello\n",
        ))
        .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(body_of(r).await, "hello\n");

        let r = parse_cgi(&Bytes::from_static(
            b"Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\n<h1>no</h1>",
        ))
        .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(body_of(r).await, "<h1>no</h1>");

        let r = parse_cgi(&Bytes::from_static(b"Location: /there\n\n")).unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()["location"], "/there");
    }

    #[test]
    fn refuses_malformed_output() {
        for (bad, why) in [
            (&b"hello world"[..], "no blank line"),
            (b"not a header\n\nbody", "not `Name: value`"),
            (b"Status: lots\n\n", "not a status code"),
            (b"X-Only: 1\n\n", "none of Status"),
            (b"Bad Name: 1\n\n", "invalid CGI header name"),
        ] {
            let err = parse_cgi(&Bytes::copy_from_slice(bad)).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn query_becomes_argv() {
        assert!(cgi_args("").is_empty());
        assert_eq!(cgi_args("a=1&b=two%20words"), ["a=1", "b=two words"]);
        assert_eq!(cgi_args("hello+world%21"), ["hello", "world!"]);
    }

    #[test]
    fn headers_become_meta_variables() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/some%20path/x?q=1")
            .header("host", "app.localhost:7780")
            .header("x-custom-thing", "a")
            .header("x-custom-thing", "b")
            .header("authorization", "Bearer secret")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let info = RequestInfo {
            remote: "127.0.0.2:5555".parse().unwrap(),
            local: "127.0.0.1:7780".parse().unwrap(),
        };
        let env: std::collections::HashMap<String, String> =
            cgi_env(&parts, &info, 3).into_iter().collect();
        assert_eq!(env["REQUEST_METHOD"], "POST");
        assert_eq!(env["PATH_INFO"], "/some path/x");
        assert_eq!(env["QUERY_STRING"], "q=1");
        assert_eq!(env["SERVER_NAME"], "app.localhost");
        assert_eq!(env["SERVER_PORT"], "7780");
        assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.2");
        assert_eq!(env["CONTENT_LENGTH"], "3");
        assert_eq!(env["CONTENT_TYPE"], "text/plain");
        assert_eq!(env["HTTP_X_CUSTOM_THING"], "a, b");
        assert_eq!(env["HTTP_HOST"], "app.localhost:7780");
        assert!(!env.contains_key("HTTP_AUTHORIZATION"));
        assert!(!env.contains_key("HTTP_CONTENT_TYPE"));
    }
}
