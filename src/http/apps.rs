use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ServerState;
use super::access::Access;
use super::openapi::{AppParam, AppsList, ErrorBody};
use super::paging::ListQuery;
use crate::db::removals::Removal;
use crate::db::{self, Listing};
use crate::domain::{AppId, Brand};
use crate::error::{ApiError, ApiResult, Json, JsonObject};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateApp {
    /// Shown on the dashboard.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// Your own key for this customer; `{app}` in paths takes it as well as the id.
    #[schema(min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9_.:-]+$")]
    uid: Option<String>,
    /// How its customer portal presents itself; leave out to use `HERALD_PORTAL_*`.
    portal_brand: Option<Brand>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateApp {
    #[schema(min_length = 1, max_length = 256)]
    name: Option<String>,
    /// `null` goes back to `HERALD_PORTAL_*`.
    #[serde(default, deserialize_with = "crate::http::present")]
    #[schema(value_type = Option<Brand>)]
    portal_brand: Option<Option<Brand>>,
}

/// A name as sent is at most 256 characters (as the document says), and not blank.
fn checked_name(name: &str) -> ApiResult<&str> {
    let long = name.chars().count() > 256;
    let name = name.trim();
    if name.is_empty() || long {
        return Err(ApiError::Invalid("name must be 1 to 256 characters".into()));
    }
    Ok(name)
}

fn checked_brand(brand: Option<Brand>) -> ApiResult<Option<Brand>> {
    brand
        .map(Brand::checked)
        .transpose()
        .map_err(ApiError::Invalid)
}

/// Creates an application: one tenant, one customer of yours.
#[utoipa::path(
    post,
    path = "/apps",
    tag = "applications",
    request_body = CreateApp,
    responses(
        (status = 201, body = db::apps::Application),
        (status = 409, body = ErrorBody, description = "An application with this uid exists."),
    )
)]
async fn create(
    State(state): State<ServerState>,
    JsonObject(body): JsonObject<CreateApp>,
) -> ApiResult<(StatusCode, Json<db::apps::Application>)> {
    let name = checked_name(&body.name)?;
    if let Some(uid) = &body.uid {
        validate_uid(uid)?;
    }
    let brand = checked_brand(body.portal_brand)?;
    let app = db::apps::create(&state.pool, name, body.uid.as_deref(), brand.as_ref())
        .await
        .map_err(|e| {
            ApiError::from_db(e, |_| "an application with this uid already exists".into())
        })?;
    Ok((StatusCode::CREATED, Json(app)))
}

fn validate_uid(uid: &str) -> ApiResult<()> {
    let ok_chars = uid
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if uid.is_empty() || uid.len() > 256 || !ok_chars {
        return Err(ApiError::Invalid(
            "uid must be 1 to 256 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'".into(),
        ));
    }
    if uid.starts_with(AppId::PREFIX) {
        return Err(ApiError::Invalid(format!(
            "uid must not start with {:?}, which marks application ids",
            AppId::PREFIX
        )));
    }
    Ok(())
}

/// Lists applications, oldest first: for a token bound to one application, that one.
#[utoipa::path(
    get,
    path = "/apps",
    tag = "applications",
    params(AppsList),
    responses((status = 200, body = Listing<db::apps::Application>))
)]
async fn list(
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    ListQuery { limit, cursor }: ListQuery<AppId>,
) -> ApiResult<Json<Listing<db::apps::Application>>> {
    let rows = db::apps::list(&state.pool, cursor, access.app(), limit).await?;
    Ok(Json(Listing::from_rows(rows, limit, |a| a.id.to_string())))
}

/// One application.
#[utoipa::path(
    get,
    path = "/apps/{app}",
    tag = "applications",
    params(AppParam),
    responses((status = 200, body = db::apps::Application))
)]
async fn show(
    State(state): State<ServerState>,
    Path(app): Path<String>,
) -> ApiResult<Json<db::apps::Application>> {
    Ok(Json(state.app(&app).await?))
}

/// Renames an application or sets its portal brand.
#[utoipa::path(
    patch,
    path = "/apps/{app}",
    tag = "applications",
    params(AppParam),
    request_body = UpdateApp,
    responses((status = 200, body = db::apps::Application))
)]
async fn update(
    State(state): State<ServerState>,
    Path(app): Path<String>,
    JsonObject(body): JsonObject<UpdateApp>,
) -> ApiResult<Json<db::apps::Application>> {
    let id = state.app_id(&app).await?;
    let name = body.name.as_deref().map(checked_name).transpose()?;
    let brand = match body.portal_brand {
        None => None,
        Some(brand) => Some(checked_brand(brand)?),
    };
    let brand_ref = brand.as_ref().map(Option::as_ref);
    db::apps::update(&state.pool, id, name, brand_ref)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("application"))
}

/// Deletes an application with its endpoints, messages and attempts. From the answer on,
/// the application is not found, nothing more is sent for it, and its uid is free; its
/// history is deleted in the background, in batches (`GET /removals/{id}` follows it).
#[utoipa::path(
    delete,
    path = "/apps/{app}",
    tag = "applications",
    params(AppParam),
    responses((status = 202, body = Removal, description = "Queued for removal"))
)]
async fn remove(
    State(state): State<ServerState>,
    Path(app): Path<String>,
) -> ApiResult<(StatusCode, Json<Removal>)> {
    let app = state.app(&app).await?;
    let mut conn = state.pool.acquire().await?;
    let removal = db::removals::queue_app(&mut conn, app.id).await?;
    drop(conn);
    super::removals::queued(&state, removal, "application")
}
