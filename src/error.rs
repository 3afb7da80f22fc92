//! One error type for the HTTP surface. Every failure becomes `{"code","message"}` with
//! the right status; internal errors are logged and never described to the caller.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::db::replays::Refused;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// The request is valid but the state of things refuses it (`code` says why).
    #[error("{1}")]
    Refused(&'static str, String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// A `Last-Event-ID` the feed cannot resume from without a gap.
    #[error("{0}")]
    UnknownEventId(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Too many failed tokens from the caller's address; answered with `Retry-After`.
    #[error("too many failed authentication attempts from this address; retry after {0} s")]
    TooManyRequests(u64),
    /// The client did not send its request body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The server did not answer in time; the request may still have taken effect.
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Refused(code, _) => (StatusCode::CONFLICT, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::UnknownEventId(_) => (StatusCode::GONE, "unknown_last_event_id"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Database(e) if database_unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Database(e) if nul_in_text(e) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::Database(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }

    /// Turns constraint violations the caller caused into 409/422; anything else stays a
    /// 500. Callers that know which constraint they can hit say what it means.
    pub fn from_db(err: sqlx::Error, on_unique: impl FnOnce(&str) -> String) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.is_unique_violation() {
                return Self::Conflict(on_unique(db.constraint().unwrap_or_default()));
            }
            if db.is_check_violation() {
                return Self::Invalid(format!(
                    "value violates {}",
                    db.constraint().unwrap_or("a constraint")
                ));
            }
        }
        Self::Database(err)
    }
}

/// PostgreSQL's text cannot hold U+0000 ("invalid byte sequence for encoding UTF8: 0x00",
/// 22021; "unsupported Unicode escape sequence", 22P05): whatever field carried it, the
/// caller sent it.
fn nul_in_text(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("22021" | "22P05")),
        _ => false,
    }
}

/// The database is down, restarting or out of connections: the request can be retried as
/// is, so it is a 503, not a 500.
fn database_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // 57P01-03: admin shutdown, crash shutdown, cannot connect now; 08: connection.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Self::Database(e) if database_unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                // The connection may have dropped after a commit: the caller cannot know
                // whether a write landed, only an idempotency key makes the retry safe.
                "the database is unavailable; try again. A write may have been stored \
                 before the connection failed: retry a send with the same Idempotency-Key \
                 so it is not stored twice"
                    .to_owned()
            }
            Self::Database(e) if nul_in_text(e) => {
                "text must not contain NUL (\\u0000) characters".to_owned()
            }
            Self::Database(e) => {
                tracing::error!(error = %e, "database error");
                "internal error".to_owned()
            }
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            axum::Json(json!({ "code": code, "message": message })),
        )
            .into_response();
        if let Self::TooManyRequests(secs) = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::Invalid(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("expected content-type: application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge("request body is too large".into())
            }
            other => Self::BadRequest(other.body_text()),
        }
    }
}

/// A replay or recover the state of things refuses: a 409 with the refusal's own code,
/// except what is not there, which is a 404 like any other.
impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NotFound(what) => Self::NotFound(what),
            other => Self::Refused(other.code(), other.message()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

/// `axum::Json`, but a rejected body answers in our error format.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON object body as `T`: like [`Json`], but a body that is not an object is refused
/// (422) rather than read positionally (serde fills a struct from an array, so `["Acme"]`
/// would be an application named Acme).
pub struct JsonObject<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S>
    for JsonObject<T>
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<serde_json::Value>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(ApiError::Invalid("the body must be a JSON object".into()));
        }
        serde_json::from_value(value)
            .map(JsonObject)
            .map_err(|e| ApiError::Invalid(e.to_string()))
    }
}

/// `axum::extract::Query`, answering in our error format.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
