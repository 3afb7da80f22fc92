//! `POST/GET /tokens`, `DELETE /tokens/{id}`: API tokens besides the admin token.
//!
//! A token carries scopes and, perhaps, the one application it reaches; `access` holds
//! every request to them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::actions::{self, NewToken};
use super::openapi::TokenParam;
use super::{ServerState, path_id};
use crate::db::{self, tokens::Token};
use crate::domain::TokenId;
use crate::error::{ApiResult, Json, JsonObject};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// Shown in lists: what the token is for.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// An application's id or uid: the token reaches that application only.
    app: Option<String>,
    /// Of `messages:send`, `messages:read`, `endpoints:manage`, `replay`, `admin`.
    #[schema(min_items = 1)]
    scopes: Vec<String>,
    /// RFC 3339; after it the token is refused. `null`: it does not expire.
    expires_at: Option<DateTime<Utc>>,
}

/// A new token, with its secret: shown this once, stored only as a hash.
#[derive(Serialize, utoipa::ToSchema)]
struct Created {
    #[serde(flatten)]
    meta: Token,
    /// `hrld_` and 64 hex digits; send it as `Authorization: Bearer …`.
    token: String,
}

/// Creates a token. Its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/tokens",
    tag = "tokens",
    request_body = CreateToken,
    responses((status = 201, body = Created))
)]
async fn create(
    State(state): State<ServerState>,
    JsonObject(body): JsonObject<CreateToken>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let new = NewToken {
        name: &body.name,
        app: body.app.as_deref(),
        scopes: &body.scopes,
        expires_at: body.expires_at,
    };
    let (meta, token) = actions::create_token(&state, new).await?;
    Ok((StatusCode::CREATED, Json(Created { meta, token })))
}

/// Lists the tokens, oldest first, without their secrets.
#[utoipa::path(
    get,
    path = "/tokens",
    tag = "tokens",
    responses((status = 200, body = Vec<Token>))
)]
async fn list(State(state): State<ServerState>) -> ApiResult<Json<Vec<Token>>> {
    Ok(Json(db::tokens::list(&state.pool).await?))
}

/// Revokes a token: every process refuses it from its next request on.
#[utoipa::path(
    delete,
    path = "/tokens/{id}",
    tag = "tokens",
    params(TokenParam),
    responses((status = 204, description = "Revoked"))
)]
async fn revoke(State(state): State<ServerState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: TokenId = path_id(&id, "token")?;
    actions::revoke_token(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
