//! Request bodies by their `Content-Type`, as the API server reads them: JSON (also
//! with none, as skiff's CLI and curl send it), YAML, and Kubernetes' protobuf for the
//! Deployments and Services kubectl's typed clients send that way ([`protobuf`]).
//! Anything else is 415 Unsupported Media Type, a `Status` naming what is read.
//!
//! [`protobuf`]: skiff_spec::protobuf

use axum::http::StatusCode;
use serde_json::Value;
use skiff_spec::manifest::MAX_MANIFEST_BYTES;

use skiff_spec::protobuf;

use super::Resource;
use crate::api::error::ApiError;

/// The media types an object may come in, as a 415 names them.
const OBJECTS: &str = "application/json, application/yaml, application/vnd.kubernetes.protobuf";

/// The media types other bodies (a `Scale`) may come in.
const PLAIN: &str = "application/json, application/yaml";

/// The media type of a `Content-Type` (no parameters, lower case).
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// 415, as the API server words it.
fn unsupported(what: &str, accepted: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "the body of the request was in an unknown format {what:?} - accepted media types include: {accepted}"
        ),
    )
}

/// The JSON value of a JSON body.
pub(super) fn json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_object",
            format!("the body is not a JSON object: {e}"),
        )
    })
}

/// An object sent to create or replace one of `res`, whatever it was sent in.
pub(super) fn object(res: &Resource, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if media_type(content_type) != "application/vnd.kubernetes.protobuf" {
        return plain(content_type, body).map_err(|e| match e {
            Unsupported(what) => unsupported(&what, OBJECTS),
            Refused(e) => e,
        });
    }
    let Some(kind) = res.served().protobuf() else {
        return Err(ApiError::bad_request(
            "invalid_object",
            "the protobuf body: skiff reads protobuf bodies of Deployments and Services only; send this one as JSON",
        ));
    };
    protobuf::decode(kind, body).map_err(|e| match e {
        protobuf::Error::Invalid(m) => {
            ApiError::bad_request("invalid_object", format!("the protobuf body: {m}"))
        }
        protobuf::Error::TooLarge => ApiError::too_large(format!(
            "the protobuf body makes an object of more than {} bytes ({} MiB)",
            MAX_MANIFEST_BYTES,
            MAX_MANIFEST_BYTES >> 20
        )),
    })
}

/// A body in JSON or YAML (a `Scale`).
pub(super) fn json_or_yaml(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    plain(content_type, body).map_err(|e| match e {
        Unsupported(what) => unsupported(&what, PLAIN),
        Refused(e) => e,
    })
}

/// Why [`plain`] did not read a body.
enum NotRead {
    /// Its media type is not JSON or YAML.
    Unsupported(String),
    /// It is, but does not read as one.
    Refused(ApiError),
}

use NotRead::{Refused, Unsupported};

fn plain(content_type: &str, body: &[u8]) -> Result<Value, NotRead> {
    match media_type(content_type).as_str() {
        "" | "application/json" => json(body).map_err(Refused),
        "application/yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| {
                Refused(ApiError::bad_request(
                    "invalid_object",
                    "the YAML body is not UTF-8",
                ))
            })?;
            skiff_spec::manifest::yaml_value(text).map_err(|e| {
                Refused(ApiError::bad_request(
                    "invalid_object",
                    format!("the body is not a YAML object: {e}"),
                ))
            })
        }
        other => Err(Unsupported(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use serde_json::{Value, json};

    use super::super::testing::{answer, get};

    const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
    const SERVICES: &str = "/api/v1/namespaces/default/services";
    const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

    /// Sends `body` as `content_type`, as client-go does.
    async fn raw(
        router: &axum::Router,
        token: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .header(
                "accept",
                "application/vnd.kubernetes.protobuf, application/json",
            )
            .body(Body::from(body))
            .unwrap();
        let (status, _, v) = answer(router, req).await;
        (status, v)
    }

    fn golden(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../spec/testdata/protobuf")
                .join(name),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn objects_are_read_in_json_yaml_and_protobuf_and_other_encodings_are_415() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();

        // kubectl 1.32+ `create deployment web --image=hello:v1` and `create service
        // clusterip web --tcp=80:8080`, byte for byte.
        let (s, v) = raw(
            &router,
            t,
            "POST",
            DEPLOYMENTS,
            PROTOBUF,
            golden("create-deployment.pb"),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (_, _, d) = get(&router, t, &format!("{DEPLOYMENTS}/web")).await;
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "hello:v1"
        );
        let (s, v) = raw(
            &router,
            t,
            "POST",
            SERVICES,
            PROTOBUF,
            golden("create-service-clusterip.pb"),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(
            (&v["spec"]["selector"], &v["spec"]["ports"][0]["targetPort"]),
            (&json!({"app": "web"}), &json!(8080))
        );
        // A replace in protobuf reads the same (the typed clients' Update).
        let (s, v) = raw(
            &router,
            t,
            "PUT",
            &format!("{DEPLOYMENTS}/web"),
            PROTOBUF,
            golden("create-deployment.pb"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");

        // YAML, as the API server reads it too.
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  selector: {app: web}\n  ports: [{port: 81}]\n";
        let (s, v) = raw(
            &router,
            t,
            "POST",
            SERVICES,
            "application/yaml",
            yaml.into(),
        )
        .await;
        assert_eq!(
            (s, &v["spec"]["ports"][0]["port"]),
            (StatusCode::CREATED, &json!(81)),
            "{v}"
        );

        // What skiff does not read is 415, a Status naming what it reads; a Scale is
        // JSON or YAML; other kinds are not written at all, whatever the encoding.
        for (method, path, content_type) in [
            ("POST", DEPLOYMENTS, "application/cbor"),
            (
                "PUT",
                "/api/v1/namespaces/default/services/web",
                "text/plain",
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/default/deployments/web/scale",
                PROTOBUF,
            ),
        ] {
            let (s, e) = raw(
                &router,
                t,
                method,
                path,
                content_type,
                b"\xd9\xd9\xf7".to_vec(),
            )
            .await;
            assert_eq!(
                (s, e["kind"].as_str(), e["reason"].as_str()),
                (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Some("Status"),
                    Some("UnsupportedMediaType")
                ),
                "{method} {path} {content_type}: {e}"
            );
            let message = e["message"].as_str().unwrap();
            assert!(
                message.starts_with("the body of the request was in an unknown format")
                    && message.contains("application/json, application/yaml"),
                "{message}"
            );
        }
        let (s, _) = raw(
            &router,
            t,
            "POST",
            "/api/v1/namespaces/default/pods",
            PROTOBUF,
            golden("create-deployment.pb"),
        )
        .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        // A crafted protobuf body is a 400 naming what is wrong, and creates nothing.
        let mut crafted = golden("create-service-clusterip.pb");
        crafted.truncate(crafted.len() - 9);
        let (s, e) = raw(&router, t, "POST", SERVICES, PROTOBUF, crafted).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("the protobuf body: "),
            "{e}"
        );
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }
}
