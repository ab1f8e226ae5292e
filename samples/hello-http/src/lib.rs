//! The hello app: a `wasi:http/incoming-handler` component, the kind `wasmtime serve` and
//! Spin run. Besides greeting it has routes that misbehave on purpose, so skiff's tests can
//! prove each bound (memory, CPU time, host waits, traps) against a real guest.

use std::io::Write as _;

use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_query = request.path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_query.clone(), String::new()),
        };
        match path.as_str() {
            "/" => {
                // A replica made slow on purpose (balancer tests and benchmarks).
                if let Some(ms) = std::env::var("DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
                    wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                }
                let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
                respond(out, 200, "text/plain", format!("{greeting} from skiff\n").as_bytes());
            }
            "/echo" => echo(request, out),
            "/headers" => {
                let mut text = format!("{:?} {path_query}\n", request.method());
                for (name, value) in request.headers().entries() {
                    text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(&value)));
                }
                respond(out, 200, "text/plain", text.as_bytes());
            }
            "/env" => {
                let mut vars: Vec<String> =
                    std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                vars.sort();
                respond(out, 200, "text/plain", (vars.join("\n") + "\n").as_bytes());
            }
            "/log" => {
                println!("hello on stdout: {query}");
                eprintln!("hello on stderr: {query}");
                respond(out, 200, "text/plain", b"logged\n");
            }
            "/stream" => stream(out, param(&query, "chunks").unwrap_or(3)),
            // Waits inside a host call: only the host's own timeout can end it.
            "/sleep" => {
                let ms = param(&query, "ms").unwrap_or(1000);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, "text/plain", b"slept\n");
            }
            // Spins in guest code: only epoch interruption can end it.
            "/spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            // Grows memory without end: the store's memory limit must stop it.
            "/grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/recurse" => {
                let depth = recurse(std::hint::black_box(1));
                respond(out, 200, "text/plain", format!("{depth}\n").as_bytes());
            }
            "/trap" => panic!("trap requested"),
            "/fetch" => fetch(out, &query),
            _ => respond(out, 404, "text/plain", b"not found\n"),
        }
    }
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    recurse(n + 1) + pad[3]
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
        .expect("valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = outgoing.write().expect("stream taken once");
        stream.write_all(body).expect("write body");
        stream.flush().expect("flush body");
    }
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

/// Streams the request body back as it arrives and reports its length in a trailer.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let content_type = request
        .headers()
        .get("content-type")
        .into_iter()
        .next()
        .unwrap_or_else(|| b"application/octet-stream".to_vec());
    // HTTP/1.1 servers send only the trailers the head announces.
    let headers = Fields::from_list(&[
        ("content-type".into(), content_type),
        ("trailer".into(), b"x-echo-bytes".to_vec()),
    ])
    .unwrap();
    let response = OutgoingResponse::new(headers);
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let incoming = request.consume().unwrap();
    let mut total: u64 = 0;
    {
        let input = incoming.stream().unwrap();
        let mut output = outgoing.write().unwrap();
        // `blocking_read` ends with `Err(Closed)` at the end of the body.
        while let Ok(chunk) = input.blocking_read(64 * 1024) {
            total += chunk.len() as u64;
            output.write_all(&chunk).unwrap();
        }
        output.flush().unwrap();
    }
    let trailers =
        Fields::from_list(&[("x-echo-bytes".into(), total.to_string().into_bytes())]).unwrap();
    OutgoingBody::finish(outgoing, Some(trailers)).unwrap();
}

/// Sends the head, then the body in separate chunks with a pause between them.
fn stream(out: ResponseOutparam, chunks: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    {
        let mut output = outgoing.write().unwrap();
        for i in 0..chunks {
            output.write_all(format!("chunk {i}\n").as_bytes()).unwrap();
            output.flush().unwrap();
            wasip2::clocks::monotonic_clock::subscribe_duration(20_000_000).block();
        }
    }
    OutgoingBody::finish(outgoing, None).unwrap();
}

/// Makes an outgoing request to `http://{host}/`; the host decides whether it may.
fn fetch(out: ResponseOutparam, query: &str) {
    let host = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "host")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).unwrap();
    request.set_scheme(Some(&Scheme::Http)).unwrap();
    request.set_authority(Some(&host)).unwrap();
    request.set_path_with_query(Some("/")).unwrap();
    let result: Result<u16, ErrorCode> = (|| {
        let future = wasip2::http::outgoing_handler::handle(request, None)?;
        future.subscribe().block();
        let response = future.get().expect("ready").expect("first get")?;
        Ok(response.status())
    })();
    match result {
        Ok(status) => respond(out, 200, "text/plain", format!("upstream {status}\n").as_bytes()),
        Err(e) => respond(out, 502, "text/plain", format!("outgoing denied: {e:?}\n").as_bytes()),
    }
}
