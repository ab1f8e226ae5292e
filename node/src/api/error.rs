//! The API's one error type and how it answers: JSON `{"error": {code, message}}` on
//! skiff's paths, a Kubernetes `Status` on the Kubernetes API's.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_image::StoreError;
use skiff_spec::api::{ErrorBody, ErrorDetail};
use tracing::error;

/// The API's one error type: a status, a stable code and a message. 4xx carry the
/// detail; 5xx are logged with an id and the client sees only the id.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A Kubernetes `Status`'s `details` (which object), where known.
    details: Option<Box<serde_json::Value>>,
}

impl ApiError {
    /// Any status with `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            details: None,
        }
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: message.into(),
            details: None,
        }
    }

    /// 409: the request conflicts with what is running.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: message.into(),
            details: None,
        }
    }

    /// 507: the node has no room for this (its memory budget).
    pub fn over_budget(err: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INSUFFICIENT_STORAGE,
            code: "over_budget",
            message: err.to_string(),
            details: None,
        }
    }

    /// 507: the node's disk is too full to take the write (nothing was written).
    pub fn disk_full(err: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INSUFFICIENT_STORAGE,
            code: "insufficient_storage",
            message: err.to_string(),
            details: None,
        }
    }

    /// A blob store's failure: a full disk is 507, anything else 500.
    pub fn store(e: StoreError) -> Self {
        if e.is_disk_full() {
            ApiError::disk_full(e)
        } else {
            ApiError::internal(e)
        }
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "missing or invalid bearer token (see the token file in the node's data dir)"
                .into(),
            details: None,
        }
    }

    /// 500; the detail goes to the log only.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let mut id = [0u8; 6];
        let _ = getrandom::fill(&mut id);
        let id = hex::encode(id);
        error!(request_id = %id, error = %err, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("internal error (request id {id})"),
            details: None,
        }
    }

    /// Names the object a Kubernetes `Status` is about (`{"name", "group", "kind"}`,
    /// `kind` being the resource, as the API server writes it).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The supervisor's errors as HTTP answers: the one place that maps them.
impl From<crate::error::AppError> for ApiError {
    fn from(e: crate::error::AppError) -> Self {
        use crate::error::AppError;
        match e {
            AppError::NotFound(m) => ApiError::not_found(m),
            AppError::Invalid { code, message } => ApiError::bad_request(code, message),
            AppError::Conflict(m) => ApiError::conflict(m),
            AppError::OverBudget(m) => ApiError::over_budget(m),
            AppError::DiskFull(m) => ApiError::disk_full(m),
            AppError::NotReady(m) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_ready", m),
            AppError::Unavailable { code, message } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            }
            AppError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

/// The `reason` of a Kubernetes `Status` for an error.
fn status_reason(status: StatusCode, code: &str) -> &'static str {
    match (status.as_u16(), code) {
        (409, "already_exists") => "AlreadyExists",
        (400, _) => "BadRequest",
        (401, _) => "Unauthorized",
        (403, _) => "Forbidden",
        (404, _) => "NotFound",
        (405, _) => "MethodNotAllowed",
        (409, _) => "Conflict",
        (410, _) => "Expired",
        (413, _) => "RequestEntityTooLarge",
        (415, _) => "UnsupportedMediaType",
        (422, _) => "Invalid",
        (429, _) => "TooManyRequests",
        (503, _) => "ServiceUnavailable",
        (504, _) => "Timeout",
        _ => "InternalError",
    }
}

/// Every error is skiff's `{"error": {code, message}}` and, in the same object, a
/// Kubernetes `Status`, so kubectl and client-go read the API's errors as a real
/// server's.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = status_reason(self.status, self.code);
        let mut body = serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        })
        .expect("errors serialize");
        body["kind"] = "Status".into();
        body["apiVersion"] = "v1".into();
        body["metadata"] = serde_json::json!({});
        body["status"] = "Failure".into();
        body["message"] = self.message.into();
        body["reason"] = reason.into();
        body["code"] = self.status.as_u16().into();
        // client-go reads a 404's details without checking they are there (`kubectl
        // debug` tells a missing subresource by an empty name), as the API server
        // always writes them.
        match self.details {
            Some(d) => body["details"] = *d,
            None if self.status == StatusCode::NOT_FOUND => body["details"] = serde_json::json!({}),
            None => {}
        }
        (self.status, Json(body)).into_response()
    }
}
