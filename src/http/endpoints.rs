use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderName, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{AppParam, AttemptsPage, EndpointParams, EndpointsPage, ErrorBody};
use super::paging::Paging;
use super::search::AttemptFilters;
use super::{AppState, actions, optional_body, path_id};
use crate::db::attempts::{Attempt, Of};
use crate::db::endpoints::{Endpoint, EndpointFields, REDACTED};
use crate::db::removals::Removal;
use crate::db::{self, Page};
use crate::domain::{
    AttemptId, EndpointId, EndpointUrl, EventType, SigningSecret, Window, refused_header,
};
use crate::error::{AppError, AppResult, Json, Query};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(secret))
        .routes(routes!(headers))
        .routes(routes!(rotate))
        .routes(routes!(attempts))
        .routes(routes!(recover))
}

/// What create and update share; on update every field is optional.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct EndpointSettings {
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// Event types this endpoint receives; empty or absent: all of them.
    #[schema(value_type = Option<Vec<EventType>>)]
    event_types: Option<Vec<String>>,
    disabled: Option<bool>,
    /// Requests in flight at once to this endpoint; `null` takes the server default.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    max_in_flight: Option<Option<i32>>,
    /// Requests per second this endpoint receives at most, across every Herald process,
    /// retries included; bursts up to one second's worth. `null`: unlimited.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 10000)]
    rate_limit: Option<Option<i32>>,
    /// Sent with every request; `webhook-*`, `content-type` and the like are Herald's.
    #[schema(schema_with = headers_schema)]
    headers: Option<BTreeMap<String, String>>,
}

/// Up to 20 headers; names are HTTP tokens of at most 256 bytes, values visible ASCII of
/// at most 4096 bytes, 6144 bytes in all. Hop-by-hop headers and Herald's own are refused.
/// `null`: unchanged.
fn headers_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let string = |pattern: &str, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .max_length(Some(max))
    };
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(MAX_HEADERS))
        .property_names(Some(
            string("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", MAX_HEADER_NAME).build(),
        ))
        .additional_properties(Some(string("^[\\t\\x20-\\x7e]*$", MAX_HEADER_VALUE)))
        .build()
}

/// An endpoint to create. The signing secret is generated unless given.
#[derive(Deserialize, utoipa::ToSchema)]
struct CreateEndpoint {
    #[schema(format = Uri, max_length = 2048, examples("https://example.com/webhooks"))]
    url: String,
    /// `whsec_` and the standard base64 of 24 to 64 bytes.
    #[schema(value_type = Option<SigningSecret>)]
    secret: Option<String>,
    #[serde(flatten)]
    settings: EndpointSettings,
}

/// Changes to an endpoint: fields left out stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
struct UpdateEndpoint {
    #[schema(format = Uri, max_length = 2048, examples("https://example.com/webhooks"))]
    url: Option<String>,
    /// Not patchable; present only to say so (`POST .../secret/rotate` changes it).
    #[schema(ignore)]
    secret: Option<serde_json::Value>,
    #[serde(flatten)]
    settings: EndpointSettings,
}

/// Tells "absent" (None) from "null" (Some(None)), for a whole number: as in JSON Schema,
/// `119.0` is the integer 119.
fn present_whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i32>>, D::Error> {
    let Some(n) = Option::<f64>::deserialize(d)? else {
        return Ok(Some(None));
    };
    if n.fract() != 0.0 || n < f64::from(i32::MIN) || n > f64::from(i32::MAX) {
        return Err(serde::de::Error::custom(format!(
            "expected a whole number, found {n}"
        )));
    }
    // Exact: a whole number within i32's range.
    Ok(Some(Some(n as i32)))
}

