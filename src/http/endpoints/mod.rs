//! `/apps/{app}/endpoints`: an application's endpoints, their signing secrets and custom
//! headers, their attempts, and the recover of a time window of their dead deliveries.

pub(super) mod settings;

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::settings::{CreateEndpoint, UpdateEndpoint, UrlBy};
use super::access::Access;
use super::openapi::{AppParam, AttemptsList, EndpointParams, EndpointsList, ErrorBody};
use super::paging::ListQuery;
use super::search::{self, AttemptFilters};
use super::{ServerState, actions, optional_body, path_id};
use crate::db::attempts::{Attempt, Of};
use crate::db::endpoints::Endpoint;
use crate::db::removals::Removal;
use crate::db::{self, Listing};
use crate::domain::{AttemptId, EndpointId, SigningSecret, Window};
use crate::error::{ApiError, ApiResult, Json, Query};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(secret))
        .routes(routes!(headers))
        .routes(routes!(rotate))
        .routes(routes!(attempts))
        .routes(routes!(recover))
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
    responses(
        (status = 201, body = WithSecret),
        (status = 409, body = ErrorBody, description = "`endpoint_limit`: the application has \
            as many endpoints as `HERALD_MAX_ENDPOINTS_PER_APP` allows; remove one first."),
    )
)]
async fn create(
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    Path(app): Path<String>,
    Json(body): Json<CreateEndpoint>,
) -> ApiResult<(StatusCode, Json<WithSecret>)> {
    let app_id = state.app_id(&app).await?;
    let secret = match body.secret {
        Some(s) => SigningSecret::parse(&s).map_err(ApiError::Invalid)?,
        None => SigningSecret::generate(),
    };
    let fields = body.settings.into_fields(
        Some(&body.url),
        UrlBy::Api {
            allow_private: state.config.allow_private_targets,
        },
        state.required_catalog(),
    )?;
    let mut tx = state.pool.begin().await?;
    if let Some(actor) = access.actor() {
        db::operational::act_as(&mut tx, &actor).await?;
    }
    let max = state.config.max_endpoints_per_app;
    if !db::endpoints::room_for_one(&mut tx, app_id, max).await? {
        return Err(too_many_endpoints(max));
    }
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

/// The refusal of an endpoint past the application's limit.
pub(crate) fn too_many_endpoints(max: i64) -> ApiError {
    ApiError::Refused(
        "endpoint_limit",
        format!(
            "this application already has {max} endpoints, the most allowed \
             (HERALD_MAX_ENDPOINTS_PER_APP); remove one first"
        ),
    )
}

/// Lists an application's endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/apps/{app}/endpoints",
    tag = "endpoints",
    params(AppParam, EndpointsList),
    responses((status = 200, body = Listing<Endpoint>))
)]
async fn list(
    State(state): State<ServerState>,
    Path(app): Path<String>,
    ListQuery { limit, cursor }: ListQuery<EndpointId>,
) -> ApiResult<Json<Listing<Endpoint>>> {
    let app_id = state.app_id(&app).await?;
    let rows = db::endpoints::list(&state.pool, app_id, cursor, limit).await?;
    Ok(Json(Listing::from_rows(rows, limit, |e| e.id.to_string())))
}

async fn find(state: &ServerState, app: &str, ep: &str) -> ApiResult<Endpoint> {
    let app_id = state.app_id(app).await?;
    let id = path_id(ep, "endpoint")?;
    db::endpoints::find(&state.pool, app_id, id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))
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
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
) -> ApiResult<Json<Endpoint>> {
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
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    Path((app, ep)): Path<(String, String)>,
    Json(body): Json<UpdateEndpoint>,
) -> ApiResult<Json<Endpoint>> {
    let endpoint = find(&state, &app, &ep).await?;
    if body.secret.is_some() {
        return Err(ApiError::Invalid(
            "secret cannot be patched; use POST .../secret/rotate".into(),
        ));
    }
    let fields = body.settings.into_fields(
        body.url.as_deref(),
        UrlBy::Api {
            allow_private: state.config.allow_private_targets,
        },
        state.required_catalog(),
    )?;
    actions::update_endpoint(
        &state,
        endpoint.app_id,
        endpoint.id,
        fields,
        access.actor().as_deref(),
    )
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
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    Path((app, ep)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Removal>)> {
    let endpoint = find(&state, &app, &ep).await?;
    let removal = db::removals::queue_endpoint(
        &state.pool,
        endpoint.app_id,
        endpoint.id,
        access.actor().as_deref(),
    )
    .await?;
    super::removals::queued(&state, removal, "endpoint")
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
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
) -> ApiResult<Json<SecretAnswer>> {
    let endpoint = find(&state, &app, &ep).await?;
    let secret = db::endpoints::current_secret(&state.pool, endpoint.id)
        .await?
        .ok_or(ApiError::NotFound("secret"))?;
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
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
) -> ApiResult<Json<HeadersAnswer>> {
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
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SecretAnswer>> {
    let endpoint = find(&state, &app, &ep).await?;
    // The body is optional: none means "generate one for me".
    let body: RotateBody = optional_body(&body)?;
    let secret = match body.secret {
        Some(s) => SigningSecret::parse(&s).map_err(ApiError::Invalid)?,
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
    params(EndpointParams, AttemptsList, AttemptFilters),
    responses(
        (status = 200, body = Listing<Attempt>),
        (status = 422, body = ErrorBody, description = "A filter's value is invalid."),
    )
)]
async fn attempts(
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
    list: ListQuery<AttemptId>,
    Query(filters): Query<AttemptFilters>,
) -> ApiResult<Json<Listing<Attempt>>> {
    let endpoint = find(&state, &app, &ep).await?;
    let of = Of::Endpoint(endpoint.id);
    search::list_attempts(&state, endpoint.app_id, of, list, &filters).await
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
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
    Json(body): Json<RecoverBody>,
) -> ApiResult<(StatusCode, Json<Recovering>)> {
    let endpoint = find(&state, &app, &ep).await?;
    let Window { since, until } =
        Window::parse(Some(&body.since), body.until.as_deref()).map_err(ApiError::Invalid)?;
    let started = state
        .bulk_replays
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
