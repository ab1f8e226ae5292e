//! The API client behind every command but `up`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use skiff_image::{ImageName, ImageStore};
use skiff_spec::api::{
    AppStatus, AttachEvent, ContainerInfo, ContainerStats, ErrorBody, ImageStatus, LoadedImage,
    LogLine, LogStream, human_duration,
};
use skiff_spec::{DeployParams, RunParams};

use crate::ClientOpts;

mod images;

#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// The base of request URLs (`http://localhost` over the unix socket).
    base: String,
    /// What the user knows the node as: the socket's path or the URL.
    api: String,
    /// Sent as a bearer token (none over the unix socket: opening it is the proof).
    token: Option<String>,
    /// The data dir the defaults came from.
    data: std::path::PathBuf,
}

/// A rustls client trusting only the cluster CA in `pem`.
fn tls_trusting(pem: &[u8], from: &Path) -> anyhow::Result<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| anyhow::anyhow!("{} is not PEM: {e}", from.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{} holds a certificate rustls refuses", from.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", from.display());
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

impl Client {
    /// How to reach the node: `--api unix://PATH`, `https://...` (checked against
    /// `--ca`, else the data dir's cluster CA), `http://...` (plain, only when asked);
    /// by default the local node's unix socket, else https://127.0.0.1:7700.
    pub(crate) fn new(opts: &ClientOpts) -> anyhow::Result<Self> {
        let data = crate::default_data_dir();
        let socket = data.join("api.sock");
        let api = match &opts.api {
            Some(api) => api.trim_end_matches('/').to_string(),
            None if socket.exists() => format!("unix://{}", socket.display()),
            None => "https://127.0.0.1:7700".to_string(),
        };
        let builder = reqwest::Client::builder();
        let (http, base) = if let Some(path) = api.strip_prefix("unix://") {
            (
                builder.unix_socket(Path::new(path)).build()?,
                "http://localhost".to_string(),
            )
        } else if api.starts_with("https://") {
            let ca = match &opts.ca {
                Some(ca) => ca.clone(),
                None => data.join("tls/ca.crt"),
            };
            let pem = std::fs::read(&ca).with_context(|| {
                format!(
                    "cannot read {} to check {api} against (give the cluster CA with --ca or SKIFF_CA: it is tls/ca.crt in any node's data dir)",
                    ca.display()
                )
            })?;
            (
                builder
                    .use_preconfigured_tls(tls_trusting(&pem, &ca)?)
                    .build()?,
                api.clone(),
            )
        } else if api.starts_with("http://") {
            (builder.build()?, api.clone())
        } else {
            bail!("--api {api:?}: give https://HOST:PORT, http://HOST:PORT or unix://PATH");
        };
        let token = if api.starts_with("unix://") {
            opts.token.clone()
        } else {
            Some(match &opts.token {
                Some(t) => t.clone(),
                None => {
                    let path = data.join("token");
                    std::fs::read_to_string(&path)
                        .with_context(|| {
                            format!("no SKIFF_TOKEN and cannot read {}", path.display())
                        })?
                        .trim()
                        .to_string()
                }
            })
        };
        Ok(Self {
            http,
            base,
            api,
            token,
            data,
        })
    }

