//! Reading manifests: YAML 1.2 (or JSON) files of one or more documents, each an
//! `apps/v1 Deployment` or a `v1 Service`, as `skiff apply -f` takes them.
//!
//! A file is all or nothing: the first problem in any document refuses the whole file,
//! with an error naming the file, the document, the line and column where the YAML
//! reader knows them, and the field path. Unknown fields are warnings naming their path
//! (kubectl's default). Parsing is bounded: files over [`MAX_MANIFEST_BYTES`], deep
//! nesting, too many nodes or documents, and alias bombs are refused by the reader
//! (serde-saphyr, with budgets set here) before they cost memory.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::AppName;
use crate::k8s::{Deployment, IntOrString, ObjectMeta, Service};

/// The annotation naming a Service's balancing algorithm.
pub const LOAD_BALANCER_ANNOTATION: &str = "skiff.dev/load-balancer";

/// The annotation naming what `hash` balancing hashes: `client` or a header.
pub const HASH_ON_ANNOTATION: &str = "skiff.dev/hash-on";

/// A pod template's annotation: how long one request may take (`2s`), as `skiff deploy
/// --timeout`.
pub const TIMEOUT_ANNOTATION: &str = "skiff.dev/timeout";
/// A pod template's annotation: requests one pod serves at once, as `--concurrency`.
pub const CONCURRENCY_ANNOTATION: &str = "skiff.dev/concurrency";
/// A pod template's annotation: hosts a pod may call (comma-separated), as
/// `--allow-host`.
pub const ALLOWED_HOSTS_ANNOTATION: &str = "skiff.dev/allowed-hosts";

/// The deploy settings a pod template's `skiff.dev/*` annotations give, checked exactly
/// as `skiff deploy` checks its flags (bounds included); errors name the annotation.
pub fn annotation_params(annotations: &crate::Labels) -> Result<crate::DeployParams, String> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = annotations.get(TIMEOUT_ANNOTATION) {
        pairs.push(("timeout", t));
    }
    if let Some(c) = annotations.get(CONCURRENCY_ANNOTATION) {
        pairs.push(("concurrency", c));
    }
    if let Some(hosts) = annotations.get(ALLOWED_HOSTS_ANNOTATION) {
        for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            pairs.push(("allow_host", h));
        }
    }
    crate::DeployParams::from_pairs(pairs).map_err(|e| {
        let annotation = match e.param.as_str() {
            "timeout" => TIMEOUT_ANNOTATION,
            "concurrency" => CONCURRENCY_ANNOTATION,
            _ => ALLOWED_HOSTS_ANNOTATION,
        };
        format!("metadata.annotations.{annotation}: {}", e.message)
    })
}

/// The algorithms a Service may name (the gateway's, by their annotation values).
pub const LOAD_BALANCERS: [&str; 5] =
    ["round-robin", "random", "least-request", "p2c-ewma", "hash"];

/// Largest manifest file read.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// One object from a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// `apps/v1 Deployment` (boxed, as Service: objects are large and moved around).
    Deployment(Box<Deployment>),
    /// `v1 Service`.
    Service(Box<Service>),
}

impl Object {
    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Deployment(d) => &d.metadata,
            Object::Service(s) => &s.metadata,
        }
    }

    /// As kubectl names it in output: `deployment.apps/web`, `service/web`.
    pub fn reference(&self) -> String {
        match self {
            Object::Deployment(d) => format!("deployment.apps/{}", d.metadata.name),
            Object::Service(s) => format!("service/{}", s.metadata.name),
        }
    }
}

/// An object and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The object, validated.
    pub object: Object,
    /// Its position in the file, from 1.
    pub index: usize,
    /// The line it starts on, from 1.
    pub line: usize,
    /// Fields skiff does not read, as `path: ...` lines for the user.
    pub warnings: Vec<String>,
}

/// Why a manifest was refused: where, and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file (`-` for standard input).
    pub file: String,
    /// The document, from 1.
    pub document: Option<usize>,
    /// Line and column, from 1, where known.
    pub position: Option<(u64, u64)>,
    /// What is wrong (with the field path where there is one).
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some((line, column)) = self.position {
            write!(f, ", line {line} column {column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The reader's budgets: generous for real manifests, small enough that a hostile one
/// costs little.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 32;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_MANIFEST_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

/// What every document says about itself.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

/// Splits a YAML stream into its documents at `---` (and `...`) lines: (first line
/// number, text). A marker line ends a document wherever it appears, block scalars
/// included, so this agrees with the YAML reader.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker || line == "..." || line.starts_with("... ") {
            docs.push((start, std::mem::take(&mut current)));
            // Line numbers are from 1: the next document starts on the line after the
            // marker, or on the marker's own line when content follows it
            // (`--- {inline: content}`).
            let inline = if marker { line[3..].trim_start() } else { "" };
            if inline.is_empty() {
                start = i + 2;
            } else {
                start = i + 1;
                current.push_str(inline);
                current.push('\n');
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// One YAML (or JSON) document as a JSON value, read within the reader's budgets: a
/// Kubernetes API request body sent as `application/yaml`.
pub fn yaml_value(text: &str) -> Result<serde_json::Value, String> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "the body is {} bytes; objects are read up to {MAX_MANIFEST_BYTES}",
            text.len()
        ));
    }
    serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| one_line(&e.without_snippet().to_string()))
}

