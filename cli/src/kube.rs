//! kubectl's verbs for Deployments, Services and pods: `apply`, `get`, `describe`,
//! `delete`, `scale`, `set image`, `rollout status|history|undo`. Output follows
//! kubectl's: the same columns, `-o json|yaml` of Kubernetes-shaped objects (a `List`
//! with `items` for lists), `created` / `configured` / `unchanged` after apply.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use skiff_spec::api::{ApplyResult, ManifestFile, ManifestFiles, RolloutHistory};
use skiff_spec::k8s::{self, List};

use crate::client::{Client, age, now_ms, print_grid, print_table};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const PODS: &str = "/api/v1/namespaces/default/pods";
const NODES: &str = "/api/v1/nodes";

/// A kind of object, as the verbs name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Pod,
    Deployment,
    Service,
    Node,
}

impl Kind {
    fn parse(word: &str) -> anyhow::Result<Self> {
        Ok(match word.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => Kind::Pod,
            "deployment" | "deployments" | "deploy" | "deployment.apps" | "deployments.apps" => {
                Kind::Deployment
            }
            "service" | "services" | "svc" => Kind::Service,
            "node" | "nodes" | "no" => Kind::Node,
            other => bail!(
                "the server doesn't have a resource type {other:?} (skiff has pods, deployments, services, nodes)"
            ),
        })
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Pod => PODS,
            Kind::Deployment => DEPLOYMENTS,
            Kind::Service => SERVICES,
            Kind::Node => NODES,
        }
    }

    /// As kubectl prefixes names: `pod/x`, `deployment.apps/x`, `service/x`.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deployment.apps",
            Kind::Service => "service",
            Kind::Node => "node",
        }
    }
}

/// What `get` and `describe` were asked for: kinds, each with names (none: all).
fn targets(args: &[String]) -> anyhow::Result<Vec<(Kind, Vec<String>)>> {
    let Some(first) = args.first() else {
        bail!("you must specify the type of resource to get (pods, deployments, services, all)");
    };
    if args.iter().all(|a| a.contains('/')) {
        let mut out: Vec<(Kind, Vec<String>)> = Vec::new();
        for a in args {
            let (kind, name) = a.split_once('/').expect("checked");
            let kind = Kind::parse(kind)?;
            match out.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, names)) => names.push(name.to_string()),
                None => out.push((kind, vec![name.to_string()])),
            }
        }
        return Ok(out);
    }
    let kinds: Vec<Kind> = if first == "all" {
        vec![Kind::Pod, Kind::Deployment, Kind::Service]
    } else {
        first
            .split(',')
            .map(Kind::parse)
            .collect::<anyhow::Result<_>>()?
    };
    let names = args[1..].to_vec();
    if !names.is_empty() && kinds.len() > 1 {
        bail!("names can be given with one resource type only");
    }
    Ok(kinds.into_iter().map(|k| (k, names.clone())).collect())
}

/// `deployment/NAME` or `NAME` (a deployment) as `scale`, `set image` and `rollout`
/// take it.
pub(crate) fn deployment_name(target: &str) -> anyhow::Result<String> {
    match target.split_once('/') {
        Some((kind, name)) if Kind::parse(kind)? == Kind::Deployment => Ok(name.to_string()),
        Some((kind, _)) => bail!("{kind} is not a deployment"),
        None => Ok(target.to_string()),
    }
}

/// Reads `-f` arguments: files, directories (their `.yaml`, `.yml`, `.json` files) or
/// `-` (standard input).
fn read_files(args: &[String]) -> anyhow::Result<Vec<ManifestFile>> {
    if args.is_empty() {
        bail!("must give -f FILE (a file, a directory or -)");
    }
    let mut files = Vec::new();
    for arg in args {
        if arg == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the manifest from standard input")?;
            files.push(ManifestFile {
                source: "-".into(),
                text,
            });
            continue;
        }
        let path = Path::new(arg);
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read directory {arg}"))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                bail!("{arg}: no .yaml, .yml or .json files in the directory");
            }
            for p in entries {
                files.push(read_file(&p)?);
            }
        } else {
            files.push(read_file(path)?);
        }
    }
    Ok(files)
}