impl EndpointSettings {
    fn into_fields(self, url: Option<&str>, allow_private: bool) -> AppResult<EndpointFields> {
        let url = url
            .map(|u| EndpointUrl::parse(u, allow_private).map(|u| u.to_string()))
            .transpose()
            .map_err(AppError::Invalid)?;
        let event_types = self
            .event_types
            .map(|types| {
                types
                    .iter()
                    .map(|t| EventType::parse(t).map(EventType::into_inner))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(AppError::Invalid)?;
        if let Some(d) = &self.description
            && d.chars().count() > 1024
        {
            return Err(AppError::Invalid(
                "description must be at most 1024 characters".into(),
            ));
        }
        if let Some(Some(n)) = self.max_in_flight
            && !(1..=1000).contains(&n)
        {
            return Err(AppError::Invalid(
                "max_in_flight must be between 1 and 1000".into(),
            ));
        }
        if let Some(Some(n)) = self.rate_limit
            && !(1..=10_000).contains(&n)
        {
            return Err(AppError::Invalid(
                "rate_limit must be between 1 and 10000 requests per second".into(),
            ));
        }
        if let Some(headers) = &self.headers {
            validate_headers(headers)?;
        }
        Ok(EndpointFields {
            url,
            description: self.description,
            event_types,
            disabled: self.disabled,
            max_in_flight: self.max_in_flight,
            rate_limit: self.rate_limit,
            headers: self.headers,
        })
    }
}

/// Most custom headers an endpoint may have.
const MAX_HEADERS: usize = 20;
/// Longest header name, in bytes.
const MAX_HEADER_NAME: usize = 256;
/// Longest header value, in bytes: room for any bearer token or JWT, not for a payload.
const MAX_HEADER_VALUE: usize = 4096;
/// All names and values together, in bytes: well under what servers accept in a request's
/// headers (8 KiB and up) once Herald's own are added.
const MAX_HEADERS_TOTAL: usize = 6144;

fn validate_headers(headers: &BTreeMap<String, String>) -> AppResult<()> {
    if headers.len() > MAX_HEADERS {
        return Err(AppError::Invalid(format!(
            "at most {MAX_HEADERS} custom headers"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        if let Some(why) = refused_header(name) {
            return Err(AppError::Invalid(format!("header {name:?} {why}")));
        }
        // Header names are case-insensitive: two spellings of one name would reach the
        // receiver as one, silently.
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(AppError::Invalid(format!(
                "header {name:?} is given twice (names are case-insensitive)"
            )));
        }
        if value == REDACTED {
            return Err(AppError::Invalid(format!(
                "header {name:?} has the value {REDACTED:?} that reads show in place of every \
                 value: send the real value (GET .../headers shows them), or leave headers out \
                 to keep them as they are"
            )));
        }
        if name.len() > MAX_HEADER_NAME {
            return Err(AppError::Invalid(format!(
                "header names must be at most {MAX_HEADER_NAME} bytes"
            )));
        }
        if value.len() > MAX_HEADER_VALUE {
            return Err(AppError::Invalid(format!(
                "header {name:?} is {} bytes long; a value must be at most {MAX_HEADER_VALUE}",
                value.len()
            )));
        }
        // HeaderValue takes any byte but controls; receivers handle ASCII only reliably.
        let ascii = value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if HeaderName::from_bytes(name.as_bytes()).is_err() || !ascii {
            return Err(AppError::Invalid(format!(
                "header {name:?} is not a valid HTTP header"
            )));
        }
    }
    let total: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_HEADERS_TOTAL {
        return Err(AppError::Invalid(format!(
            "custom headers take {total} bytes (names and values); at most {MAX_HEADERS_TOTAL}"
        )));
    }
    Ok(())
}

/// An endpoint with its signing secret (create answers this once).
#[derive(Serialize, utoipa::ToSchema)]
struct WithSecret {
    #[serde(flatten)]
    endpoint: Endpoint,
    secret: String,
}

/// Adds an endpoint to an application. The answer carries its signing secret.
#[utoipa::path(
    post,
    path = "/apps/{app}/endpoints",
    tag = "endpoints",
    params(AppParam),
    request_body = CreateEndpoint,
    responses((status = 201, body = WithSecret))
)]
async fn create(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Json(body): Json<CreateEndpoint>,
) -> AppResult<(StatusCode, Json<WithSecret>)> {
    let app_id = state.app_id(&app).await?;
    let secret = match body.secret {
        Some(s) => SigningSecret::parse(&s).map_err(AppError::Invalid)?,
        None => SigningSecret::generate(),
    };
    let fields = body
        .settings
        .into_fields(Some(&body.url), state.config.allow_private_targets)?;
    let mut tx = state.pool.begin().await?;
    let endpoint = db::endpoints::create(&mut tx, app_id, fields, &secret).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(WithSecret {
            endpoint,
            secret: secret.expose().to_owned(),
        }),
    ))
}

