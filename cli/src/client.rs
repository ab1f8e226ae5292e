//! The API client behind every command but `up`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use skiff_spec::DeployParams;
use skiff_spec::api::{AppStatus, ErrorBody, LogLine, LogStream};

use crate::ClientOpts;

pub(crate) struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    pub(crate) fn new(opts: &ClientOpts) -> anyhow::Result<Self> {
        let token = match &opts.token {
            Some(t) => t.clone(),
            None => {
                let path = crate::default_data_dir().join("token");
                std::fs::read_to_string(&path)
                    .with_context(|| format!("no SKIFF_TOKEN and cannot read {}", path.display()))?
                    .trim()
                    .to_string()
            }
        };
        Ok(Self {
            http: reqwest::Client::new(),
            api: opts.api.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the skiff API at {}", self.api))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => bail!("{}", body.error.message),
            Err(_) => bail!("API answered {status}: {}", text.trim()),
        }
    }

    pub(crate) async fn deploy(
        &self,
        file: &Path,
        name: &str,
        params: &DeployParams,
    ) -> anyhow::Result<()> {
        let wasm = tokio::fs::read(file)
            .await
            .with_context(|| format!("failed to read {}", file.display()))?;
        let resp = self
            .send(
                self.http
                    .put(self.url(&format!("/v1/apps/{name}")))
                    .query(&params.to_pairs())
                    .body(wasm),
            )
            .await?;
        let status: AppStatus = resp.json().await.context("invalid API response")?;
        println!(
            "{} {} ({}, {}/{} ready) at {}",
            status.name, status.image, status.kind, status.ready, status.replicas, status.url
        );
        Ok(())
    }

    pub(crate) async fn apps(&self) -> anyhow::Result<()> {
        let apps: Vec<AppStatus> = self
            .send(self.http.get(self.url("/v1/apps")))
            .await?
            .json()
            .await?;
        let now = now_ms();
        let rows: Vec<[String; 6]> = apps
            .iter()
            .map(|a| {
                [
                    a.name.clone(),
                    a.kind.to_string(),
                    a.image.short(),
                    a.replicas.to_string(),
                    a.ready.to_string(),
                    age(now.saturating_sub(a.created_ms)),
                ]
            })
            .collect();
        print_table(
            &["NAME", "KIND", "IMAGE", "REPLICAS", "READY", "AGE"],
            &rows,
        );
        Ok(())
    }

    pub(crate) async fn inspect(&self, name: &str) -> anyhow::Result<()> {
        let status: serde_json::Value = self
            .send(self.http.get(self.url(&format!("/v1/apps/{name}"))))
            .await?
            .json()
            .await?;
        println!("{}", serde_json::to_string_pretty(&status)?);
        Ok(())
    }

    pub(crate) async fn logs(&self, name: &str, tail: &str, follow: bool) -> anyhow::Result<()> {
        let mut query = vec![("tail", tail.to_string())];
        if follow {
            query.push(("follow", "true".into()));
        }
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/apps/{name}/logs")))
                    .query(&query),
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.context("log stream broke")?);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let entry: LogLine =
                    serde_json::from_slice(&line).context("invalid log line from the API")?;
                let ts = humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(entry.ts_ms),
                );
                let stream = match entry.stream {
                    LogStream::Stdout => "stdout",
                    LogStream::Stderr => "stderr",
                };
                println!("{ts} {} {stream}: {}", entry.container, entry.line);
            }
        }
        Ok(())
    }

    pub(crate) async fn rm(&self, name: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(self.url(&format!("/v1/apps/{name}"))))
            .await?;
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Docker-style ages: 42s, 5m, 3h, 2d.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_docker() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }
}