/// Reads every document of `text` (the contents of `source`), or refuses the file.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let error =
        |document: Option<usize>, position: Option<(u64, u64)>, message: String| ManifestError {
            file: source.to_string(),
            document,
            position,
            message: one_line(&message),
        };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(error(
            None,
            None,
            format!(
                "the file is {} bytes; manifests are read up to {MAX_MANIFEST_BYTES}",
                text.len()
            ),
        ));
    }
    let mut out: Vec<Document> = Vec::new();
    for (i, (line, doc)) in split_documents(text).into_iter().enumerate() {
        let index = i + 1;
        // Positions from the reader are within the document: make them the file's.
        let yaml_error = |e: serde_saphyr::Error| {
            let position = e
                .location()
                .map(|l| (l.line() + line as u64 - 1, l.column()));
            let message = e.without_snippet().to_string();
            // The reader appends its own position; ours (in the file) is the one shown.
            let message = match message.rfind(" at line ") {
                Some(cut) if position.is_some() => message[..cut].to_string(),
                _ => message,
            };
            error(Some(index), position, message)
        };
        let header: Header =
            serde_saphyr::from_str_with_options(&doc, options()).map_err(yaml_error)?;
        let (api_version, kind) = (
            header.api_version.unwrap_or_default(),
            header.kind.unwrap_or_default(),
        );
        let mut ignored = Vec::new();
        let mut object = match (api_version.as_str(), kind.as_str()) {
            (_, "") => {
                return Err(error(
                    Some(index),
                    Some((line as u64, 1)),
                    "the document has no kind".into(),
                ));
            }
            ("apps/v1", "Deployment") => Object::Deployment(Box::new(
                serde_saphyr::with_deserializer_from_str_with_options(&doc, options(), |de| {
                    serde_ignored::deserialize(de, |path| ignored.push(path.to_string()))
                })
                .map_err(yaml_error)?,
            )),
            ("v1", "Service") => Object::Service(Box::new(
                serde_saphyr::with_deserializer_from_str_with_options(&doc, options(), |de| {
                    serde_ignored::deserialize(de, |path| ignored.push(path.to_string()))
                })
                .map_err(yaml_error)?,
            )),
            (other, "Deployment" | "Service") => {
                let want = if kind == "Deployment" {
                    "apps/v1"
                } else {
                    "v1"
                };
                return Err(error(
                    Some(index),
                    Some((line as u64, 1)),
                    format!("apiVersion {other:?} of a {kind} is not supported: use {want}"),
                ));
            }
            (api, other) => {
                return Err(error(
                    Some(index),
                    Some((line as u64, 1)),
                    format!(
                        "kind {other:?} ({api:?}) is not supported: skiff applies apps/v1 Deployment and v1 Service"
                    ),
                ));
            }
        };
        normalize(&mut object);
        // A setting that confines a pod cannot be ignored with a warning: the pod would
        // run less confined than written.
        let mut problems: Vec<String> = ignored
            .iter()
            .filter(|p| confines(p))
            .map(|p| {
                format!(
                    "{}: Forbidden: not supported by skiff (a security setting it cannot honour is refused, not ignored)",
                    field_path(p)
                )
            })
            .collect();
        problems.extend(match &object {
            Object::Deployment(d) => validate_deployment(d),
            Object::Service(s) => validate_service(s),
        });
        if let Some(first) = problems.into_iter().next() {
            return Err(error(Some(index), None, first));
        }
        if let Some(earlier) = out.iter().find(|d| {
            std::mem::discriminant(&d.object) == std::mem::discriminant(&object)
                && d.object.metadata().name == object.metadata().name
        }) {
            return Err(error(
                Some(index),
                None,
                format!(
                    "{} is also document {} of this file",
                    object.reference(),
                    earlier.index
                ),
            ));
        }
        out.push(Document {
            object,
            index,
            line,
            warnings: ignored
                .into_iter()
                .map(|p| format!("unknown field {p:?} (ignored)"))
                .collect(),
        });
    }
    Ok(out)
}