/// Lists an application's endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/apps/{app}/endpoints",
    tag = "endpoints",
    params(AppParam, EndpointsPage),
    responses((status = 200, body = Page<Endpoint>))
)]
async fn list(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Paging { limit, cursor }: Paging<EndpointId>,
) -> AppResult<Json<Page<Endpoint>>> {
    let app_id = state.app_id(&app).await?;
    let rows = db::endpoints::list(&state.pool, app_id, cursor, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |e| e.id.to_string())))
}

async fn find(state: &AppState, app: &str, ep: &str) -> AppResult<Endpoint> {
    let app_id = state.app_id(app).await?;
    let id = path_id(ep, "endpoint")?;
    db::endpoints::find(&state.pool, app_id, id)
        .await?
        .ok_or(AppError::NotFound("endpoint"))
}

/// One endpoint.
#[utoipa::path(
    get,
    path = "/apps/{app}/endpoints/{ep}",
    tag = "endpoints",
    params(EndpointParams),
    responses((status = 200, body = Endpoint))
)]
async fn show(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
) -> AppResult<Json<Endpoint>> {
    Ok(Json(find(&state, &app, &ep).await?))
}

/// Changes an endpoint. Enabling a disabled one sends it new messages again; messages
/// accepted while it was disabled were not queued for it, and a recover of their time
/// window sends them.
#[utoipa::path(
    patch,
    path = "/apps/{app}/endpoints/{ep}",
    tag = "endpoints",
    params(EndpointParams),
    request_body = UpdateEndpoint,
    responses((status = 200, body = Endpoint))
)]
async fn update(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    Json(body): Json<UpdateEndpoint>,
) -> AppResult<Json<Endpoint>> {
    let endpoint = find(&state, &app, &ep).await?;
    if body.secret.is_some() {
        return Err(AppError::Invalid(
            "secret cannot be patched; use POST .../secret/rotate".into(),
        ));
    }
    let fields = body
        .settings
        .into_fields(body.url.as_deref(), state.config.allow_private_targets)?;
    actions::update_endpoint(&state, endpoint.app_id, endpoint.id, fields)
        .await
        .map(Json)
}

/// Deletes an endpoint with its deliveries and attempts (its application's messages stay).
/// From the answer on, the endpoint is not found and nothing more is sent to it; its
/// history is deleted in the background, in batches (`GET /removals/{id}` follows it).
#[utoipa::path(
    delete,
    path = "/apps/{app}/endpoints/{ep}",
    tag = "endpoints",
    params(EndpointParams),
    responses((status = 202, body = Removal, description = "Queued for removal"))
)]
async fn remove(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
) -> AppResult<(StatusCode, Json<Removal>)> {
    let endpoint = find(&state, &app, &ep).await?;
    let removal = db::removals::queue_endpoint(&state.pool, endpoint.app_id, endpoint.id)
        .await?
        .ok_or(AppError::NotFound("endpoint"))?;
    state.removals.wake();
    Ok((StatusCode::ACCEPTED, Json(removal)))
}

#[derive(Serialize, utoipa::ToSchema)]
struct SecretAnswer {
    /// `whsec_` and standard base64.
    secret: String,
}

/// The endpoint's current signing secret.
#[utoipa::path(
    get,
    path = "/apps/{app}/endpoints/{ep}/secret",
    tag = "endpoints",
    params(EndpointParams),
    responses((status = 200, body = SecretAnswer))
)]
async fn secret(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
) -> AppResult<Json<SecretAnswer>> {
    let endpoint = find(&state, &app, &ep).await?;
    let secret = db::endpoints::current_secret(&state.pool, endpoint.id)
        .await?
        .ok_or(AppError::NotFound("secret"))?;
    Ok(Json(SecretAnswer { secret }))
}

#[derive(Serialize, utoipa::ToSchema)]
struct HeadersAnswer {
    /// Every custom header with its value.
    #[schema(value_type = BTreeMap<String, String>)]
    headers: BTreeMap<String, String>,
}

/// The endpoint's custom headers with their values, which other reads show as `••••`.
#[utoipa::path(
    get,
    path = "/apps/{app}/endpoints/{ep}/headers",
    tag = "endpoints",
    params(EndpointParams),
    responses((status = 200, body = HeadersAnswer))
)]
async fn headers(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
) -> AppResult<Json<HeadersAnswer>> {
    // The endpoint as read holds them; only its JSON form hides the values.
    let endpoint = find(&state, &app, &ep).await?;
    Ok(Json(HeadersAnswer {
        headers: endpoint.headers.0,
    }))
}