    /// `req` with the bearer token, if this client sends one.
    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A kubeconfig for this node, as k3s writes one: the API port over TLS (kubectl
    /// sends a token over TLS only) with the cluster CA, the bearer token, one context.
    /// The same kubeconfig works against every node of the cluster. Values are JSON
    /// strings (valid YAML).
    pub(crate) async fn kubeconfig(&self) -> anyhow::Result<String> {
        use base64::Engine as _;
        let ca = self
            .send(self.http.get(self.url("/v1/cluster/ca")))
            .await?
            .text()
            .await?;
        let server = if self.api.starts_with("unix://") {
            let v: serde_json::Value = self.get_json("/v1/cluster/join-token").await?;
            format!("https://{}", v["api"].as_str().unwrap_or("127.0.0.1:7700"))
        } else {
            match self.api.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => self.api.clone(),
            }
        };
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = self.data.join("token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "cannot read {}: a node that joined a cluster holds only the admin token's hash; make the kubeconfig on the first node, or give the token with --token",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let q = |s: &str| serde_json::Value::from(s).to_string();
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff\n    namespace: default\ncurrent-context: skiff\nusers:\n- name: skiff\n  user:\n    token: {}\npreferences: {{}}\n",
            q(&server),
            q(&base64::engine::general_purpose::STANDARD.encode(ca)),
            q(&token)
        ))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = self
            .authed(req)
            .send()
            .await
            .with_context(|| format!("cannot reach the skiff API at {}", self.api))?;
        self.check(resp).await
    }

    /// The response if it succeeded, else the API's error message as the error.
    async fn check(&self, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
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

    /// GET `path` as JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<T> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        resp.json()
            .await
            .with_context(|| format!("the API's answer to GET {path} is not what skiff expects"))
    }

    /// GET `path` with `Accept: accept` (a Kubernetes `Table`); the answer as JSON.
    pub(crate) async fn get_json_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        accept: &str,
    ) -> anyhow::Result<T> {
        let req = self
            .http
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, accept);
        let resp = self.send(req).await?;
        resp.json()
            .await
            .with_context(|| format!("the API's answer to GET {path} is not what skiff expects"))
    }

    /// GET `path` with `Accept: accept`; the answer's lines as they come (a watch).
    pub(crate) async fn get_lines(
        &self,
        path: &str,
        accept: &str,
    ) -> anyhow::Result<impl futures_util::Stream<Item = anyhow::Result<Vec<u8>>> + Unpin> {
        let req = self
            .http
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, accept);
        let resp = self.send(req).await?;
        let chunks = resp.bytes_stream();
        Ok(Box::pin(futures_util::stream::unfold(
            (chunks, Vec::new()),
            |(mut chunks, mut buf)| async move {
                loop {
                    if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        return Some((Ok(line), (chunks, buf)));
                    }
                    match chunks.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            return Some((
                                Err(anyhow::Error::new(e).context("the watch broke")),
                                (chunks, Vec::new()),
                            ));
                        }
                        None => return None,
                    }
                }
            },
        )))
    }

    /// `method` `path` with a JSON body; the answer as JSON.
    pub(crate) async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.request(method, self.url(path)).json(body))
            .await?;
        resp.json()
            .await
            .with_context(|| format!("the API's answer to {path} is not what skiff expects"))
    }

    /// DELETE `path`.
    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.http.delete(self.url(path))).await?;
        Ok(())
    }

    pub(crate) async fn deploy(
        &self,
        file: Option<&Path>,
        name: &str,
        params: &DeployParams,
    ) -> anyhow::Result<()> {
        let mut req = self
            .http
            .put(self.url(&format!("/v1/apps/{name}")))
            .query(&params.to_pairs());
        if let Some(file) = file {
            let wasm = tokio::fs::read(file)
                .await
                .with_context(|| format!("failed to read {}", file.display()))?;
            req = req.body(wasm);
        }
        let resp = self.send(req).await?;
        let status: AppStatus = resp.json().await.context("invalid API response")?;
        println!(
            "{} {} ({}, {}/{} ready) at {}",
            status.name, status.image, status.kind, status.ready, status.replicas, status.url
        );
        Ok(())
    }

    /// Every app, `chunk` at a time (0: in one request), following the pages.
    async fn all_apps(&self, chunk: usize) -> anyhow::Result<Vec<AppStatus>> {
        if chunk == 0 {
            return Ok(self
                .send(self.http.get(self.url("/v1/apps")))
                .await?
                .json()
                .await?);
        }
        let mut apps = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut query = vec![("limit", chunk.to_string())];
            if let Some(token) = next.take() {
                query.push(("continue", token));
            }
            let page: skiff_spec::api::Page<AppStatus> = self
                .send(self.http.get(self.url("/v1/apps")).query(&query))
                .await?
                .json()
                .await?;
            apps.extend(page.items);
            match page.metadata.continue_token {
                Some(token) => next = Some(token),
                None => return Ok(apps),
            }
        }
    }

    pub(crate) async fn apps(&self, chunk: usize) -> anyhow::Result<()> {
        let apps = self.all_apps(chunk).await?;
        let now = now_ms();
        let rows: Vec<[String; 6]> = apps
            .iter()
            .map(|a| {
                [
                    a.name.clone(),
                    a.kind.to_string(),
                    if a.image_ref.is_empty() {
                        a.image.short()
                    } else {
                        a.image_ref.clone()
                    },
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
            .first_found(
                &[format!("/v1/containers/{name}"), format!("/v1/apps/{name}")],
                &[],
            )
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
            .first_found(
                &[
                    format!("/v1/containers/{name}/logs"),
                    format!("/v1/apps/{name}/logs"),
                ],
                &query,
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

    /// GETs the first of `paths` that exists: names a container or an app.
    async fn first_found(
        &self,
        paths: &[String],
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        for path in &paths[..paths.len() - 1] {
            let r = self
                .authed(self.http.get(self.url(path)).query(query))
                .send()
                .await
                .with_context(|| format!("cannot reach the skiff API at {}", self.api))?;
            if r.status() != reqwest::StatusCode::NOT_FOUND {
                return self.check(r).await;
            }
        }
        self.send(
            self.http
                .get(self.url(&paths[paths.len() - 1]))
                .query(query),
        )
        .await
    }

    /// Removes a container by name or id, else an app by name.
    pub(crate) async fn rm(&self, name: &str, force: bool) -> anyhow::Result<()> {
        let mut q = vec![];
        if force {
            q.push(("force", "true"));
        }
        let r = self
            .authed(
                self.http
                    .delete(self.url(&format!("/v1/containers/{name}")))
                    .query(&q),
            )
            .send()
            .await;
        if let Ok(r) = &r
            && r.status() == reqwest::StatusCode::NOT_FOUND
        {
            self.send(self.http.delete(self.url(&format!("/v1/apps/{name}"))))
                .await?;
            return Ok(());
        }
        self.check(r.with_context(|| format!("cannot reach the skiff API at {}", self.api))?)
            .await?;
        Ok(())
    }

    pub(crate) async fn run(&self, run: &RunParams) -> anyhow::Result<String> {
        let q = run.to_pairs();
        let info: ContainerInfo = self
            .send(self.http.post(self.url("/v1/containers")).query(&q))
            .await?
            .json()
            .await?;
        Ok(info.id)
    }

    /// `docker run` without `-d`: starts the container with its output attached, prints
    /// stdout and stderr lines as they come, and returns its exit code. SIGINT or SIGTERM
    /// to this process stops the container (as Docker's signal proxy does); a second one
    /// returns at once, leaving it stopping.
    pub(crate) async fn run_attached(&self, run: &RunParams) -> anyhow::Result<i32> {
        use std::io::Write as _;
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        let mut q = run.to_pairs();
        q.push(("attach".into(), "true".into()));
        let resp = self
            .send(self.http.post(self.url("/v1/containers")).query(&q))
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        let mut id: Option<String> = None;
        let mut signals = 0;
        loop {
            let signalled = tokio::select! {
                chunk = stream.next() => {
                    let Some(chunk) = chunk else {
                        bail!("the node closed the connection before the container exited (see skiff ps -a)");
                    };
                    buf.extend_from_slice(&chunk.context("the container's output stream broke")?);
                    false
                }
                _ = interrupt.recv() => true,
                _ = terminate.recv() => true,
            };
            if signalled {
                signals += 1;
                if signals > 1 {
                    let which = id.as_deref().map_or("", |i| &i[..12]);
                    eprintln!("skiff: container {which} is stopping; not waiting for it");
                    return Ok(130);
                }
                // Before it started (its image still being prepared) the stop waits
                // for its id.
                if let Some(id) = id.clone() {
                    self.stop_in_background(id);
                }
                continue;
            }
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let event: AttachEvent =
                    serde_json::from_slice(&line).context("invalid event from the API")?;
                match event {
                    AttachEvent::Started(info) => {
                        if signals > 0 {
                            self.stop_in_background(info.id.clone());
                        }
                        id = Some(info.id);
                    }
                    AttachEvent::Log(l) => match l.stream {
                        LogStream::Stdout => {
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "{}", l.line)?;
                            out.flush()?;
                        }
                        LogStream::Stderr => writeln!(std::io::stderr(), "{}", l.line)?,
                    },
                    AttachEvent::Exited { code } => return Ok(code),
                }
            }
        }
    }

    /// `docker exec`: runs `cmd` in the container, copying its stdout and stderr through
    /// as they come; returns its exit code.
    pub(crate) async fn exec(
        &self,
        name: &str,
        cmd: &[String],
        env: &[(String, String)],
        workdir: Option<&str>,
    ) -> anyhow::Result<i32> {
        use std::io::Write as _;
        let body = serde_json::json!({
            "cmd": cmd,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "workdir": workdir,
        });
        let resp = self
            .send(
                self.http
                    .post(self.url(&format!("/v1/containers/{name}/exec")))
                    .json(&body),
            )
            .await?;
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.context("the exec output stream broke")?);
            while buf.len() >= 8 {
                let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                if buf.len() < 8 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..8 + len).collect();
                let data = &frame[8..];
                match frame[0] {
                    1 => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(data)?;
                        out.flush()?;
                    }
                    2 => std::io::stderr().write_all(data)?,
                    _ => {
                        let end: serde_json::Value =
                            serde_json::from_slice(data).context("invalid exec result")?;
                        if let Some(e) = end["error"].as_str() {
                            eprintln!("error: {e}");
                        }
                        return end["exit_code"]
                            .as_i64()
                            .map(|c| c as i32)
                            .context("the exec result has no exit_code");
                    }
                }
            }
        }
        bail!("the node closed the exec stream before the command exited")
    }

    /// Stops container `id` (10 s grace) while the caller goes on reading its output.
    fn stop_in_background(&self, id: String) {
        let client = self.clone();
        tokio::spawn(async move {
            if let Err(e) = client.container_action(&id, "stop", Some(10)).await {
                eprintln!("error: cannot stop the container: {e:#}");
            }
        });
    }

    /// `docker wait`: the container's exit code once it stops.
    pub(crate) async fn wait(&self, name: &str) -> anyhow::Result<i32> {
        let v: serde_json::Value = self
            .send(
                self.http
                    .post(self.url(&format!("/v1/containers/{name}/wait"))),
            )
            .await?
            .json()
            .await
            .context("invalid answer to wait")?;
        v["exit_code"]
            .as_i64()
            .map(|c| c as i32)
            .context("the answer to wait has no exit_code")
    }

    pub(crate) async fn ps(&self, all: bool, quiet: bool) -> anyhow::Result<()> {
        let q = if all { vec![("all", "true")] } else { vec![] };
        let list: Vec<ContainerInfo> = self
            .send(self.http.get(self.url("/v1/containers")).query(&q))
            .await?
            .json()
            .await?;
        if quiet {
            for c in list {
                println!("{}", &c.id[..12]);
            }
            return Ok(());
        }
        let now = now_ms();
        let rows: Vec<[String; 7]> = list
            .iter()
            .map(|c| {
                let status = match c.state.as_str() {
                    "running" => format!("Up {}", human_duration(now.saturating_sub(c.started_ms))),
                    "exited" => format!(
                        "Exited ({}) {} ago",
                        c.exit_code.unwrap_or(0),
                        human_duration(now.saturating_sub(c.finished_ms))
                    ),
                    _ => "Created".to_string(),
                };
                let ports = c
                    .ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                [
                    c.id[..12].to_string(),
                    c.image.clone(),
                    c.kind.to_string(),
                    format!("{} ago", human_duration(now.saturating_sub(c.created_ms))),
                    status,
                    ports,
                    c.name.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "KIND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES",
            ],
            &rows,
        );
        Ok(())
    }

    /// `docker stats`: CPU %, memory, network, processes and requests of running
    /// containers (all, or those named), from two reads a moment apart; `stream` redraws
    /// every second until interrupted.
    pub(crate) async fn stats(&self, names: &[String], stream: bool) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut before = self.read_stats(names).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(if stream { 1000 } else { 500 })).await;
            let now = self.read_stats(names).await?;
            let rows = stats_rows(&before, &now);
            if stream {
                // Docker's redraw: clear the screen, table from the top.
                print!("\x1b[2J\x1b[H");
            }
            print_table(
                &[
                    "CONTAINER ID",
                    "NAME",
                    "CPU %",
                    "MEM USAGE / LIMIT",
                    "MEM %",
                    "NET I/O",
                    "PIDS",
                    "REQUESTS",
                ],
                &rows,
            );
            std::io::stdout().flush()?;
            if !stream {
                return Ok(());
            }
            before = now;
        }
    }

    async fn read_stats(&self, names: &[String]) -> anyhow::Result<Vec<ContainerStats>> {
        let all: Vec<ContainerStats> = self.get_json("/v1/stats").await?;
        if names.is_empty() {
            return Ok(all);
        }
        let mut out = Vec::new();
        for n in names {
            let found = all
                .iter()
                .find(|s| &s.name == n || (n.len() >= 4 && s.id.starts_with(n.as_str())))
                .with_context(|| format!("no such running container: {n}"))?;
            out.push(found.clone());
        }
        Ok(out)
    }

    pub(crate) async fn container_action(
        &self,
        name: &str,
        action: &str,
        time: Option<u64>,
    ) -> anyhow::Result<()> {
        let q: Vec<(&str, String)> = time.map(|t| vec![("t", t.to_string())]).unwrap_or_default();
        self.send(
            self.http
                .post(self.url(&format!("/v1/containers/{name}/{action}")))
                .query(&q),
        )
        .await?;
        Ok(())
    }
}

