//! `skiff get`: the server's Tables printed as kubectl prints them (`-o wide` adds the
//! columns of priority above 0), or the objects themselves (`-o json|yaml|name`), once or
//! as they change (`-w`).

use serde::Deserialize;

use super::*;

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
    #[serde(default)]
    column_definitions: Vec<Column>,
    #[serde(default)]
    rows: Vec<Row>,
    #[serde(default)]
    metadata: TableMeta,
}

/// A Table's version (a list's; none for one object).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TableMeta {
    #[serde(default)]
    resource_version: String,
}

/// The rows of one kind, under the server's columns, and the version they are at.
struct Rows {
    kind: Kind,
    columns: Vec<Column>,
    rows: Vec<Row>,
    version: String,
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
            version: first.metadata.resource_version,
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
    print_tables_as(tables, output, prefix, true);
}

/// As [`print_tables`]; without headers (and blank lines between kinds) unless
/// `headers`: the rows a watch prints after the first.
fn print_tables_as(tables: &[Rows], output: Output, prefix: bool, headers: bool) {
    let wide = output == Output::Wide;
    let mut first = true;
    for t in tables.iter().filter(|t| !t.rows.is_empty()) {
        if !std::mem::take(&mut first) && headers {
            println!();
        }
        let (header, rows) = grid(t, wide, prefix);
        crate::client::print_grid_as(&header, &rows, headers);
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
    // -w: print each object again when it changes (kubectl's watch output, by polling),
    // and once more as it was when it goes.
    let mut last: BTreeMap<String, serde_json::Value> =
        values(&f)?.into_iter().map(|v| (key(&v), v)).collect();
    let mut seen: BTreeMap<String, String> =
        last.iter().map(|(k, v)| (k.clone(), row_key(v))).collect();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let f = fetch(client, &targets, selector).await?;
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        let mut changed = Vec::new();
        let current: BTreeMap<String, serde_json::Value> =
            values(&f)?.into_iter().map(|v| (key(&v), v)).collect();
        for (k, v) in &current {
            let r = row_key(v);
            if seen.get(k) != Some(&r) {
                changed.push(v.clone());
            }
            now.insert(k.clone(), r);
        }
        changed.extend(
            last.iter()
                .filter(|(k, _)| !current.contains_key(*k))
                .map(|(_, v)| v.clone()),
        );
        last = current;
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
/// `-w`, then a row for every event of the server's watch as it comes.
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
    // -w: the server's watch of each kind (of each object named), from the version
    // listed; every event's row as it comes, a deleted object's too (as kubectl shows it).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Row)>(256);
    for (i, ((kind, names), t)) in targets.iter().zip(&tables).enumerate() {
        let mut watches = Vec::new();
        if names.is_empty() {
            watches.push((table_query(selector, true), t.version.clone()));
        } else {
            for row in &t.rows {
                let name = row.object["metadata"]["name"].as_str().unwrap_or_default();
                let version = row.object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let q = form_urlencoded::Serializer::new(String::new())
                    .append_pair("fieldSelector", &format!("metadata.name={name}"))
                    .append_pair("includeObject", "Object")
                    .finish();
                watches.push((format!("?{q}"), version));
            }
        }
        for (query, version) in watches {
            let (client, tx, path) = (client.clone(), tx.clone(), kind.path());
            tokio::spawn(async move {
                if let Err(e) = follow(&client, path, &query, version, i, &tx).await {
                    eprintln!("error: {e:#}");
                    std::process::exit(1);
                }
            });
        }
    }
    drop(tx);
    let mut headers = tables.iter().all(|t| t.rows.is_empty());
    while let Some((i, row)) = rx.recv().await {
        let shown = Rows {
            kind: tables[i].kind,
            columns: tables[i].columns.clone(),
            rows: vec![row],
            version: String::new(),
        };
        print_tables_as(std::slice::from_ref(&shown), output, prefix, headers);
        headers = false;
    }
    Ok(())
}

/// Follows the watch of `path` + `query` from `version`, handing each event's rows on
/// as table `i`'s; watches again from where it was when the server ends a watch, and
/// from now when its version is too old (410).
async fn follow(
    client: &Client,
    path: &str,
    query: &str,
    mut version: String,
    i: usize,
    to: &tokio::sync::mpsc::Sender<(usize, Row)>,
) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        object: serde_json::Value,
    }
    loop {
        let sep = if query.is_empty() { '?' } else { '&' };
        let mut url = format!("{path}{query}{sep}watch=true");
        if !version.is_empty() {
            url.push_str(&format!("&resourceVersion={version}"));
        }
        let mut lines = client.get_lines(&url, AS_TABLE).await?;
        while let Some(line) = futures_util::StreamExt::next(&mut lines).await {
            // A watch that breaks is watched again from where it was.
            let Ok(line) = line else { break };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: Event =
                serde_json::from_slice(&line).context("a watch event is not what skiff expects")?;
            if event.kind == "ERROR" {
                // Too old a version: from now (what is there comes again as ADDED).
                version.clear();
                break;
            }
            let table: Table = serde_json::from_value(event.object)
                .context("a watch event's Table is not what skiff expects")?;
            for row in table.rows {
                if let Some(v) = row.object["metadata"]["resourceVersion"].as_str() {
                    version = v.to_string();
                }
                if to.send((i, row)).await.is_err() {
                    return Ok(());
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            version: String::new(),
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
