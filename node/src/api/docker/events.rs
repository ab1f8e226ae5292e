//! `GET /events`: `docker events`, for containers (`create`, `start`, `die`, `destroy`).
//! Past events (`since`) come from the node's last [`crate::standalone::events::KEPT`]; the
//! stream then follows new ones until `until`, the client leaves, or the node stops.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::{Answer, DockerError, filters, param};
use crate::Shared;
use crate::api::http::query_pairs;
use crate::standalone::events::ContainerEvent;

/// `1700000000` or `1700000000.5`: Unix seconds, as the CLI sends `--since`/`--until`.
fn time_ns(pairs: &[(String, String)], key: &str) -> Answer<Option<u128>> {
    let Some(v) = param(pairs, key).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: u128 = secs.parse().map_err(|_| {
        DockerError::new(
            StatusCode::BAD_REQUEST,
            format!("{key}: {v:?} is not a Unix time"),
        )
    })?;
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u128 = frac.parse().map_err(|_| {
        DockerError::new(
            StatusCode::BAD_REQUEST,
            format!("{key}: {v:?} is not a Unix time"),
        )
    })?;
    Ok(Some(secs * 1_000_000_000 + nanos))
}

/// Whether `e` passes Docker's event filters.
fn wanted(e: &ContainerEvent, f: &BTreeMap<String, Vec<String>>) -> bool {
    f.iter().all(|(key, values)| {
        values.iter().any(|v| match key.as_str() {
            "type" => v == "container",
            "event" => v == e.action,
            "container" => v == &e.name || e.id.starts_with(v.as_str()),
            "image" => v == &e.image,
            "label" => match v.split_once('=') {
                Some((k, val)) => e.labels.get(k).is_some_and(|x| x == val),
                None => e.labels.contains_key(v),
            },
            _ => false,
        })
    })
}

fn line(e: &ContainerEvent) -> String {
    let mut attributes: BTreeMap<String, String> = e.labels.clone();
    attributes.insert("image".into(), e.image.clone());
    attributes.insert("name".into(), e.name.clone());
    if let Some(code) = e.exit_code {
        attributes.insert("exitCode".into(), code.to_string());
    }
    let v: Value = json!({
        "status": e.action,
        "id": e.id,
        "from": e.image,
        "Type": "container",
        "Action": e.action,
        "Actor": {"ID": e.id, "Attributes": attributes},
        "scope": "local",
        "time": (e.at_ns / 1_000_000_000) as u64,
        "timeNano": e.at_ns as u64,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

pub(super) async fn events(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let f = filters(&pairs)?;
    for key in f.keys() {
        if !["type", "event", "container", "image", "label"].contains(&key.as_str()) {
            return Err(DockerError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid filter '{key}'"),
            ));
        }
    }
    let since = time_ns(&pairs, "since")?;
    let until = time_ns(&pairs, "until")?;
    let (kept, rx) = shared.standalone.events.subscribe();
    let f = Arc::new(f);
    let past: Vec<String> = match since {
        Some(since) => kept
            .iter()
            .filter(|e| e.at_ns >= since && until.is_none_or(|u| e.at_ns <= u))
            .filter(|e| wanted(e, &f))
            .map(|e| line(e))
            .collect(),
        None => Vec::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let past = futures_util::stream::iter(past);
    let body = if until.is_some_and(|u| u <= now) {
        Body::from_stream(past.map(Ok::<_, std::convert::Infallible>))
    } else {
        let shutdown = shared.shutdown.clone();
        let deadline = until.map(|u| {
            tokio::time::Instant::now()
                + std::time::Duration::from_nanos(u64::try_from(u - now).unwrap_or(u64::MAX))
        });
        let live = futures_util::stream::unfold(rx, move |mut rx| {
            let f = f.clone();
            async move {
                loop {
                    let next = match deadline {
                        Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok()?,
                        None => rx.recv().await,
                    };
                    // The kept events and the subscription were taken together: every
                    // event here is newer than the past ones sent.
                    match next {
                        Ok(e) if wanted(&e, &f) => return Some((line(&e), rx)),
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return None,
                    }
                }
            }
        });
        Body::from_stream(
            past.chain(live)
                .take_until(shutdown.cancelled_owned())
                .map(Ok::<_, std::convert::Infallible>),
        )
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &'static str) -> ContainerEvent {
        ContainerEvent {
            at_ns: 1_700_000_000_500_000_000,
            action,
            id: "abcdef".into(),
            name: "web".into(),
            image: "busybox".into(),
            labels: [("tier".to_string(), "front".to_string())].into(),
            exit_code: (action == "die").then_some(3),
        }
    }

    #[test]
    fn events_filter_and_read_as_docker_writes_them() {
        let f =
            |json: &str| -> BTreeMap<String, Vec<String>> { serde_json::from_str(json).unwrap() };
        assert!(wanted(
            &event("start"),
            &f(r#"{"container":["web"],"event":["start","die"]}"#)
        ));
        assert!(wanted(
            &event("start"),
            &f(r#"{"container":["abc"],"label":["tier=front"]}"#)
        ));
        assert!(!wanted(&event("create"), &f(r#"{"event":["start"]}"#)));
        assert!(!wanted(&event("start"), &f(r#"{"type":["image"]}"#)));
        let v: Value = serde_json::from_str(&line(&event("die"))).unwrap();
        assert_eq!(v["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(v["time"], 1_700_000_000u64);
        assert_eq!(v["Action"], "die");
        let pairs = vec![("since".to_string(), "1700000000.25".to_string())];
        assert_eq!(
            time_ns(&pairs, "since").unwrap(),
            Some(1_700_000_000_250_000_000)
        );
        let bad = vec![("until".to_string(), "soon".to_string())];
        assert!(time_ns(&bad, "until").is_err());
    }
}