/// Optional: an empty body generates the new secret.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct RotateBody {
    /// `whsec_` and the standard base64 of 24 to 64 bytes.
    #[schema(value_type = Option<SigningSecret>)]
    secret: Option<String>,
}

/// The new secret signs from now on; the old one keeps signing alongside it for the grace
/// period, so receivers can switch without dropping a single webhook.
#[utoipa::path(
    post,
    path = "/apps/{app}/endpoints/{ep}/secret/rotate",
    tag = "endpoints",
    params(EndpointParams),
    request_body(content = Option<RotateBody>, description = "Optional"),
    responses((status = 200, body = SecretAnswer))
)]
async fn rotate(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> AppResult<Json<SecretAnswer>> {
    let endpoint = find(&state, &app, &ep).await?;
    // The body is optional: none means "generate one for me".
    let body: RotateBody = optional_body(&body)?;
    let secret = match body.secret {
        Some(s) => SigningSecret::parse(&s).map_err(AppError::Invalid)?,
        None => SigningSecret::generate(),
    };
    db::endpoints::rotate_to(
        &state.pool,
        endpoint.id,
        &secret,
        state.config.secret_grace_period,
    )
    .await?;
    Ok(Json(SecretAnswer {
        secret: secret.expose().to_owned(),
    }))
}

/// The endpoint's attempts, newest first, optionally only those of one outcome or
/// status. Pass the same filters with `cursor` for the next page. Filters that only
/// failures match (`retrying`, `dead`, a status outside 2xx) read an index of failures
/// alone; `succeeded` and 2xx walk the endpoint's attempts until the page is full, which
/// is quick unless the endpoint rarely succeeds.
#[utoipa::path(
    get,
    path = "/apps/{app}/endpoints/{ep}/attempts",
    tag = "endpoints",
    params(EndpointParams, AttemptsPage, AttemptFilters),
    responses(
        (status = 200, body = Page<Attempt>),
        (status = 422, body = ErrorBody, description = "A filter's value is invalid."),
    )
)]
async fn attempts(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    Paging { limit, cursor }: Paging<AttemptId>,
    Query(filters): Query<AttemptFilters>,
) -> AppResult<Json<Page<Attempt>>> {
    let endpoint = find(&state, &app, &ep).await?;
    let search = filters.search(cursor)?;
    let rows = db::attempts::list(
        &state.pool,
        endpoint.app_id,
        Of::Endpoint(endpoint.id),
        &search,
        limit,
    )
    .await?;
    Ok(Json(Page::from_rows(rows, limit, |a| a.id.to_string())))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RecoverBody {
    /// RFC 3339.
    #[schema(format = DateTime)]
    since: String,
    /// RFC 3339; absent: now.
    #[schema(format = DateTime)]
    until: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Recovering {
    /// Dead deliveries in the window, all of which are being queued again.
    queued: i32,
    recovery_id: String,
}

/// Sends again every dead delivery of the endpoint created in `[since, until)`. Answers at
/// once; the deliveries are queued in the background, in batches, and a restart part-way
/// does not lose the rest.
#[utoipa::path(
    post,
    path = "/apps/{app}/endpoints/{ep}/recover",
    tag = "endpoints",
    params(EndpointParams),
    request_body = RecoverBody,
    responses(
        (status = 202, body = Recovering),
        (status = 409, body = ErrorBody, description = "`endpoint_disabled`: enable it first."),
    )
)]
async fn recover(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    Json(body): Json<RecoverBody>,
) -> AppResult<(StatusCode, Json<Recovering>)> {
    let endpoint = find(&state, &app, &ep).await?;
    let Window { since, until } =
        Window::parse(Some(&body.since), body.until.as_deref()).map_err(AppError::Invalid)?;
    let started = state
        .recoveries
        .start(endpoint.app_id, endpoint.id, since, until)
        .await??;
    Ok((
        StatusCode::ACCEPTED,
        Json(Recovering {
            queued: started.recovery.total,
            recovery_id: started.recovery.id.simple().to_string(),
        }),
    ))
}