/// One row per container in `now`: rates from its read in `before` (CPU % as Docker's:
/// 100% is one CPU busy), sizes in binary units.
fn stats_rows(before: &[ContainerStats], now: &[ContainerStats]) -> Vec<[String; 8]> {
    now.iter()
        .map(|s| {
            let prev = before.iter().find(|b| b.id == s.id);
            let cpu = prev
                .filter(|p| s.read_ms > p.read_ms)
                .map(|p| {
                    let spent = s.cpu_ns.saturating_sub(p.cpu_ns) as f64;
                    let wall = (s.read_ms - p.read_ms) as f64 * 1e6;
                    format!("{:.2}%", spent / wall * 100.0)
                })
                .unwrap_or_else(|| "--".into());
            let limit = s.memory_limit;
            [
                s.id[..12].to_string(),
                s.name.clone(),
                cpu,
                format!("{} / {}", binary_size(s.memory), binary_size(limit)),
                format!("{:.2}%", s.memory as f64 / limit.max(1) as f64 * 100.0),
                s.net.map_or("--".into(), |(rx, tx)| {
                    format!("{} / {}", human_size(rx), human_size(tx))
                }),
                s.pids.map_or("--".into(), |p| p.to_string()),
                s.requests.map_or("--".into(), |r| r.to_string()),
            ]
        })
        .collect()
}

