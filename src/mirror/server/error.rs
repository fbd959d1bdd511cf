//! The one mapping from [`crate::Error`] to an HTTP status and the distribution-spec error body
//! `{"errors":[{"code":…,"message":…,"detail":…}]}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::BlobUnknown(_)
        | Error::BlobUnreadable { .. }
        | Error::BlobUploadUnknown
        | Error::ManifestUnknown(_)
        | Error::NameUnknown(_) => StatusCode::NOT_FOUND,
        Error::BlobUploadInvalid(_)
        | Error::DigestInvalid(_)
        | Error::ManifestBlobUnknown(_)
        | Error::ManifestInvalid(_)
        | Error::NameInvalid(_)
        | Error::SizeInvalid(_)
        | Error::TagInvalid(_)
        | Error::PaginationInvalid(_) => StatusCode::BAD_REQUEST,
        Error::ManifestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::RangeInvalid(_) => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        // The store behind the registry failed: the request may succeed on retry.
        Error::Storage { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Corrupt { .. } => StatusCode::BAD_REQUEST,
        Error::Layout(_)
        | Error::Io(_)
        | Error::Usage(_)
        | Error::Tls(_)
        | Error::MissingBlobs(_)
        | Error::Archive(_)
        | Error::Trip(_)
        | Error::Patch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        // An upstream registry (pull-through) failed or sent something wrong.
        Error::Remote { .. } => StatusCode::BAD_GATEWAY,
    }
}

/// An error on its way to the client.
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let detail = match &e {
            Error::BlobUnknown(d)
            | Error::ManifestBlobUnknown(d)
            | Error::BlobUnreadable { digest: d, .. } => Some(json!({ "digest": d.to_string() })),
            _ => None,
        };
        let status = status_of(&e);
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let Some(d) = self.detail {
            err["detail"] = d;
        }
        let body = json!({ "errors": [err] }).to_string();
        let mut res = (self.status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        res
    }
}
