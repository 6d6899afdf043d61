//! The one error type of the API edge and its problem+json rendering.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_api::Problem;
use kiln_api::problem::PROBLEM_CONTENT_TYPE;

/// An error answered to an API caller as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    detail: String,
    field: Option<String>,
    log_tail: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            field: None,
            log_tail: None,
        }
    }

    /// Any status with a stable problem type.
    pub fn new_status(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(status, kind, detail)
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 400 naming the field at fault.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        Self::bad_request(detail).with_field(field)
    }

    /// 401: no or unknown token. Deliberately vague.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API token as `Authorization: Bearer <token>`",
        )
    }

    /// 403: the token may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404: no such resource visible to the caller.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!(
                "no {what} `{id}`: check the id or slug, and that your token belongs to its org"
            ),
        )
    }

    /// 404 with a free-form detail.
    pub fn not_found_detail(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 409: the name is taken or the state forbids the operation.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 413: the body exceeds a configured limit.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail)
    }

    /// 422: well-formed but cannot be acted on.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", detail)
    }

    /// 503: a dependency (a machine, the store) is not ready.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// 500: our fault. The cause is logged here, once, and not shown to the caller.
    pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed on the server; retry, and report it if it persists"),
        )
    }

    /// Names the request field at fault.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    /// Attaches the tail of a log that explains the failure.
    pub fn with_log_tail(mut self, tail: String) -> Self {
        self.log_tail = Some(tail);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("/problems/{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
            log_tail: self.log_tail.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).expect("a problem always serializes");
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        resp
    }
}

impl From<kiln_store::StoreError> for ApiError {
    fn from(err: kiln_store::StoreError) -> Self {
        match err {
            kiln_store::StoreError::NotFound => Self::not_found_detail("no such resource"),
            kiln_store::StoreError::Conflict { what } => Self::conflict(what),
            other => Self::internal("the metadata store", &other),
        }
    }
}

/// Result of an API operation.
pub type ApiResult<T> = Result<T, ApiError>;