fn read_file(path: &Path) -> anyhow::Result<ManifestFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    Ok(ManifestFile {
        source: path.display().to_string(),
        text,
    })
}

fn print_results(r: &ApplyResult) {
    for w in &r.warnings {
        eprintln!("Warning: unknown field {w}");
    }
    for o in &r.results {
        println!("{} {}", o.reference, o.action);
    }
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "wide" => Output::Wide,
            "json" => Output::Json,
            "yaml" => Output::Yaml,
            "name" => Output::Name,
            other => {
                return Err(format!(
                    "unknown output format {other:?} (json, yaml, wide, name)"
                ));
            }
        })
    }
}

/// `RFC 3339` to an age as kubectl prints it.
fn age_of(ts: Option<&str>) -> String {
    ts.and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(
            || "<unknown>".into(),
            |d| age(now_ms().saturating_sub(d.as_millis() as u64)),
        )
}

fn labels_text(labels: &skiff_spec::Labels) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A pod's STATUS column, as kubectl derives it.
fn pod_status(p: &k8s::Pod) -> String {
    if p.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    p.status
        .container_statuses
        .first()
        .and_then(|c| c.state.waiting.as_ref())
        .and_then(|w| w.reason.clone())
        .unwrap_or_else(|| p.status.phase.clone())
}

/// Fetched objects of the kinds asked for.
#[derive(Default)]
struct Fetched {
    pods: Vec<k8s::Pod>,
    deployments: Vec<k8s::Deployment>,
    services: Vec<k8s::Service>,
    nodes: Vec<k8s::Node>,
}

/// `?labelSelector=...`, encoded, or nothing.
fn query(selector: Option<&str>) -> String {
    selector.map_or_else(String::new, |s| {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .append_pair("labelSelector", s)
            .finish();
        format!("?{encoded}")
    })
}

async fn fetch(
    client: &Client,
    targets: &[(Kind, Vec<String>)],
    selector: Option<&str>,
) -> anyhow::Result<Fetched> {
    let mut f = Fetched::default();
    for (kind, names) in targets {
        macro_rules! load {
            ($field:ident, $ty:ty) => {{
                if names.is_empty() {
                    let list: List<$ty> = client
                        .get_json(&format!("{}{}", kind.path(), query(selector)))
                        .await?;
                    f.$field.extend(list.items);
                } else {
                    for n in names {
                        let one: $ty = client
                            .get_json(&format!("{}/{n}", kind.path()))
                            .await
                            .with_context(|| format!("{} {n:?}", kind.prefix()))?;
                        f.$field.push(one);
                    }
                }
            }};
        }
        match kind {
            Kind::Pod => load!(pods, k8s::Pod),
            Kind::Deployment => load!(deployments, k8s::Deployment),
            Kind::Service => load!(services, k8s::Service),
            Kind::Node => load!(nodes, k8s::Node),
        }
    }
    Ok(f)
}

/// What `get` asks for to print tables: the server's `meta.k8s.io/v1 Table`s, as
/// kubectl asks (plain JSON if a server has none).
const AS_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// A column of a server's Table.
#[derive(Clone, Debug, Deserialize)]
struct Column {
    name: String,
    /// `name` for the column of objects' names.
    #[serde(default)]
    format: String,
    /// 0: always shown; more: with `-o wide`.
    #[serde(default)]
    priority: u32,
}

/// A row of a server's Table, with its object (metadata only, unless asked for whole).
#[derive(Clone, Debug, Deserialize)]
struct Row {
    cells: Vec<serde_json::Value>,
    #[serde(default)]
    object: serde_json::Value,
}

/// `meta.k8s.io/v1 Table`, the part `get` prints.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Table {
    column_definitions: Vec<Column>,
    #[serde(default)]
    rows: Vec<Row>,
}

/// The rows of one kind, under the server's columns.
struct Rows {
    kind: Kind,
    columns: Vec<Column>,
    rows: Vec<Row>,
}

