//! A WAGI app: a WASI command run once per request, CGI style (RFC 3875). Request
//! headers arrive as `HTTP_*` variables, the query as arguments, the body on stdin; the
//! response is CGI headers, a blank line, then the body, on stdout.

use std::io::{Read as _, Write as _};

fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match path.as_str() {
        "/redirect" => {
            write!(out, "Status: 302 Found\nLocation: /elsewhere\n\n").unwrap();
        }
        "/created" => {
            write!(out, "Status: 201 Created\nContent-Type: text/plain\nX-Wagi: yes\n\ncreated\n")
                .unwrap();
        }
        // Not CGI: no header block at all.
        "/malformed" => {
            write!(out, "this is not a header line").unwrap();
        }
        "/log" => {
            eprintln!("wagi says hi on stderr");
            write!(out, "Content-Type: text/plain\n\nlogged\n").unwrap();
        }
        _ => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).unwrap();
            let mut vars: Vec<String> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("HTTP_")
                        || k.starts_with("SERVER_")
                        || matches!(
                            k.as_str(),
                            "REQUEST_METHOD"
                                | "PATH_INFO"
                                | "QUERY_STRING"
                                | "SCRIPT_NAME"
                                | "CONTENT_LENGTH"
                                | "CONTENT_TYPE"
                                | "GATEWAY_INTERFACE"
                                | "REMOTE_ADDR"
                                | "GREETING"
                        )
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vars.sort();
            let args: Vec<String> = std::env::args().skip(1).collect();
            write!(
                out,
                "Content-Type: text/plain\n\nwagi hello\n{}\nargs={}\nbody={}\n",
                vars.join("\n"),
                args.join(","),
                String::from_utf8_lossy(&body)
            )
            .unwrap();
        }
    }
}