/// Docker's memory sizes: 1.5MiB, 64MiB, 23.4GiB.
fn binary_size(n: u64) -> String {
    let n = n as f64;
    const K: f64 = 1024.0;
    match n {
        _ if n < K => format!("{n}B"),
        _ if n < K * K => format!("{:.2}KiB", n / K),
        _ if n < K * K * K => format!("{:.2}MiB", n / (K * K)),
        _ => format!("{:.2}GiB", n / (K * K * K)),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Docker-style ages: 42s, 5m, 3h, 2d.
pub(crate) fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Docker-style sizes: 512B, 1.5kB, 12.3MB (decimal units, as `docker images`).
fn human_size(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n < 1e3 => format!("{n}B"),
        _ if n < 1e6 => format!("{:.1}kB", n / 1e3),
        _ if n < 1e9 => format!("{:.1}MB", n / 1e6),
        _ => format!("{:.2}GB", n / 1e9),
    }
}

pub(crate) fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
    print_grid(&header, &rows);
}

/// Prints `header` and `rows` in columns as wide as their widest cell, two spaces
/// apart (as kubectl prints tables).
pub(crate) fn print_grid(header: &[String], rows: &[Vec<String>]) {
    print_grid_as(header, rows, true);
}

/// As [`print_grid`], the header left out unless `with_header` (rows that follow
/// others, as kubectl's watch prints them), the columns still as wide as it.
pub(crate) fn print_grid_as(header: &[String], rows: &[Vec<String>], with_header: bool) {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    if with_header {
        line(header);
    }
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_rows_are_rates_between_two_reads() {
        let read = |read_ms, cpu_ns, requests| ContainerStats {
            id: "a".repeat(64),
            name: "web".into(),
            kind: skiff_spec::AppKind::Oci,
            read_ms,
            cpu_ns,
            memory: 3 << 20,
            memory_limit: 64 << 20,
            pids: Some(2),
            requests,
            net: Some((1500, 2_000_000)),
        };
        // 250 ms of CPU in 500 ms: half of one CPU.
        let rows = stats_rows(&[read(1000, 0, None)], &[read(1500, 250_000_000, None)]);
        assert_eq!(
            rows[0],
            [
                "aaaaaaaaaaaa",
                "web",
                "50.00%",
                "3.00MiB / 64.00MiB",
                "4.69%",
                "1.5kB / 2.0MB",
                "2",
                "--"
            ]
            .map(String::from)
        );
        // Nothing before it: no rate yet.
        let rows = stats_rows(&[], &[read(1500, 5, Some(7))]);
        assert_eq!((rows[0][2].as_str(), rows[0][7].as_str()), ("--", "7"));
    }

    #[test]
    fn ages_read_like_docker() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }
}
