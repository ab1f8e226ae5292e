//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) of the objects
//! kubectl's typed clients send that way: since 1.32, `kubectl create deployment` and
//! `kubectl create service` send a Deployment or a Service in protobuf only (client-go
//! falls back to JSON after a 415 for CBOR, not for protobuf).
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` holding the type and the
//! object's bytes (`k8s.io/api` `generated.proto`). It is decoded into the JSON value
//! Go's encoding/json would write for the same object, so it goes through the same
//! manifest reader as JSON: a field Go omits when empty (a value, not a pointer) is
//! left out when zero, and kubectl's clients send every such field of what they send.
//! The schema below holds the fields of Deployments and Services that skiff reads and
//! the scalar ones around them; a field outside it that carries anything is refused
//! naming where it is, never dropped (send such an object as JSON).
//!
//! Bounded: the body is at most an object's size, the schema's depth bounds recursion,
//! and the JSON made is counted against the size of an object as it grows.

use serde_json::{Map, Value};

use crate::manifest::MAX_MANIFEST_BYTES;

/// The kinds read from protobuf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `v1` Service.
    Service,
}

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

/// Why a body could not be read.
#[derive(Debug)]
pub enum Error {
    /// Not a Kubernetes protobuf body, or a field skiff does not read from one.
    Invalid(String),
    /// The object it makes is larger than an object may be.
    TooLarge,
}

type Result<T> = std::result::Result<T, Error>;

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// How a field is written in JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    /// A message: an object with these fields.
    Msg(&'static [F]),
    /// A message whose fields Go's JSON writes into the parent (a probe's handler).
    Inline(&'static [F]),
    /// `map<string, string>`.
    Labels,
    /// `map<string, Quantity>`.
    Quantities,
    IntOrString,
    Time,
    /// Read and left out: what the node reports (`status`).
    Skip,
}

/// A field: its number, JSON name, type, whether repeated, and whether Go holds it
/// by pointer (then it is sent only when set, and a zero is meant).
#[derive(Clone, Copy)]
struct F {
    n: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    pointer: bool,
}

const fn f(n: u64, name: &'static str, ty: Ty) -> F {
    F {
        n,
        name,
        ty,
        repeated: false,
        pointer: false,
    }
}

/// A pointer field (its zero is kept).
const fn p(n: u64, name: &'static str, ty: Ty) -> F {
    F {
        pointer: true,
        ..f(n, name, ty)
    }
}

/// A repeated field.
const fn r(n: u64, name: &'static str, ty: Ty) -> F {
    F {
        repeated: true,
        ..f(n, name, ty)
    }
}

use Ty::{Bool, Int, IntOrString, Labels, Msg, Quantities, Skip, Str, Time};

static OBJECT_META: &[F] = &[
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(4, "selfLink", Str),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", Int),
    f(8, "creationTimestamp", Time),
    p(9, "deletionTimestamp", Time),
    p(10, "deletionGracePeriodSeconds", Int),
    f(11, "labels", Labels),
    f(12, "annotations", Labels),
    r(14, "finalizers", Str),
];

static SELECTOR_REQUIREMENT: &[F] = &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)];

static LABEL_SELECTOR: &[F] = &[
    f(1, "matchLabels", Labels),
    r(2, "matchExpressions", Msg(SELECTOR_REQUIREMENT)),
];

static DEPLOYMENT: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(DEPLOYMENT_SPEC)),
    f(3, "status", Skip),
];

static DEPLOYMENT_SPEC: &[F] = &[
    p(1, "replicas", Int),
    f(2, "selector", Msg(LABEL_SELECTOR)),
    f(3, "template", Msg(POD_TEMPLATE)),
    f(4, "strategy", Msg(STRATEGY)),
    f(5, "minReadySeconds", Int),
    p(6, "revisionHistoryLimit", Int),
    f(7, "paused", Bool),
    p(9, "progressDeadlineSeconds", Int),
];

static STRATEGY: &[F] = &[
    f(1, "type", Str),
    f(2, "rollingUpdate", Msg(ROLLING_UPDATE)),
];

static ROLLING_UPDATE: &[F] = &[
    p(1, "maxUnavailable", IntOrString),
    p(2, "maxSurge", IntOrString),
];

static POD_TEMPLATE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
];

static POD_SPEC: &[F] = &[
    r(2, "containers", Msg(CONTAINER)),
    f(3, "restartPolicy", Str),
    p(4, "terminationGracePeriodSeconds", Int),
    p(5, "activeDeadlineSeconds", Int),
    f(6, "dnsPolicy", Str),
    f(7, "nodeSelector", Labels),
    f(8, "serviceAccountName", Str),
    f(9, "serviceAccount", Str),
    f(10, "nodeName", Str),
    f(11, "hostNetwork", Bool),
    f(12, "hostPID", Bool),
    f(13, "hostIPC", Bool),
    f(14, "securityContext", Msg(POD_SECURITY_CONTEXT)),
    f(16, "hostname", Str),
    f(17, "subdomain", Str),
    f(19, "schedulerName", Str),
    p(21, "automountServiceAccountToken", Bool),
    f(24, "priorityClassName", Str),
    p(25, "priority", Int),
    p(27, "shareProcessNamespace", Bool),
    p(29, "runtimeClassName", Str),
    p(30, "enableServiceLinks", Bool),
    p(31, "preemptionPolicy", Str),
    p(35, "setHostnameAsFQDN", Bool),
    p(37, "hostUsers", Bool),
];

static CONTAINER: &[F] = &[
    f(1, "name", Str),
    f(2, "image", Str),
    r(3, "command", Str),
    r(4, "args", Str),
    f(5, "workingDir", Str),
    r(6, "ports", Msg(CONTAINER_PORT)),
    r(7, "env", Msg(ENV_VAR)),
    f(8, "resources", Msg(RESOURCES)),
    f(10, "livenessProbe", Msg(PROBE)),
    f(11, "readinessProbe", Msg(PROBE)),
    f(13, "terminationMessagePath", Str),
    f(14, "imagePullPolicy", Str),
    f(15, "securityContext", Msg(SECURITY_CONTEXT)),
    f(16, "stdin", Bool),
    f(17, "stdinOnce", Bool),
    f(18, "tty", Bool),
    f(20, "terminationMessagePolicy", Str),
    f(22, "startupProbe", Msg(PROBE)),
    p(24, "restartPolicy", Str),
];

static CONTAINER_PORT: &[F] = &[
    f(1, "name", Str),
    f(2, "hostPort", Int),
    f(3, "containerPort", Int),
    f(4, "protocol", Str),
    f(5, "hostIP", Str),
];

static ENV_VAR: &[F] = &[f(1, "name", Str), f(2, "value", Str)];

static RESOURCES: &[F] = &[f(1, "limits", Quantities), f(2, "requests", Quantities)];

static PROBE: &[F] = &[
    f(1, "handler", Ty::Inline(PROBE_HANDLER)),
    f(2, "initialDelaySeconds", Int),
    f(3, "timeoutSeconds", Int),
    f(4, "periodSeconds", Int),
    f(5, "successThreshold", Int),
    f(6, "failureThreshold", Int),
    p(7, "terminationGracePeriodSeconds", Int),
];

static PROBE_HANDLER: &[F] = &[f(2, "httpGet", Msg(HTTP_GET))];

static HTTP_GET: &[F] = &[
    f(1, "path", Str),
    f(2, "port", IntOrString),
    f(3, "host", Str),
    f(4, "scheme", Str),
];

static POD_SECURITY_CONTEXT: &[F] = &[
    p(2, "runAsUser", Int),
    p(3, "runAsNonRoot", Bool),
    r(4, "supplementalGroups", Int),
    p(5, "fsGroup", Int),
    p(6, "runAsGroup", Int),
    f(10, "seccompProfile", Msg(SECCOMP_PROFILE)),
];

static SECURITY_CONTEXT: &[F] = &[
    f(1, "capabilities", Msg(CAPABILITIES)),
    p(2, "privileged", Bool),
    p(4, "runAsUser", Int),
    p(5, "runAsNonRoot", Bool),
    p(6, "readOnlyRootFilesystem", Bool),
    p(7, "allowPrivilegeEscalation", Bool),
    p(8, "runAsGroup", Int),
    p(9, "procMount", Str),
    f(11, "seccompProfile", Msg(SECCOMP_PROFILE)),
];

static CAPABILITIES: &[F] = &[r(1, "add", Str), r(2, "drop", Str)];

static SECCOMP_PROFILE: &[F] = &[f(1, "type", Str), p(2, "localhostProfile", Str)];

static SERVICE: &[F] = &[
    f(1, "metadata", Msg(OBJECT_META)),
    f(2, "spec", Msg(SERVICE_SPEC)),
    f(3, "status", Skip),
];

static SERVICE_SPEC: &[F] = &[
    r(1, "ports", Msg(SERVICE_PORT)),
    f(2, "selector", Labels),
    f(3, "clusterIP", Str),
    f(4, "type", Str),
    r(5, "externalIPs", Str),
    f(7, "sessionAffinity", Str),
    f(8, "loadBalancerIP", Str),
    r(9, "loadBalancerSourceRanges", Str),
    f(10, "externalName", Str),
    f(11, "externalTrafficPolicy", Str),
    f(12, "healthCheckNodePort", Int),
    f(13, "publishNotReadyAddresses", Bool),
    p(17, "ipFamilyPolicy", Str),
    r(18, "clusterIPs", Str),
    r(19, "ipFamilies", Str),
    p(20, "allocateLoadBalancerNodePorts", Bool),
    p(21, "loadBalancerClass", Str),
    p(22, "internalTrafficPolicy", Str),
    p(23, "trafficDistribution", Str),
];

static SERVICE_PORT: &[F] = &[
    f(1, "name", Str),
    f(2, "protocol", Str),
    f(3, "port", Int),
    f(4, "targetPort", IntOrString),
    f(5, "nodePort", Int),
    p(6, "appProtocol", Str),
];

/// `runtime.Unknown`, the envelope.
static UNKNOWN: &[F] = &[
    f(
        1,
        "typeMeta",
        Msg(&[f(1, "apiVersion", Str), f(2, "kind", Str)]),
    ),
    f(2, "raw", Skip),
    f(3, "contentEncoding", Str),
    f(4, "contentType", Str),
];

/// One field as read off the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

impl Wire<'_> {
    /// What Go sends for an empty value or message.
    fn is_zero(&self) -> bool {
        match self {
            Wire::Varint(v) | Wire::Fixed(v) => *v == 0,
            Wire::Bytes(b) => b.is_empty(),
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| invalid("a number runs past the end of the body"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(invalid("a number is longer than ten bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.buf.len())
            .ok_or_else(|| invalid("a field runs past the end of the body"))?;
        let (taken, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(taken)
    }

    /// The next field: its number and value.
    fn field(&mut self) -> Result<Option<(u64, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed(u64::from_le_bytes(
                self.take(8)?.try_into().expect("eight bytes"),
            )),
            2 => {
                let n = self.varint()?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().expect("four bytes"),
            ))),
            other => return Err(invalid(format!("wire type {other} is not read"))),
        };
        Ok(Some((key >> 3, wire)))
    }
}

/// What is left of the JSON an object may make (`MAX_MANIFEST_BYTES`).
struct Budget(usize);

impl Budget {
    fn spend(&mut self, bytes: usize) -> Result<()> {
        // Each value costs at least its punctuation and a key.
        self.0 = self.0.checked_sub(bytes + 8).ok_or(Error::TooLarge)?;
        Ok(())
    }
}

fn text(b: &[u8], at: &str) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| invalid(format!("{at} is not UTF-8")))
}

fn wrong(at: &str) -> Error {
    invalid(format!("{at} has the wrong wire type"))
}

/// `{1: key, 2: value}` of a map entry, the value read by `value`.
fn entry(
    b: &[u8],
    at: &str,
    mut value: impl FnMut(Wire<'_>) -> Result<Value>,
) -> Result<(String, Value)> {
    let (mut key, mut v) = (String::new(), Value::String(String::new()));
    let mut r = Reader { buf: b };
    while let Some((n, w)) = r.field()? {
        match (n, w) {
            (1, Wire::Bytes(k)) => key = text(k, at)?,
            (2, w) => v = value(w)?,
            (_, w) if w.is_zero() => {}
            _ => {
                return Err(invalid(format!(
                    "{at} has an entry with a field it does not have"
                )));
            }
        }
    }
    Ok((key, v))
}

/// `resource.Quantity`: `{1: string}`, as written (`128Mi`).
fn quantity(b: &[u8], at: &str) -> Result<Value> {
    let mut q = String::new();
    let mut r = Reader { buf: b };
    while let Some((n, w)) = r.field()? {
        match (n, w) {
            (1, Wire::Bytes(s)) => q = text(s, at)?,
            (_, w) if w.is_zero() => {}
            _ => return Err(invalid(format!("{at} is not a quantity"))),
        }
    }
    Ok(Value::String(q))
}

/// `intstr.IntOrString`: a number or a string (`None` when it is zero: Go's zero).
fn int_or_string(b: &[u8], at: &str) -> Result<Option<Value>> {
    let (mut kind, mut int, mut string) = (0, 0i64, String::new());
    let mut r = Reader { buf: b };
    while let Some((n, w)) = r.field()? {
        match (n, w) {
            (1, Wire::Varint(v)) => kind = v,
            (2, Wire::Varint(v)) => int = v as i64,
            (3, Wire::Bytes(s)) => string = text(s, at)?,
            (_, w) if w.is_zero() => {}
            _ => return Err(invalid(format!("{at} is not an int-or-string"))),
        }
    }
    Ok(match kind {
        0 => Some(Value::from(int as i32)),
        _ => Some(Value::String(string)),
    }
    .filter(|v| *v != 0 && *v != ""))
}

/// `metav1.Time` as RFC 3339 (`None` for Go's zero time, which it writes as null).
fn time(b: &[u8], at: &str) -> Result<Option<Value>> {
    let mut seconds = 0i64;
    let mut r = Reader { buf: b };
    while let Some((n, w)) = r.field()? {
        match (n, w) {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(_)) => {}
            (_, w) if w.is_zero() => {}
            _ => return Err(invalid(format!("{at} is not a time"))),
        }
    }
    if seconds <= 0 {
        return Ok(None);
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64);
    Ok(Some(Value::String(
        humantime::format_rfc3339_seconds(t).to_string(),
    )))
}

/// Decodes a message of `fields` into `out` (`at` names it in errors).
fn message(
    b: &[u8],
    fields: &[F],
    at: &str,
    out: &mut Map<String, Value>,
    budget: &mut Budget,
) -> Result<()> {
    let mut r = Reader { buf: b };
    while let Some((n, wire)) = r.field()? {
        let Some(field) = fields.iter().find(|f| f.n == n) else {
            if wire.is_zero() {
                continue;
            }
            return Err(invalid(format!(
                "field {n} of {at} is set, which skiff does not read from protobuf; send the object as JSON"
            )));
        };
        let here = if at.is_empty() {
            field.name.to_string()
        } else {
            format!("{at}.{}", field.name)
        };
        let value = match (field.ty, wire) {
            (Ty::Skip, _) => continue,
            (Ty::Str, Wire::Bytes(s)) => Value::String(text(s, &here)?),
            (Ty::Int, Wire::Varint(v)) => Value::from(v as i64),
            (Ty::Int, Wire::Bytes(packed)) if field.repeated => {
                let mut p = Reader { buf: packed };
                let list = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Array(Vec::new()));
                while !p.buf.is_empty() {
                    budget.spend(20)?;
                    if let Some(a) = list.as_array_mut() {
                        a.push(Value::from(p.varint()? as i64));
                    }
                }
                continue;
            }
            (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
            (Ty::Msg(inner), Wire::Bytes(m)) => {
                let mut o = Map::new();
                message(m, inner, &here, &mut o, budget)?;
                Value::Object(o)
            }
            (Ty::Inline(inner), Wire::Bytes(m)) => {
                message(m, inner, at, out, budget)?;
                continue;
            }
            (Ty::Labels | Ty::Quantities, Wire::Bytes(e)) => {
                let (k, v) = entry(e, &here, |w| match (field.ty, w) {
                    (Ty::Labels, Wire::Bytes(s)) => Ok(Value::String(text(s, &here)?)),
                    (Ty::Quantities, Wire::Bytes(q)) => quantity(q, &here),
                    _ => Err(wrong(&here)),
                })?;
                budget.spend(k.len() + v.as_str().map_or(0, str::len))?;
                if let Some(map) = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                {
                    map.insert(k, v);
                }
                continue;
            }
            (Ty::IntOrString, Wire::Bytes(b)) => match int_or_string(b, &here)? {
                Some(v) => v,
                None if field.pointer => Value::from(0),
                None => continue,
            },
            (Ty::Time, Wire::Bytes(b)) => match time(b, &here)? {
                Some(v) => v,
                None => continue,
            },
            _ => return Err(wrong(&here)),
        };
        budget.spend(field.name.len() + value.as_str().map_or(0, str::len))?;
        if field.repeated {
            if let Some(a) = out
                .entry(field.name)
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
            {
                a.push(value);
            }
            continue;
        }
        // Go leaves out an empty value that is not held by pointer (omitempty);
        // messages it always writes.
        let empty =
            matches!(&value, Value::String(s) if s.is_empty()) || value == 0 || value == false;
        if empty && !field.pointer {
            continue;
        }
        out.insert(field.name.to_string(), value);
    }
    Ok(())
}

/// Decodes a body holding a `kind` into its JSON.
pub fn decode(kind: Kind, body: &[u8]) -> Result<Value> {
    let fields = match kind {
        Kind::Deployment => DEPLOYMENT,
        Kind::Service => SERVICE,
    };
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| invalid("the body does not start as a Kubernetes protobuf body (k8s\\0)"))?;
    let mut budget = Budget(MAX_MANIFEST_BYTES);
    let mut envelope = Map::new();
    message(unknown, UNKNOWN, "the envelope", &mut envelope, &mut budget)?;
    if envelope.contains_key("contentEncoding") {
        return Err(invalid("an encoded (compressed) protobuf body is not read"));
    }
    // The object's bytes, read again as such (the envelope's schema skips them).
    let mut raw: &[u8] = &[];
    let mut r = Reader { buf: unknown };
    while let Some((n, w)) = r.field()? {
        if let (2, Wire::Bytes(b)) = (n, w) {
            raw = b;
        }
    }
    let mut object = Map::new();
    let type_meta = envelope.remove("typeMeta").unwrap_or_default();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = type_meta.get(key) {
            object.insert(key.to_string(), v.clone());
        }
    }
    message(raw, fields, "", &mut object, &mut budget)?;
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn golden(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/protobuf")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn what_kubectl_create_sends_reads_as_the_json_it_would_send() {
        assert_eq!(
            decode(Kind::Deployment, &golden("create-deployment.pb")).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "hello", "image": "hello:v1", "resources": {}}]}},
                    "strategy": {}}})
        );
        let d = decode(
            Kind::Deployment,
            &golden("create-deployment-port-replicas-command.pb"),
        )
        .unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "hello", "image": "hello:v1", "command": ["/bin/app", "serve"],
                   "ports": [{"containerPort": 8080}], "resources": {}})
        );
        assert_eq!(
            decode(Kind::Service, &golden("create-service-clusterip.pb")).unwrap(),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                    "selector": {"app": "web"}, "type": "ClusterIP"}})
        );
        let s = decode(Kind::Service, &golden("create-service-nodeport.pb")).unwrap();
        assert_eq!(s["spec"]["type"], "NodePort");
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30080);
    }

    /// A body of `object`'s bytes in the envelope, as an apps/v1 `kind`.
    fn body(kind: &str, object: &[u8]) -> Vec<u8> {
        let type_meta = [wrap(0x0a, b"apps/v1"), wrap(0x12, kind.as_bytes())].concat();
        [MAGIC.to_vec(), wrap(0x0a, &type_meta), wrap(0x12, object)].concat()
    }

    #[test]
    fn crafted_bodies_are_refused_with_where_and_what() {
        let refused = |b: &[u8]| match decode(Kind::Deployment, b) {
            Err(Error::Invalid(m)) => m,
            Err(Error::TooLarge) => "too large".into(),
            Ok(v) => panic!("read: {v}"),
        };
        assert!(refused(b"{\"kind\": \"Deployment\"}").contains("k8s\\0"));
        // A field outside the schema that carries something: spec.template.spec's
        // volumes (1), not dropped.
        let object = wrap(
            0x12,
            &wrap(0x1a, &wrap(0x12, &wrap(0x0a, &wrap(0x0a, b"")))),
        );
        let m = refused(&body("Deployment", &object));
        assert!(
            m.contains("field 1 of spec.template.spec is set") && m.contains("JSON"),
            "{m}"
        );
        // Truncated, overlong and group-typed fields.
        assert!(refused(&body("Deployment", &[0x12, 5, 0x08])).contains("past the end"));
        let overlong = [&[0x08][..], &[0xff; 11]].concat();
        assert!(refused(&body("Deployment", &overlong)).contains("ten bytes"));
        assert!(refused(&body("Deployment", &[0x0b])).contains("wire type 3"));
        // A name of the wrong type.
        assert!(refused(&body("Deployment", &[0x0a, 2, 0x08, 1])).contains("metadata.name"));
    }

    /// `inner` as field `tag` (its key byte).
    fn wrap(tag: u8, inner: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let mut n = inner.len();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(inner);
        out
    }

    #[test]
    fn a_body_that_makes_more_than_an_object_is_refused_as_it_grows() {
        // Nearly 4 MiB of empty container ports, two bytes each and some thirty of JSON:
        // spec (2) > template (3) > spec (2) > containers (2) > ports (6).
        let ports = [0x32u8, 0].repeat(2 << 20);
        let object = wrap(0x12, &wrap(0x1a, &wrap(0x12, &wrap(0x12, &ports))));
        assert!(matches!(
            decode(Kind::Deployment, &body("Deployment", &object)),
            Err(Error::TooLarge)
        ));
        // The same shape, small, reads.
        let object = wrap(0x12, &wrap(0x1a, &wrap(0x12, &wrap(0x12, &[0x32, 0]))));
        let d = decode(Kind::Deployment, &body("Deployment", &object)).unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([{}])
        );
    }
}
