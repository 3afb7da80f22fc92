//! `GET /removals/{id}`: how far the removal of an application or endpoint has got.

use axum::extract::{Path, State};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::RemovalParam;
use super::{ServerState, path_id};
use crate::db::{self, removals::Removal};
use crate::error::{ApiError, ApiResult, Json};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(show))
}

/// A removal queued by `DELETE /apps/{app}` or `DELETE /apps/{app}/endpoints/{ep}`: what it
/// has deleted so far, and whether it is done. Finished removals are kept as long as the
/// history (`HERALD_RETENTION`).
#[utoipa::path(
    get,
    path = "/removals/{id}",
    tag = "applications",
    params(RemovalParam),
    responses((status = 200, body = Removal))
)]
async fn show(
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Removal>> {
    let id = path_id(&id, "removal")?;
    db::removals::find(&state.pool, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("removal"))
}