/// `?labelSelector=...&includeObject=Object`, encoded, or nothing: whole objects when
/// `objects` (a watch compares them).
fn table_query(selector: Option<&str>, objects: bool) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = selector {
        q.append_pair("labelSelector", s);
    }
    if objects {
        q.append_pair("includeObject", "Object");
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// The server's Tables of the kinds asked for, one per kind.
async fn fetch_tables(
    client: &Client,
    targets: &[(Kind, Vec<String>)],
    selector: Option<&str>,
    objects: bool,
) -> anyhow::Result<Vec<Rows>> {
    let mut out = Vec::new();
    for (kind, names) in targets {
        let mut tables: Vec<Table> = Vec::new();
        if names.is_empty() {
            let path = format!("{}{}", kind.path(), table_query(selector, objects));
            tables.push(client.get_json_as(&path, AS_TABLE).await?);
        } else {
            for n in names {
                let path = format!("{}/{n}{}", kind.path(), table_query(None, objects));
                let one = client
                    .get_json_as(&path, AS_TABLE)
                    .await
                    .with_context(|| format!("{} {n:?}", kind.prefix()))?;
                tables.push(one);
            }
        }
        let mut tables = tables.into_iter();
        let Some(first) = tables.next() else { continue };
        let mut rows = first.rows;
        rows.extend(tables.flat_map(|t| t.rows));
        out.push(Rows {
            kind: *kind,
            columns: first.column_definitions,
            rows,
        });
    }
    Ok(out)
}

/// A cell as kubectl prints it.
fn cell_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// The header and cells of `t` as printed: the server's columns of priority 0 (all
/// with `-o wide`), names prefixed with their kind when several kinds are shown, and
/// for nodes their labels too (as `kubectl get nodes --show-labels` does), which skiff
/// always shows.
fn grid(t: &Rows, wide: bool, prefix: bool) -> (Vec<String>, Vec<Vec<String>>) {
    let shown: Vec<&Column> = t
        .columns
        .iter()
        .filter(|c| wide || c.priority == 0)
        .collect();
    let labels = t.kind == Kind::Node;
    let mut header: Vec<String> = shown.iter().map(|c| c.name.to_uppercase()).collect();
    if labels {
        header.push("LABELS".into());
    }
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|row| {
            let mut cells: Vec<String> = t
                .columns
                .iter()
                .zip(&row.cells)
                .filter(|(c, _)| wide || c.priority == 0)
                .map(|(c, v)| {
                    let text = cell_text(v);
                    if prefix && c.format == "name" {
                        format!("{}/{text}", t.kind.prefix())
                    } else {
                        text
                    }
                })
                .collect();
            if labels {
                cells.push(labels_of(&row.object["metadata"]["labels"]));
            }
            cells
        })
        .collect();
    (header, rows)
}

/// `k=v,...` of a JSON label map, or `<none>`.
fn labels_of(labels: &serde_json::Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// Prints each kind's rows with its header, a blank line between kinds.
fn print_tables(tables: &[Rows], output: Output, prefix: bool) {
    let wide = output == Output::Wide;
    let mut first = true;
    for t in tables.iter().filter(|t| !t.rows.is_empty()) {
        if !std::mem::take(&mut first) {
            println!();
        }
        let (header, rows) = grid(t, wide, prefix);
        print_grid(&header, &rows);
    }
}

/// The objects of `f` as JSON values, in kubectl's order.
fn values(f: &Fetched) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for p in &f.pods {
        out.push(serde_json::to_value(p)?);
    }
    for d in &f.deployments {
        out.push(serde_json::to_value(d)?);
    }
    for s in &f.services {
        out.push(serde_json::to_value(s)?);
    }
    for n in &f.nodes {
        out.push(serde_json::to_value(n)?);
    }
    Ok(out)
}

fn print_structured(value: &impl Serialize, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        _ => print!(
            "{}",
            serde_saphyr::to_string(value).context("cannot write the objects as YAML")?
        ),
    }
    Ok(())
}

