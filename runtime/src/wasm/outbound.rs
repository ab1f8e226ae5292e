//! Outgoing HTTP from guests: allowed only to the hosts an app names.

use std::sync::Arc;

use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// Which hosts a guest may send HTTP requests to. Everything else is refused with
/// `HTTP-request-denied` before any connection is made.
pub(crate) struct OutboundPolicy {
    pub(crate) allowed: Arc<[String]>,
}

impl OutboundPolicy {
    /// Parsed as the connection will read it: `allowed.com:1@127.0.0.1` is the host
    /// 127.0.0.1 with userinfo, so an authority with userinfo is refused outright rather
    /// than matched by text.
    fn allows(&self, authority: &str) -> bool {
        let Ok(parsed) = authority.parse::<http::uri::Authority>() else {
            return false;
        };
        if parsed.as_str().contains('@') {
            return false;
        }
        let host = parsed.host().to_ascii_lowercase();
        let with_port = match parsed.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        self.allowed
            .iter()
            .any(|a| a == "*" || *a == with_port || *a == host)
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        if !self.allows(&authority) {
            tracing::debug!(%authority, "outgoing request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(|b| b.boxed_unsync()),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_policy_matches_host_or_authority() {
        let p = OutboundPolicy {
            allowed: vec!["api.example.com".to_string(), "db:5432".to_string()].into(),
        };
        assert!(p.allows("api.example.com"));
        assert!(p.allows("API.example.com:8080"));
        assert!(p.allows("db:5432"));
        assert!(!p.allows("db:80"));
        assert!(!p.allows("evil.example.com"));
        for smuggled in [
            "api.example.com:28999@127.0.0.1",
            "api.example.com@127.0.0.1:80",
            "db:5432@10.0.0.1",
            "api.example.com:80:81",
            "",
        ] {
            assert!(!p.allows(smuggled), "{smuggled}");
        }
        let none = OutboundPolicy {
            allowed: Vec::new().into(),
        };
        assert!(!none.allows("127.0.0.1:80"));
        let all = OutboundPolicy {
            allowed: vec!["*".to_string()].into(),
        };
        assert!(all.allows("anything:1"));
        assert!(!all.allows("user:pw@anything:1"));
    }
}