/// Whether an unknown field at `path` (serde_ignored's, `a.b.0.c`) confines a pod: a
/// field of a `securityContext` skiff does not read, or the runtime class (an isolation
/// skiff has one of).
fn confines(path: &str) -> bool {
    let path = field_path(path);
    let Some(pod) = path.strip_prefix("spec.template.spec.") else {
        return false;
    };
    let in_container = pod
        .strip_prefix("containers[")
        .and_then(|rest| rest.split_once("]."))
        .map(|(_, field)| field);
    pod.starts_with("securityContext.")
        || pod.starts_with("runtimeClassName")
        || in_container.is_some_and(|f| f.starts_with("securityContext."))
}

/// serde_ignored's path (`a.?.containers.0.b`, `?` where it went through an `Option`)
/// as Kubernetes writes one (`a.containers[0].b`).
fn field_path(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.').filter(|p| *p != "?") {
        if !out.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// What Kubernetes reads as absent is absent here too: `resources: {}`, which Go's
/// types always write (so a template kubectl sends back, as `rollout undo` does, must
/// hash to the revision it came from, not make a new one).
fn normalize(object: &mut Object) {
    if let Object::Deployment(d) = object {
        for c in &mut std::sync::Arc::make_mut(&mut d.spec.template)
            .spec
            .containers
        {
            if c.resources
                .as_ref()
                .is_some_and(|r| r.limits.is_empty() && r.requests.is_empty())
            {
                c.resources = None;
            }
        }
    }
}

/// `text` with control characters escaped: an error is one line whatever the
/// document held (a folded scalar can put a newline, or a terminal escape, in a kind).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Problems with a name and namespace, as `path: message`.
fn check_meta(meta: &ObjectMeta, problems: &mut Vec<String>) {
    if let Err(e) = AppName::new(meta.name.clone()) {
        problems.push(format!("metadata.name: {e}"));
    }
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| *ns != "default") {
        problems.push(format!(
            "metadata.namespace: {ns:?} does not exist; skiff has only the namespace default"
        ));
    }
}

fn check_port(path: &str, port: i32, problems: &mut Vec<String>) {
    if !(1..=65535).contains(&port) {
        problems.push(format!("{path}: {port} is not a port (1-65535)"));
    }
}