/// `skiff get`.
pub(crate) async fn get(
    client: &Client,
    args: &[String],
    output: Option<Output>,
    selector: Option<&str>,
    watch: bool,
) -> anyhow::Result<()> {
    let targets = targets(args)?;
    let output = output.unwrap_or(Output::Table);
    let named = targets.iter().any(|(_, n)| !n.is_empty());
    let prefix = targets.len() > 1 || args.first().is_some_and(|a| a == "all");
    if matches!(output, Output::Table | Output::Wide) {
        return get_tables(client, &targets, output, selector, watch, prefix).await;
    }
    let f = fetch(client, &targets, selector).await?;
    match output {
        Output::Json | Output::Yaml => {
            let items = values(&f)?;
            if named && items.len() == 1 {
                print_structured(&items[0], output)?;
            } else {
                let list = List {
                    api_version: "v1".into(),
                    kind: "List".into(),
                    metadata: k8s::ListMeta::default(),
                    items,
                };
                print_structured(&list, output)?;
            }
        }
        _ => print_names(&values(&f)?),
    }
    if !watch {
        return Ok(());
    }
    // -w: print each object again when it changes (kubectl's watch output, by polling).
    let mut seen: BTreeMap<String, String> = values(&f)?
        .into_iter()
        .map(|v| (key(&v), row_key(&v)))
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let f = fetch(client, &targets, selector).await?;
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        let mut changed = Vec::new();
        for v in values(&f)? {
            let (k, r) = (key(&v), row_key(&v));
            if seen.get(&k) != Some(&r) {
                changed.push(v);
            }
            now.insert(k, r);
        }
        if output == Output::Name {
            print_names(&changed);
        } else {
            for v in &changed {
                print_structured(v, output)?;
            }
        }
        seen = now;
    }
}

/// `-o name`: `kind/name`, as kubectl names objects.
fn print_names(objects: &[serde_json::Value]) {
    for v in objects {
        let kind = v["kind"].as_str().unwrap_or("").to_ascii_lowercase();
        let kind = if kind == "deployment" {
            "deployment.apps".to_string()
        } else {
            kind
        };
        println!("{kind}/{}", v["metadata"]["name"].as_str().unwrap_or(""));
    }
}

/// `skiff get` as tables: the server's columns and rows, as kubectl prints them; with
/// `-w`, the rows whose object changed, again, each time one does (by polling).
async fn get_tables(
    client: &Client,
    targets: &[(Kind, Vec<String>)],
    output: Output,
    selector: Option<&str>,
    watch: bool,
    prefix: bool,
) -> anyhow::Result<()> {
    let tables = fetch_tables(client, targets, selector, watch).await?;
    if tables.iter().all(|t| t.rows.is_empty()) {
        eprintln!("No resources found in default namespace.");
    } else {
        print_tables(&tables, output, prefix);
    }
    if !watch {
        return Ok(());
    }
    let keys = |tables: &[Rows]| -> BTreeMap<String, String> {
        tables
            .iter()
            .flat_map(|t| &t.rows)
            .map(|r| (key(&r.object), row_key(&r.object)))
            .collect()
    };
    let mut seen = keys(&tables);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut tables = fetch_tables(client, targets, selector, true).await?;
        let now = keys(&tables);
        for t in &mut tables {
            t.rows
                .retain(|r| seen.get(&key(&r.object)) != Some(&row_key(&r.object)));
        }
        print_tables(&tables, output, prefix);
        seen = now;
    }
}

