//! What each app kind sees and answers.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{Node, hello_wasm, wagi_wasm};

#[tokio::test]
async fn http_component_gets_env_headers_and_streams_bodies() {
    let node = Node::start().await;
    node.deploy_ok(
        "hello",
        hello_wasm(),
        "env=GREETING=hi&env=OTHER=two%20words",
    )
    .await;
    let (s, env) = node.get("hello", "/env").await;
    assert_eq!(s, 200);
    assert!(
        env.contains("GREETING=hi\n") && env.contains("OTHER=two words\n"),
        "{env}"
    );

    let r = node
        .app(reqwest::Method::GET, "hello", "/headers?x=1")
        .header("x-test", "yes")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("Method::Get /headers?x=1") && text.contains("x-test: yes"),
        "{text}"
    );

    // 4 MiB through the guest and back, streamed both ways.
    let body: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    let r = node
        .app(reqwest::Method::POST, "hello", "/echo")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());

    // A body sent in chunks with pauses arrives in order.
    let (s, text) = node.get("hello", "/stream?chunks=4").await;
    assert_eq!(
        (s, text.as_str()),
        (200, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n")
    );
}

#[tokio::test]
async fn http_component_trailers_reach_the_client() {
    let node = Node::start().await;
    node.deploy_ok("hello", hello_wasm(), "").await;
    let mut sock = tokio::net::TcpStream::connect(node.ingress).await.unwrap();
    let req = "POST /echo HTTP/1.1\r\nHost: hello.localhost\r\nTE: trailers\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sock.read_to_end(&mut raw),
    )
    .await
    .unwrap()
    .unwrap();
    let raw = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(raw.starts_with("http/1.1 200"), "{raw}");
    assert!(raw.contains("transfer-encoding: chunked"), "{raw}");
    assert!(
        raw.contains("\r\n0\r\nx-echo-bytes: 5\r\n"),
        "trailer after the last chunk: {raw}"
    );
}

#[tokio::test]
async fn outgoing_http_is_denied_unless_the_host_is_allowed() {
    let node = Node::start().await;
    let api_authority = node.api.trim_start_matches("http://").to_string();
    node.deploy_ok("closed", hello_wasm(), "").await;
    let (s, text) = node
        .get("closed", &format!("/fetch?host={api_authority}"))
        .await;
    assert_eq!(s, 502);
    assert!(text.contains("HttpRequestDenied"), "{text}");

    node.deploy_ok("open", hello_wasm(), &format!("allow_host={api_authority}"))
        .await;
    let (s, text) = node
        .get("open", &format!("/fetch?host={api_authority}"))
        .await;
    // The node's own API answers 404 at `/`: the request really went out.
    assert_eq!((s, text.as_str()), (200, "upstream 404\n"));
    let (s, text) = node.get("open", "/fetch?host=127.0.0.1:1").await;
    assert!(
        s == 502 && text.contains("HttpRequestDenied"),
        "other hosts stay closed: {s} {text}"
    );
}

#[tokio::test]
async fn wagi_module_runs_as_cgi() {
    let node = Node::start().await;
    let status = node.deploy_ok("cgi", wagi_wasm(), "env=GREETING=hey").await;
    assert_eq!(status["kind"], "wagi");
    let r = node
        .app(
            reqwest::Method::POST,
            "cgi",
            "/some%20path?a=1&b=two%20words",
        )
        .header("x-custom", "yes")
        .header("content-type", "text/plain")
        .body("posted body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    let text = r.text().await.unwrap();
    for want in [
        "REQUEST_METHOD=POST",
        "PATH_INFO=/some path",
        "QUERY_STRING=a=1&b=two%20words",
        "SCRIPT_NAME=",
        "SERVER_NAME=cgi.localhost",
        &format!("SERVER_PORT={}", node.ingress.port()),
        "SERVER_PROTOCOL=HTTP/1.1",
        "CONTENT_LENGTH=11",
        "CONTENT_TYPE=text/plain",
        "HTTP_X_CUSTOM=yes",
        "GREETING=hey",
        "args=a=1,b=two words",
        "body=posted body",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    let r = node
        .app(reqwest::Method::GET, "cgi", "/created")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-wagi"], "yes");
    assert_eq!(r.text().await.unwrap(), "created\n");

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("http://{}/redirect", node.ingress))
        .header("host", "cgi.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/elsewhere");

    let (s, text) = node.get("cgi", "/malformed").await;
    assert_eq!(s, 502);
    assert!(
        text.contains("no blank line after the CGI header block"),
        "{text}"
    );
}
