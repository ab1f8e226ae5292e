//! What every handler of the API reads and writes the same way: query pairs, continue
//! tokens, request bodies dropped after a refusal, and logs as NDJSON streams.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use skiff_spec::api::LogLine;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use crate::Shared;

/// A request's query as (key, value) pairs, decoded.
pub(crate) fn query_pairs(query: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A continue token: lists go in name order, so the next page starts after the last
/// name given (hex, so it is opaque and URL-safe).
pub(crate) fn continue_token(last: &str) -> String {
    hex::encode(last.as_bytes())
}

/// The name a continue token says the next page starts after.
pub(crate) fn continue_after(token: &str) -> Result<String, ApiError> {
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request("invalid", "continue: not a token this server gave"))
}

/// Reads and drops up to `limit` bytes of a body, for at most a second.
pub(crate) async fn discard(stream: &mut axum::body::BodyDataStream, limit: u64) {
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// NDJSON lines of `book`: `tail=N|all` first, then, with `follow`, new lines as they
/// come until the node shuts down, the log is dropped, or (a container's log) `exit`
/// says the container stopped: a container that is not running has nothing to follow.
pub(crate) fn log_response(
    shared: &Shared,
    book: &skiff_runtime::LogBook,
    query: Option<String>,
    exit: Option<watch::Receiver<Option<i32>>>,
) -> Result<Response, ApiError> {
    let mut tail = 100usize;
    let mut follow = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "tail" => {
                tail = if v == "all" {
                    usize::MAX
                } else {
                    v.parse().map_err(|_| {
                        ApiError::bad_request(
                            "invalid_parameter",
                            format!("invalid parameter tail: {v:?} is not a number or \"all\""),
                        )
                    })?
                }
            }
            "follow" => follow = matches!(&*v, "" | "1" | "true" | "yes"),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("invalid parameter {other}: unknown (known: tail, follow)"),
                ));
            }
        }
    }
    if exit.as_ref().is_some_and(|e| e.borrow().is_some()) {
        follow = false;
    }
    let (past, rx) = book.tail_and_subscribe(tail);
    let encode = |l: &LogLine| {
        let mut s = serde_json::to_string(l).expect("log lines serialize");
        s.push('\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(s))
    };
    // Encoded line by line as the client reads: a log of escapes (NUL bytes grow
    // sixfold in JSON) is never built whole in memory.
    let past = futures_util::stream::iter(past).map(move |l| encode(&l));
    let body = if follow {
        let shutdown: CancellationToken = shared.shutdown.clone();
        let live = follow_until(rx, exit).map(move |l| encode(&l));
        Body::from_stream(past.chain(live).take_until(shutdown.cancelled_owned()))
    } else {
        Body::from_stream(past)
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// A broadcast receiver as a stream that skips over lines it lagged behind on and ends
/// when the app's log is dropped (the app was removed) or, given a container's `exit`,
/// once the container stopped and the lines it wrote before are all out (its output is
/// in the log before its exit is told).
pub(crate) fn follow_until(
    rx: broadcast::Receiver<LogLine>,
    exit: Option<watch::Receiver<Option<i32>>>,
) -> impl futures_util::Stream<Item = LogLine> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    futures_util::stream::unfold(
        (rx, exit, false),
        |(mut rx, mut exit, mut stopped)| async move {
            loop {
                if stopped {
                    match rx.try_recv() {
                        Ok(line) => return Some((line, (rx, exit, stopped))),
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => return None,
                    }
                }
                let exited = async {
                    match exit.as_mut() {
                        Some(e) => drop(e.wait_for(Option::is_some).await),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    line = rx.recv() => match line {
                        Ok(line) => return Some((line, (rx, exit, stopped))),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    },
                    () = exited => stopped = true,
                }
            }
        },
    )
}