/// Every problem of a Deployment, as `path: message`.
pub fn validate_deployment(d: &Deployment) -> Vec<String> {
    let mut problems = Vec::new();
    check_meta(&d.metadata, &mut problems);
    let spec = &d.spec;
    let non_negative = |path: &str, v: Option<i32>, problems: &mut Vec<String>| {
        if let Some(v) = v.filter(|v| *v < 0) {
            problems.push(format!("{path}: must not be negative, got {v}"));
        }
    };
    non_negative("spec.replicas", spec.replicas, &mut problems);
    if let Some(r) = spec.replicas.filter(|r| *r > crate::k8s::MAX_REPLICAS) {
        problems.push(format!(
            "spec.replicas: {r} is more than a node runs for one Deployment ({})",
            crate::k8s::MAX_REPLICAS
        ));
    }
    non_negative(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit,
        &mut problems,
    );
    non_negative(
        "spec.minReadySeconds",
        spec.min_ready_seconds,
        &mut problems,
    );
    if let Some(deadline) = spec.progress_deadline_seconds
        && deadline <= spec.min_ready_seconds.unwrap_or(0)
    {
        problems.push(format!(
            "spec.progressDeadlineSeconds: {deadline} must be greater than minReadySeconds"
        ));
    }
    let selector = &spec.selector;
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        problems.push("spec.selector: empty; it must select the template's labels".into());
    }
    for (i, e) in selector.match_expressions.iter().enumerate() {
        let path = format!("spec.selector.matchExpressions[{i}]");
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => {
                problems.push(format!("{path}.values: {} needs values", e.operator));
            }
            "Exists" | "DoesNotExist" if !e.values.is_empty() => {
                problems.push(format!("{path}.values: {} takes no values", e.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => problems.push(format!(
                "{path}.operator: {other:?} is not In, NotIn, Exists or DoesNotExist"
            )),
        }
    }
    if let Err(e) = annotation_params(&spec.template.metadata.annotations) {
        problems.push(format!("spec.template.{e}"));
    }
    if !selector.matches(&spec.template.metadata.labels) {
        problems.push(
            "spec.selector: does not match spec.template.metadata.labels (a Deployment must select its own pods)"
                .into(),
        );
    }
    if let Some(strategy) = &spec.strategy {
        match strategy.kind.as_deref().unwrap_or("RollingUpdate") {
            "RollingUpdate" => {
                if let Some(ru) = &strategy.rolling_update {
                    let replicas = spec.replicas.unwrap_or(1);
                    let surge = ru.max_surge.as_ref().map(|s| s.scaled(replicas, true));
                    let unavailable = ru
                        .max_unavailable
                        .as_ref()
                        .map(|u| u.scaled(replicas, false));
                    for (path, v) in [
                        ("spec.strategy.rollingUpdate.maxSurge", &surge),
                        ("spec.strategy.rollingUpdate.maxUnavailable", &unavailable),
                    ] {
                        if let Some(Err(e)) = v {
                            problems.push(format!("{path}: {e}"));
                        }
                    }
                    // As the API server checks it: the values as written (0 or "0%"),
                    // not scaled, so 25% of a Deployment scaled to zero is valid.
                    let written = |v: Option<&IntOrString>| v.map(|v| v.scaled(100, true));
                    if let (Some(Ok(0)), Some(Ok(0))) = (
                        written(ru.max_surge.as_ref()),
                        written(ru.max_unavailable.as_ref()),
                    ) {
                        problems.push(
                            "spec.strategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0"
                                .into(),
                        );
                    }
                }
            }
            "Recreate" if strategy.rolling_update.is_some() => {
                problems.push("spec.strategy.rollingUpdate: only with type RollingUpdate".into())
            }
            "Recreate" => {}
            other => problems.push(format!(
                "spec.strategy.type: {other:?} is not RollingUpdate or Recreate"
            )),
        }
    }
    let containers = &spec.template.spec.containers;
    if containers.len() != 1 {
        problems.push(format!(
            "spec.template.spec.containers: skiff runs one container per pod, this has {}",
            containers.len()
        ));
    }
    for (i, c) in containers.iter().enumerate() {
        let path = format!("spec.template.spec.containers[{i}]");
        // The user is the image's until the pod starts; the rest is checked now.
        if let Err(e) = crate::security::of_pod(&spec.template.spec, i, "") {
            problems.push(format!("spec.template.spec.{e}"));
        }
        if let Err(e) = AppName::new(c.name.clone()) {
            problems.push(format!("{path}.name: {e}"));
        }
        if c.image.trim().is_empty() {
            problems.push(format!("{path}.image: required"));
        }
        for (j, p) in c.ports.iter().enumerate() {
            check_port(
                &format!("{path}.ports[{j}].containerPort"),
                p.container_port,
                &mut problems,
            );
            if let Some(proto) = p.protocol.as_deref().filter(|p| *p != "TCP") {
                problems.push(format!(
                    "{path}.ports[{j}].protocol: {proto:?} (skiff serves TCP)"
                ));
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                problems.push(format!(
                    "{path}.env[{j}].name: {:?} is not a variable name",
                    e.name
                ));
            }
        }
        if let Some(resources) = &c.resources {
            for (kind, q) in [
                ("limits", &resources.limits),
                ("requests", &resources.requests),
            ] {
                if let Some(m) = q.get("memory")
                    && let Err(e) = m.bytes()
                {
                    problems.push(format!("{path}.resources.{kind}.memory: {e}"));
                }
                if let Some(cpu) = q.get("cpu")
                    && let Err(e) = cpu.millicpus()
                {
                    problems.push(format!("{path}.resources.{kind}.cpu: {e}"));
                }
            }
        }
        for (name, probe) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
        ] {
            let Some(probe) = probe else { continue };
            let probe_path = format!("{path}.{name}");
            if let Some(p) = probe.http_get.as_ref().and_then(|g| g.path.as_deref())
                && (!p.starts_with('/')
                    || p.len() > 2048
                    || !p.bytes().all(|b| b.is_ascii_graphic()))
            {
                problems.push(format!(
                    "{probe_path}.httpGet.path: {p:?} is not a path (it starts with /)"
                ));
            }
            match &probe.http_get {
                None => problems.push(format!("{probe_path}: skiff runs httpGet probes only")),
                Some(get) => match &get.port {
                    IntOrString::Int(p) => {
                        check_port(&format!("{probe_path}.httpGet.port"), *p, &mut problems)
                    }
                    IntOrString::String(n)
                        if !c.ports.iter().any(|p| p.name.as_deref() == Some(n)) =>
                    {
                        problems.push(format!(
                            "{probe_path}.httpGet.port: no container port is named {n:?}"
                        ))
                    }
                    IntOrString::String(_) => {}
                },
            }
            for (field, v, min) in [
                ("periodSeconds", probe.period_seconds, 1),
                ("failureThreshold", probe.failure_threshold, 1),
                ("timeoutSeconds", probe.timeout_seconds, 1),
                ("initialDelaySeconds", probe.initial_delay_seconds, 0),
            ] {
                if let Some(v) = v.filter(|v| *v < min) {
                    problems.push(format!("{probe_path}.{field}: {v} is below {min}"));
                }
            }
        }
    }
    problems
}