fn key(v: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// What a watched row shows (status and spec, not timestamps that move every poll).
fn row_key(v: &serde_json::Value) -> String {
    let mut v = v.clone();
    if let Some(conditions) = v["status"]["conditions"].as_array_mut() {
        for c in conditions {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    format!("{}{}", v["spec"], v["status"])
}

/// `skiff apply -f`.
pub(crate) async fn apply(client: &Client, files: &[String]) -> anyhow::Result<()> {
    let files = ManifestFiles {
        files: read_files(files)?,
    };
    let r: ApplyResult = client.send_json(Method::POST, "/v1/apply", &files).await?;
    print_results(&r);
    Ok(())
}

/// `skiff delete -f FILE` or `skiff delete KIND NAME...`.
pub(crate) async fn delete(
    client: &Client,
    files: &[String],
    args: &[String],
) -> anyhow::Result<()> {
    if !files.is_empty() {
        let files = ManifestFiles {
            files: read_files(files)?,
        };
        let r: ApplyResult = client.send_json(Method::POST, "/v1/delete", &files).await?;
        let mut missing = false;
        for o in &r.results {
            if o.action == "not found" {
                eprintln!("Error from server (NotFound): {} not found", o.reference);
                missing = true;
            } else {
                println!("{} {}", o.reference, o.action);
            }
        }
        if missing {
            std::process::exit(1);
        }
        return Ok(());
    }
    let targets = targets(args)?;
    for (kind, names) in &targets {
        if names.is_empty() {
            bail!("give the names of the {} to delete", kind.prefix());
        }
        for n in names {
            client.delete(&format!("{}/{n}", kind.path())).await?;
            println!("{}/{n} deleted", kind.prefix());
        }
    }
    Ok(())
}

/// `skiff cordon NODE`, `skiff uncordon NODE`.
pub(crate) async fn cordon(client: &Client, node: &str, unschedulable: bool) -> anyhow::Result<()> {
    let _: k8s::Node = client
        .send_json(
            Method::PATCH,
            &format!("{NODES}/{node}"),
            &serde_json::json!({"spec": {"unschedulable": unschedulable}}),
        )
        .await?;
    println!(
        "node/{node} {}",
        if unschedulable {
            "cordoned"
        } else {
            "uncordoned"
        }
    );
    Ok(())
}

/// `skiff drain NODE`: cordon, then wait until no pod runs on the node.
pub(crate) async fn drain(
    client: &Client,
    node: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    cordon(client, node, true).await?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let pods: k8s::List<k8s::Pod> = client.get_json(PODS).await?;
        let left: Vec<String> = pods
            .items
            .iter()
            .filter(|p| p.spec.node_name.as_deref() == Some(node))
            .map(|p| p.metadata.name.clone())
            .collect();
        if left.is_empty() {
            println!("node/{node} drained");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "node/{node} still runs {} after {}: {}",
                left.len(),
                humantime::format_duration(timeout),
                left.join(", ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `skiff scale deployment/NAME --replicas N`.
pub(crate) async fn scale(client: &Client, target: &str, replicas: i32) -> anyhow::Result<()> {
    let name = deployment_name(target)?;
    let _: serde_json::Value = client
        .send_json(
            Method::PATCH,
            &format!("{DEPLOYMENTS}/{name}/scale"),
            &serde_json::json!({"spec": {"replicas": replicas}}),
        )
        .await?;
    println!("deployment.apps/{name} scaled");
    Ok(())
}

/// `skiff set image deployment/NAME CONTAINER=IMAGE...`.
pub(crate) async fn set_image(
    client: &Client,
    target: &str,
    assignments: &[String],
) -> anyhow::Result<()> {
    let name = deployment_name(target)?;
    if assignments.is_empty() {
        bail!("give CONTAINER=IMAGE");
    }
    for a in assignments {
        let Some((container, image)) = a.split_once('=') else {
            bail!("{a:?} is not CONTAINER=IMAGE");
        };
        let _: k8s::Deployment = client
            .send_json(
                Method::POST,
                &format!("/v1/deployments/{name}/image"),
                &serde_json::json!({"container": container, "image": image}),
            )
            .await?;
    }
    println!("deployment.apps/{name} image updated");
    Ok(())
}

/// `skiff rollout undo`.
pub(crate) async fn undo(
    client: &Client,
    target: &str,
    to_revision: Option<i64>,
) -> anyhow::Result<()> {
    let name = deployment_name(target)?;
    let _: k8s::Deployment = client
        .send_json(
            Method::POST,
            &format!("/v1/deployments/{name}/rollback"),
            &serde_json::json!({"toRevision": to_revision}),
        )
        .await?;
    println!("deployment.apps/{name} rolled back");
    Ok(())
}

/// `skiff rollout history`.
pub(crate) async fn history(client: &Client, target: &str) -> anyhow::Result<()> {
    let name = deployment_name(target)?;
    let h: RolloutHistory = client
        .get_json(&format!("/v1/deployments/{name}/history"))
        .await?;
    println!("deployment.apps/{name}");
    let rows: Vec<[String; 3]> = h
        .revisions
        .iter()
        .map(|r| [r.revision.to_string(), r.image.clone(), r.at.clone()])
        .collect();
    print_table(&["REVISION", "IMAGE", "CREATED"], &rows);
    Ok(())
}

/// What `rollout status` waits for, as kubectl decides it: `Ok(Some(message))` to keep
/// waiting, `Ok(None)` when done, `Err` when the rollout failed.
fn rollout_state(d: &k8s::Deployment) -> anyhow::Result<Option<String>> {
    let name = &d.metadata.name;
    let Some(s) = &d.status else {
        return Ok(Some("Waiting for the deployment to be observed...".into()));
    };
    if s.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return Ok(Some(
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    if s.conditions
        .iter()
        .any(|c| c.kind == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let desired = d.spec.replicas.unwrap_or(1);
    if s.updated_replicas < desired {
        return Ok(Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} out of {desired} new replicas have been updated...",
            s.updated_replicas
        )));
    }
    if s.replicas > s.updated_replicas {
        return Ok(Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            s.replicas - s.updated_replicas
        )));
    }
    if s.available_replicas < s.updated_replicas {
        return Ok(Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
            s.available_replicas, s.updated_replicas
        )));
    }
    Ok(None)
}

/// `skiff rollout status`: waits until the rollout is done; fails when it failed or
/// `timeout` passed.
pub(crate) async fn status(
    client: &Client,
    target: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let name = deployment_name(target)?;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last = String::new();
    loop {
        let d: k8s::Deployment = client.get_json(&format!("{DEPLOYMENTS}/{name}")).await?;
        match rollout_state(&d)? {
            None => {
                println!("deployment {name:?} successfully rolled out");
                return Ok(());
            }
            Some(message) => {
                if message != last {
                    println!("{message}");
                    last = message;
                }
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            bail!("timed out waiting for the rollout of deployment {name:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `skiff describe KIND NAME` (or KIND/NAME).
pub(crate) async fn describe(client: &Client, args: &[String]) -> anyhow::Result<()> {
    let targets = targets(args)?;
    let f = fetch(client, &targets, None).await?;
    let mut first = true;
    for d in &f.deployments {
        if !std::mem::take(&mut first) {
            println!();
        }
        let h: RolloutHistory = client
            .get_json(&format!("/v1/deployments/{}/history", d.metadata.name))
            .await?;
        describe_deployment(d, &h);
    }
    for s in &f.services {
        if !std::mem::take(&mut first) {
            println!();
        }
        println!("Name:              {}", s.metadata.name);
        println!("Namespace:         default");
        println!("Labels:            {}", labels_text(&s.metadata.labels));
        println!(
            "Annotations:       {}",
            labels_text(&s.metadata.annotations)
        );
        println!("Selector:          {}", labels_text(&s.spec.selector));
        println!(
            "Type:              {}",
            s.spec.kind.as_deref().unwrap_or("ClusterIP")
        );
        println!(
            "Load balancer:     {}",
            s.metadata
                .annotations
                .get("skiff.dev/load-balancer")
                .map_or("p2c-ewma", |b| b.as_str())
        );
        for p in &s.spec.ports {
            println!(
                "Port:              {} {}/TCP",
                p.name.as_deref().unwrap_or("<unset>"),
                p.port
            );
            if let Some(np) = p.node_port {
                println!("NodePort:          {np}/TCP");
            }
        }
        let pods: List<k8s::Pod> = client
            .get_json(&format!(
                "{PODS}{}",
                query(Some(&labels_text(&s.spec.selector)))
            ))
            .await?;
        let endpoints: Vec<&str> = pods
            .items
            .iter()
            .filter(|p| p.status.container_statuses.iter().all(|c| c.ready))
            .map(|p| p.metadata.name.as_str())
            .collect();
        println!(
            "Endpoints:         {}",
            if endpoints.is_empty() {
                "<none>".to_string()
            } else {
                endpoints.join(",")
            }
        );
    }
    for p in &f.pods {
        if !std::mem::take(&mut first) {
            println!();
        }
        println!("Name:         {}", p.metadata.name);
        println!("Namespace:    default");
        println!(
            "Node:         {}",
            p.spec.node_name.as_deref().unwrap_or("<none>")
        );
        println!(
            "Start Time:   {}",
            p.status.start_time.as_deref().unwrap_or("<none>")
        );
        println!("Labels:       {}", labels_text(&p.metadata.labels));
        println!("Status:       {}", pod_status(p));
        println!(
            "IP:           {}",
            p.status.pod_ip.as_deref().unwrap_or("<none>")
        );
        for c in &p.status.container_statuses {
            println!("Container {}:", c.name);
            println!("  Image:          {}", c.image);
            println!("  Image ID:       {}", c.image_id);
            println!("  Ready:          {}", c.ready);
            println!("  Restart Count:  {}", c.restart_count);
            if let Some(w) = &c.state.waiting {
                println!(
                    "  State:          Waiting ({}): {}",
                    w.reason.as_deref().unwrap_or(""),
                    w.message.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

fn describe_deployment(d: &k8s::Deployment, h: &RolloutHistory) {
    let s = d.status.clone().unwrap_or_default();
    let desired = d.spec.replicas.unwrap_or(1);
    println!("Name:                   {}", d.metadata.name);
    println!("Namespace:              default");
    println!(
        "CreationTimestamp:      {}",
        d.metadata.creation_timestamp.as_deref().unwrap_or("")
    );
    println!(
        "Labels:                 {}",
        labels_text(&d.metadata.labels)
    );
    println!(
        "Annotations:            {}",
        labels_text(&d.metadata.annotations)
    );
    println!(
        "Selector:               {}",
        labels_text(&d.spec.selector.match_labels)
    );
    println!(
        "Replicas:               {desired} desired | {} updated | {} total | {} available | {} unavailable",
        s.updated_replicas,
        s.replicas,
        s.available_replicas,
        (s.replicas - s.available_replicas).max(0)
    );
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    let kind = strategy.kind.as_deref().unwrap_or("RollingUpdate");
    println!("StrategyType:           {kind}");
    println!(
        "MinReadySeconds:        {}",
        d.spec.min_ready_seconds.unwrap_or(0)
    );
    if kind == "RollingUpdate" {
        let ru = strategy.rolling_update.unwrap_or_default();
        let show = |v: Option<k8s::IntOrString>| match v {
            Some(k8s::IntOrString::Int(i)) => i.to_string(),
            Some(k8s::IntOrString::String(s)) => s,
            None => "25%".into(),
        };
        println!(
            "RollingUpdateStrategy:  {} max unavailable, {} max surge",
            show(ru.max_unavailable),
            show(ru.max_surge)
        );
    }
    println!("Pod Template:");
    println!(
        "  Labels:  {}",
        labels_text(&d.spec.template.metadata.labels)
    );
    for c in &d.spec.template.spec.containers {
        println!("  Containers:");
        println!("   {}:", c.name);
        println!("    Image:      {}", c.image);
        for p in &c.ports {
            println!("    Port:       {}/TCP", p.container_port);
        }
        if let Some(r) = &c.resources {
            for (k, v) in &r.limits {
                println!(
                    "    Limits:     {k}: {}",
                    serde_json::to_value(v).map_or_else(
                        |_| String::new(),
                        |v| v.to_string().trim_matches('"').to_string()
                    )
                );
            }
        }
        for e in &c.env {
            println!("    Env:        {}={}", e.name, e.value);
        }
    }
    println!("Conditions:");
    let rows: Vec<[String; 3]> = s
        .conditions
        .iter()
        .map(|c| {
            [
                format!("  {}", c.kind),
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["  Type", "Status", "Reason"], &rows);
    println!("Revisions:");
    for r in &h.revisions {
        println!("  {}  {}  {}  {}", r.revision, r.hash, r.image, r.at);
    }
    println!("Events:");
    if h.events.is_empty() {
        println!("  <none>");
    } else {
        let rows: Vec<[String; 4]> = h
            .events
            .iter()
            .map(|e| {
                [
                    format!("  {}", e.kind),
                    e.reason.clone(),
                    age_of(Some(&e.at)),
                    e.message.clone(),
                ]
            })
            .collect();
        print_table(&["  Type", "Reason", "Age", "Message"], &rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_targets_as_kubectl_takes_them() {
        let t = |args: &[&str]| targets(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(t(&["pods"]).unwrap(), vec![(Kind::Pod, vec![])]);
        assert_eq!(
            t(&["deployments,svc"]).unwrap(),
            vec![(Kind::Deployment, vec![]), (Kind::Service, vec![])]
        );
        assert_eq!(
            t(&["deploy", "web"]).unwrap(),
            vec![(Kind::Deployment, vec!["web".to_string()])]
        );
        assert_eq!(
            t(&["deployment/a", "pod/b", "deployment.apps/c"]).unwrap(),
            vec![
                (Kind::Deployment, vec!["a".to_string(), "c".to_string()]),
                (Kind::Pod, vec!["b".to_string()])
            ]
        );
        assert_eq!(t(&["all"]).unwrap().len(), 3);
        assert!(t(&["widgets"]).is_err());
        assert!(t(&["pods,svc", "x"]).is_err());
        assert_eq!(deployment_name("deployment/web").unwrap(), "web");
        assert_eq!(deployment_name("web").unwrap(), "web");
        assert!(deployment_name("service/web").is_err());
    }

    #[test]
    fn rollout_status_reads_the_status_as_kubectl_does() {
        let mut d: k8s::Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3},
            "status": {"replicas": 4, "updatedReplicas": 3, "availableReplicas": 3,
                       "readyReplicas": 4, "observedGeneration": 2}
        }))
        .unwrap();
        assert!(
            rollout_state(&d)
                .unwrap()
                .unwrap()
                .contains("pending termination")
        );
        d.status.as_mut().unwrap().replicas = 3;
        assert_eq!(rollout_state(&d).unwrap(), None);
        d.status.as_mut().unwrap().observed_generation = Some(1);
        assert!(rollout_state(&d).unwrap().unwrap().contains("observed"));
        d.status.as_mut().unwrap().observed_generation = Some(2);
        d.status.as_mut().unwrap().conditions.push(k8s::Condition {
            kind: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..k8s::Condition::default()
        });
        assert!(rollout_state(&d).is_err());
    }

    #[test]
    fn tables_show_the_servers_columns_as_kubectl_does() {
        let table: Table = serde_json::from_value(serde_json::json!({
            "kind": "Table",
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "priority": 0},
                {"name": "Port(s)", "type": "string", "format": "", "priority": 0},
                {"name": "Selector", "type": "string", "format": "", "priority": 1},
            ],
            "rows": [{"cells": ["web", "80/TCP", "app=web"],
                      "object": {"metadata": {"name": "web", "labels": {"b": "2", "a": "1"}}}}],
        }))
        .unwrap();
        let rows = |kind| Rows {
            kind,
            columns: table.column_definitions.clone(),
            rows: table.rows.clone(),
        };
        let (header, cells) = grid(&rows(Kind::Service), false, false);
        assert_eq!(
            (header, cells),
            (
                vec!["NAME".into(), "PORT(S)".into()],
                vec![vec!["web".into(), "80/TCP".into()]]
            )
        );
        let (header, cells) = grid(&rows(Kind::Service), true, true);
        assert_eq!(header, ["NAME", "PORT(S)", "SELECTOR"]);
        assert_eq!(cells[0], ["service/web", "80/TCP", "app=web"]);
        // Nodes show their labels, which kubectl shows with --show-labels.
        let (header, cells) = grid(&rows(Kind::Node), false, false);
        assert_eq!(header.last().unwrap(), "LABELS");
        assert_eq!(cells[0].last().unwrap(), "a=1,b=2");
        assert_eq!(
            table_query(Some("app=web"), true),
            "?labelSelector=app%3Dweb&includeObject=Object"
        );
        assert_eq!(table_query(None, false), "");
    }
}
