//! `GET /removals/{id}`: how far the removal of an application or endpoint has got.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::Access;
use super::openapi::RemovalParam;
use super::{ServerState, path_id};
use crate::db::{self, removals::Removal};
use crate::error::{ApiError, ApiResult, Json};

/// The answer to `DELETE` of an application or endpoint: the removal it queued (202), after
/// waking this process's remover; `what` was not found (or already removed) when `None`.
pub(super) fn queued(
    state: &ServerState,
    removal: Option<Removal>,
    what: &'static str,
) -> ApiResult<(StatusCode, Json<Removal>)> {
    let removal = removal.ok_or(ApiError::NotFound(what))?;
    state.removals.wake();
    Ok((StatusCode::ACCEPTED, Json(removal)))
}

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(show))
}

/// A removal queued by `DELETE /apps/{app}` or `DELETE /apps/{app}/endpoints/{ep}`: what it
/// has deleted so far, and whether it is done. Finished removals are kept as long as the
/// history (`HERALD_RETENTION`). A token bound to one application finds only its own.
#[utoipa::path(
    get,
    path = "/removals/{id}",
    tag = "applications",
    params(RemovalParam),
    responses((status = 200, body = Removal))
)]
async fn show(
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult<Json<Removal>> {
    let id = path_id(&id, "removal")?;
    db::removals::find(&state.pool, id)
        .await?
        .filter(|r| access.check_app(r.app_id).is_ok())
        .map(Json)
        .ok_or(ApiError::NotFound("removal"))
}
