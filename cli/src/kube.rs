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
use serde::Serialize;
use skiff_spec::api::{ApplyResult, ManifestFile, ManifestFiles, RolloutHistory};
use skiff_spec::k8s::{self, List};

use crate::client::{Client, age, now_ms, print_table};

mod describe;
mod get;

pub(crate) use describe::describe;
pub(crate) use get::{Output, get};

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
}