/// Every problem of a Service, as `path: message`.
pub fn validate_service(s: &Service) -> Vec<String> {
    let mut problems = Vec::new();
    check_meta(&s.metadata, &mut problems);
    let annotations = &s.metadata.annotations;
    if let Some(lb) = annotations.get(LOAD_BALANCER_ANNOTATION)
        && !LOAD_BALANCERS.contains(&lb.as_str())
    {
        problems.push(format!(
            "metadata.annotations.{LOAD_BALANCER_ANNOTATION}: {lb:?} is not one of {}",
            LOAD_BALANCERS.join(", ")
        ));
    }
    if let Some(on) = annotations.get(HASH_ON_ANNOTATION)
        && (on.is_empty()
            || !on
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    {
        problems.push(format!(
            "metadata.annotations.{HASH_ON_ANNOTATION}: {on:?} is neither \"client\" nor a header name"
        ));
    }
    let spec = &s.spec;
    let node_port = match spec.kind.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => false,
        "NodePort" => true,
        other => {
            problems.push(format!(
                "spec.type: {other:?} is not supported (ClusterIP or NodePort)"
            ));
            false
        }
    };
    if spec.ports.is_empty() {
        problems.push("spec.ports: a Service needs at least one port".into());
    }
    let mut names = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        check_port(&format!("{path}.port"), p.port, &mut problems);
        if let Some(proto) = p.protocol.as_deref().filter(|p| *p != "TCP") {
            problems.push(format!("{path}.protocol: {proto:?} (skiff serves TCP)"));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => {
                check_port(&format!("{path}.targetPort"), *t, &mut problems)
            }
            Some(IntOrString::String(n))
                if n.is_empty()
                    || n.len() > 15
                    || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                problems.push(format!(
                    "{path}.targetPort: {n:?} is neither a port nor a port name"
                ));
            }
            _ => {}
        }
        match p.node_port {
            Some(np) if !node_port => {
                problems.push(format!("{path}.nodePort: {np} needs spec.type NodePort"))
            }
            Some(np) if !(30000..=32767).contains(&np) => {
                problems.push(format!("{path}.nodePort: {np} is outside 30000-32767"));
            }
            _ => {}
        }
        if spec.ports.len() > 1 {
            match &p.name {
                None => problems.push(format!(
                    "{path}.name: required when a Service has several ports"
                )),
                Some(n) => {
                    if let Some(j) = names.insert(n.clone(), i) {
                        problems.push(format!(
                            "{path}.name: {n:?} is also the name of spec.ports[{j}]"
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nginx example's two manifests, as people write them (samples/nginx-k8s).
    const DEPLOYMENT: &str = include_str!("../../samples/nginx-k8s/deployment.yaml");
    const SERVICE: &str = include_str!("../../samples/nginx-k8s/service.yaml");

    #[test]
    fn an_empty_resources_is_no_resources_so_templates_written_back_by_go_match() {
        let with = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w}\nspec:\n  selector: {matchLabels: {app: w}}\n  template:\n    metadata: {labels: {app: w}, creationTimestamp: null}\n    spec: {containers: [{name: w, image: 'w:1', resources: {}}]}\n";
        let without = with
            .replace(", resources: {}", "")
            .replace(", creationTimestamp: null", "");
        let read = |text: &str| match parse("t.yaml", text).unwrap().remove(0).object {
            Object::Deployment(d) => d.spec.template,
            Object::Service(_) => unreachable!(),
        };
        assert_eq!(read(with), read(&without));
        assert!(read(with).spec.containers[0].resources.is_none());
    }

    #[test]
    fn the_nginx_example_manifests_read_unchanged() {
        let docs = parse("deployment.yaml", DEPLOYMENT).unwrap();
        let [
            Document {
                object: Object::Deployment(d),
                warnings,
                ..
            },
        ] = &docs[..]
        else {
            panic!("{docs:?}");
        };
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(d.metadata.name, "my-web-app");
        assert_eq!(d.spec.replicas, Some(3));
        let c = &d.spec.template.spec.containers[0];
        assert_eq!(
            (c.image.as_str(), c.ports[0].container_port),
            ("my-web-app:latest", 80)
        );
        let both = format!("{DEPLOYMENT}---\n{SERVICE}");
        let docs = parse("both.yaml", &both).unwrap();
        assert_eq!(docs.len(), 2);
        let Object::Service(s) = &docs[1].object else {
            panic!()
        };
        assert_eq!(s.spec.ports[0].target_port, Some(IntOrString::Int(80)));
        assert_eq!(docs[1].index, 2);
        assert_eq!(docs[1].line, 21);
        assert_eq!(docs[1].object.reference(), "service/my-web-app");
        // JSON is YAML.
        let json = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j"},"spec":{"ports":[{"port":80}]}}"#;
        assert_eq!(parse("s.json", json).unwrap().len(), 1);
    }

    #[test]
    fn unknown_fields_are_warnings_naming_their_path() {
        let text = DEPLOYMENT
            .replace("  replicas: 3\n", "  replicas: 3\n  paused: true\n")
            .replace(
                "        image: my-web-app:latest\n",
                "        image: my-web-app:latest\n        imagePullPolicy: Always\n",
            );
        let docs = parse("d.yaml", &text).unwrap();
        assert_eq!(
            docs[0].warnings,
            [
                "unknown field \"spec.paused\" (ignored)",
                "unknown field \"spec.template.spec.containers.0.imagePullPolicy\" (ignored)",
            ]
        );
    }

    /// The error for `text`, as one line.
    fn refused(text: &str) -> String {
        let e = parse("m.yaml", text).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    }

    #[test]
    fn a_rolling_update_is_refused_only_when_both_bounds_are_written_as_zero() {
        let with = |replicas: u32, surge: &str, unavailable: &str| {
            DEPLOYMENT.replace(
                "  replicas: 3\n",
                &format!(
                    "  replicas: {replicas}\n  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: {surge}, maxUnavailable: {unavailable}}}}}\n"
                ),
            )
        };
        // Scaled to zero, 25% of nothing is nothing: still valid, as the API server has it.
        assert!(parse("m.yaml", &with(0, "25%", "25%")).is_ok());
        assert!(parse("m.yaml", &with(1, "0", "'0%'")).is_err());
        assert!(refused(&with(3, "'0%'", "0")).contains("cannot both be 0"));
    }

    #[test]
    fn bad_manifests_are_refused_whole_with_where_and_what() {
        let bad_indent = DEPLOYMENT.replace("  replicas: 3\n", "   replicas: 3\n");
        let e = refused(&bad_indent);
        assert!(
            e.starts_with("m.yaml: document 1, line 7 column 3: "),
            "{e}"
        );

        let e = refused(&format!(
            "{SERVICE}---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\n"
        ));
        assert!(e.starts_with("m.yaml: document 2, line 13"), "{e}");
        assert!(
            e.contains("kind \"Job\" (\"batch/v1\") is not supported"),
            "{e}"
        );

        let e = refused(&DEPLOYMENT.replace("apps/v1", "extensions/v1beta1"));
        assert!(
            e.contains("apiVersion \"extensions/v1beta1\" of a Deployment"),
            "{e}"
        );

        let e = refused(&DEPLOYMENT.replace("        app: my-web-app\n", "        app: other\n"));
        assert!(
            e.contains("spec.selector: does not match spec.template.metadata.labels"),
            "{e}"
        );

        let e = refused(&DEPLOYMENT.replace("replicas: 3", "replicas: -1"));
        assert!(
            e.contains("spec.replicas: must not be negative, got -1"),
            "{e}"
        );

        let e = refused(&DEPLOYMENT.replace("replicas: 3", "replicas: three"));
        assert!(e.starts_with("m.yaml: document 1, line 6 column"), "{e}");

        let e = refused(&format!("{SERVICE}---\n{SERVICE}"));
        assert!(e.contains("service/my-web-app is also document 1"), "{e}");

        let e = refused(&DEPLOYMENT.replace("name: my-web-app\nspec", "name: My_App\nspec"));
        assert!(e.contains("metadata.name"), "{e}");

        let e = refused(&SERVICE.replace("port: 80\n", "port: 80\n      nodePort: 30080\n"));
        assert!(
            e.contains("spec.ports[0].nodePort: 30080 needs spec.type NodePort"),
            "{e}"
        );

        let e = refused("metadata:\n  name: x\n");
        assert!(e.contains("the document has no kind"), "{e}");

        // Found by the `manifest` fuzz target: a kind folded over two lines made a
        // two-line error. Values are quoted and control characters escaped.
        let e = refused("apiVersion: v1\nkind: Service\n\n  m\n");
        assert!(e.contains("kind \"Service\\nm\""), "{e}");
    }

    /// The nginx example with `pod` lines under the pod spec and `container` lines under
    /// its container (each indented for its place).
    fn with_security(pod: &str, container: &str) -> String {
        DEPLOYMENT
            .replace(
                "    spec:\n      containers:\n",
                &format!("    spec:\n{pod}      containers:\n"),
            )
            .replace(
                "        image: my-web-app:latest\n",
                &format!("        image: my-web-app:latest\n{container}"),
            )
    }

    #[test]
    fn security_contexts_are_read_and_what_cannot_be_honoured_is_refused_by_path() {
        let text = with_security(
            "      securityContext: {runAsUser: 1000, runAsNonRoot: true, fsGroup: 2000, seccompProfile: {type: RuntimeDefault}}\n      hostNetwork: false\n",
            "        securityContext:\n          runAsGroup: 3000\n          readOnlyRootFilesystem: true\n          allowPrivilegeEscalation: false\n          privileged: false\n          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n",
        );
        let docs = parse("d.yaml", &text).unwrap();
        assert!(docs[0].warnings.is_empty(), "{:?}", docs[0].warnings);
        let Object::Deployment(d) = &docs[0].object else {
            panic!()
        };
        let (user, security) = crate::security::of_pod(&d.spec.template.spec, 0, "www").unwrap();
        assert_eq!(user, "1000:3000");
        assert!(security.non_root && security.read_only);
        assert_eq!(security.capabilities(), ["NET_BIND_SERVICE"]);
        assert_eq!(security.groups, ["2000"]);

        for (pod, container, says) in [
            (
                "",
                "        securityContext: {privileged: true}\n",
                "spec.template.spec.containers[0].securityContext.privileged: Forbidden",
            ),
            (
                "",
                "        securityContext: {allowPrivilegeEscalation: true}\n",
                "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation: Forbidden",
            ),
            (
                "      hostNetwork: true\n",
                "",
                "spec.template.spec.hostNetwork: Forbidden",
            ),
            (
                "      hostPID: true\n",
                "",
                "spec.template.spec.hostPID: Forbidden",
            ),
            (
                "      hostIPC: true\n",
                "",
                "spec.template.spec.hostIPC: Forbidden",
            ),
            (
                "      hostUsers: false\n",
                "",
                "spec.template.spec.hostUsers: Forbidden",
            ),
            (
                "      securityContext: {runAsUser: -1}\n",
                "",
                "spec.template.spec.securityContext.runAsUser: Invalid value: -1",
            ),
            (
                "",
                "        securityContext: {runAsUser: 4294967295}\n",
                "spec.template.spec.containers[0].securityContext.runAsUser: Invalid value",
            ),
            (
                "",
                "        securityContext: {capabilities: {add: [GOD_MODE]}}\n",
                "spec.template.spec.containers[0].securityContext.capabilities.add[0]: Unsupported value",
            ),
            (
                "      securityContext: {seccompProfile: {type: Unconfined}}\n",
                "",
                "spec.template.spec.securityContext.seccompProfile.type: Unsupported value: \"Unconfined\"",
            ),
            // Fields skiff does not read are refused beneath a securityContext, not
            // warned about and dropped.
            (
                "      securityContext: {sysctls: [{name: net.core.somaxconn, value: '1024'}]}\n",
                "",
                "spec.template.spec.securityContext.sysctls: Forbidden",
            ),
            (
                "",
                "        securityContext: {seLinuxOptions: {level: 's0:c1'}}\n",
                "spec.template.spec.containers[0].securityContext.seLinuxOptions: Forbidden",
            ),
            (
                "",
                "        securityContext: {procMount: Unmasked}\n",
                "spec.template.spec.containers[0].securityContext.procMount: Forbidden",
            ),
            (
                "      runtimeClassName: kata\n",
                "",
                "spec.template.spec.runtimeClassName: Forbidden",
            ),
        ] {
            let e = refused(&with_security(pod, container));
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn skiff_annotations_and_probe_paths_are_checked_as_deploy_checks_its_flags() {
        let with = |annotation: &str, probe_path: &str| {
            DEPLOYMENT
                .replace(
                    "      labels:\n        app: my-web-app\n    spec:",
                    &format!("      labels:\n        app: my-web-app\n      annotations:\n        {annotation}\n    spec:"),
                )
                .replace(
                    "        - containerPort: 80\n",
                    &format!("        - containerPort: 80\n        readinessProbe:\n          httpGet:\n            path: {probe_path}\n            port: 80\n"),
                )
        };
        assert!(parse("d.yaml", &with("skiff.dev/timeout: 2s", "/ready")).is_ok());
        let params = annotation_params(
            &[
                (CONCURRENCY_ANNOTATION.into(), "8".into()),
                (
                    ALLOWED_HOSTS_ANNOTATION.into(),
                    "a.example, B.example".into(),
                ),
            ]
            .into(),
        )
        .unwrap();
        assert_eq!(params.concurrency, Some(8));
        assert_eq!(params.allowed_hosts, ["a.example", "b.example"]);
        for (annotation, path, needle) in [
            ("skiff.dev/timeout: 999h", "/", "skiff.dev/timeout"),
            (
                "skiff.dev/concurrency: \"4000000000\"",
                "/",
                "skiff.dev/concurrency",
            ),
            (
                "skiff.dev/allowed-hosts: a/b",
                "/",
                "skiff.dev/allowed-hosts",
            ),
            ("x: y", "http://169.254.169.254/", "httpGet.path"),
            ("x: y", "\"/a b\"", "httpGet.path"),
        ] {
            let e = refused(&with(annotation, path));
            assert!(e.contains(needle), "{annotation} {path}: {e}");
        }
    }

    #[test]
    fn a_yaml_body_reads_as_its_json_value_within_the_budgets() {
        assert_eq!(
            yaml_value("kind: Service\nspec:\n  ports: [{port: 80}]\n").unwrap(),
            serde_json::json!({"kind": "Service", "spec": {"ports": [{"port": 80}]}})
        );
        assert!(yaml_value("a: 1\n---\nb: 2\n").is_err());
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        assert!(yaml_value(bomb).is_err());
    }

    #[test]
    fn hostile_yaml_costs_little_and_is_refused() {
        // A billion laughs.
        let mut bomb = String::from(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  annotations:\n    a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let prev = i - 1;
            bomb.push_str(&format!(
                "    a{i}: &a{i} [*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev}]\n"
            ));
        }
        bomb.push_str("spec:\n  ports: [{port: 80}]\n");
        let started = std::time::Instant::now();
        refused(&bomb);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // A 10 MB document.
        let big = format!("{SERVICE}  x: \"{}\"\n", "a".repeat(10 << 20));
        let e = refused(&big);
        assert!(e.contains("manifests are read up to"), "{e}");
        // Deep nesting.
        let deep = format!("{SERVICE}x: {}{}\n", "[".repeat(500), "]".repeat(500));
        refused(&deep);
    }

    #[test]
    fn quantities_and_percentages_read_as_kubernetes_reads_them() {
        use crate::k8s::Quantity;
        let q = |s: &str| Quantity::Text(s.into());
        assert_eq!(q("128Mi").bytes(), Ok(128 << 20));
        assert_eq!(q("1G").bytes(), Ok(1_000_000_000));
        assert_eq!(q("1.5Gi").bytes(), Ok(3 << 29));
        assert_eq!(Quantity::Number(512).bytes(), Ok(512));
        assert!(q("12Qi").bytes().is_err());
        assert_eq!(q("500m").millicpus(), Ok(500));
        assert_eq!(q("0.25").millicpus(), Ok(250));
        assert_eq!(q("2").millicpus(), Ok(2000));
        assert!(q("-1").millicpus().is_err());
        let pct = |s: &str| IntOrString::String(s.into());
        // Kubernetes: maxSurge rounds up, maxUnavailable down.
        assert_eq!(pct("25%").scaled(3, true), Ok(1));
        assert_eq!(pct("25%").scaled(3, false), Ok(0));
        assert_eq!(pct("50%").scaled(5, true), Ok(3));
        assert_eq!(IntOrString::Int(2).scaled(3, true), Ok(2));
        assert!(pct("x").scaled(3, true).is_err());
    }

    #[test]
    fn selectors_match_as_kubernetes_matches() {
        use crate::k8s::{LabelSelector, LabelSelectorRequirement};
        let labels: crate::Labels =
            [("app".into(), "web".into()), ("tier".into(), "fe".into())].into();
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let sel = |exprs| LabelSelector {
            match_labels: [("app".into(), "web".into())].into(),
            match_expressions: exprs,
        };
        assert!(sel(vec![]).matches(&labels));
        assert!(sel(vec![req("tier", "In", &["fe", "be"])]).matches(&labels));
        assert!(!sel(vec![req("tier", "NotIn", &["fe"])]).matches(&labels));
        assert!(sel(vec![req("env", "DoesNotExist", &[])]).matches(&labels));
        assert!(!sel(vec![req("env", "Exists", &[])]).matches(&labels));
        assert!(LabelSelector::default().matches(&labels));
    }
}
