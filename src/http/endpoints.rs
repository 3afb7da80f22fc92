use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer, Serialize};

use super::{AppState, path_id};
use crate::db::attempts::{Attempt, Of};
use crate::db::endpoints::{Endpoint, EndpointFields};
use crate::db::{self, Page, PageParams};
use crate::domain::{AttemptId, EndpointId, EndpointUrl, EventType, SigningSecret};
use crate::error::{AppError, AppResult, Json, Query};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/apps/{app}/endpoints", post(create).get(list))
        .route(
            "/apps/{app}/endpoints/{ep}",
            get(show).patch(update).delete(remove),
        )
        .route("/apps/{app}/endpoints/{ep}/secret", get(secret))
        .route("/apps/{app}/endpoints/{ep}/secret/rotate", post(rotate))
        .route("/apps/{app}/endpoints/{ep}/attempts", get(attempts))
        .route("/apps/{app}/endpoints/{ep}/recover", post(recover))
}

/// Create and update share one body; on update every field is optional.
#[derive(Deserialize, Default)]
struct EndpointBody {
    url: Option<String>,
    description: Option<String>,
    event_types: Option<Vec<String>>,
    secret: Option<String>,
    disabled: Option<bool>,
    /// `null` on update returns to the server default.
    #[serde(default, deserialize_with = "present")]
    max_in_flight: Option<Option<i32>>,
    headers: Option<BTreeMap<String, String>>,
}

/// Tells "absent" (None) from "null" (Some(None)).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl EndpointBody {
    fn into_fields(self, allow_private: bool) -> AppResult<EndpointFields> {
        let url = self
            .url
            .map(|u| EndpointUrl::parse(&u, allow_private).map(|u| u.to_string()))
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
        if let Some(headers) = &self.headers {
            validate_headers(headers)?;
        }
        Ok(EndpointFields {
            url,
            description: self.description,
            event_types,
            disabled: self.disabled,
            max_in_flight: self.max_in_flight,
            headers: self.headers,
        })
    }
}

fn validate_headers(headers: &BTreeMap<String, String>) -> AppResult<()> {
    if headers.len() > 20 {
        return Err(AppError::Invalid("at most 20 custom headers".into()));
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let reserved = lower.starts_with("webhook-")
            || matches!(
                lower.as_str(),
                "content-type" | "content-length" | "host" | "transfer-encoding" | "connection"
            );
        if reserved {
            return Err(AppError::Invalid(format!(
                "header {name:?} is set by Herald"
            )));
        }
        if HeaderName::from_bytes(name.as_bytes()).is_err() || HeaderValue::from_str(value).is_err()
        {
            return Err(AppError::Invalid(format!(
                "header {name:?} is not a valid HTTP header"
            )));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct WithSecret {
    #[serde(flatten)]
    endpoint: Endpoint,
    secret: String,
}

async fn create(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Json(mut body): Json<EndpointBody>,
) -> AppResult<(StatusCode, Json<WithSecret>)> {
    let app_id = state.app_id(&app).await?;
    if body.url.is_none() {
        return Err(AppError::Invalid("url is required".into()));
    }
    let secret = match body.secret.take() {
        Some(s) => SigningSecret::parse(&s).map_err(AppError::Invalid)?,
        None => SigningSecret::generate(),
    };
    let fields = body.into_fields(state.config.allow_private_targets)?;
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

async fn list(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<PageParams>,
) -> AppResult<Json<Page<Endpoint>>> {
    let app_id = state.app_id(&app).await?;
    let limit = page.limit().map_err(AppError::BadRequest)?;
    let after = page.cursor::<EndpointId>().map_err(AppError::BadRequest)?;
    let rows = db::endpoints::list(&state.pool, app_id, after, limit).await?;
    Ok(Json(Page::from_rows(rows, limit, |e| e.id.to_string())))
}

async fn find(state: &AppState, app: &str, ep: &str) -> AppResult<Endpoint> {
    let app_id = state.app_id(app).await?;
    let id = path_id(ep, "endpoint")?;
    db::endpoints::find(&state.pool, app_id, id)
        .await?
        .ok_or(AppError::NotFound("endpoint"))
}

async fn show(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
) -> AppResult<Json<Endpoint>> {
    Ok(Json(find(&state, &app, &ep).await?))
}

async fn update(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    Json(body): Json<EndpointBody>,
) -> AppResult<Json<Endpoint>> {
    let endpoint = find(&state, &app, &ep).await?;
    if body.secret.is_some() {
        return Err(AppError::Invalid(
            "secret cannot be patched; use POST .../secret/rotate".into(),
        ));
    }
    let fields = body.into_fields(state.config.allow_private_targets)?;
    db::endpoints::update(&state.pool, endpoint.app_id, endpoint.id, fields)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("endpoint"))
}

async fn remove(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    let endpoint = find(&state, &app, &ep).await?;
    db::endpoints::delete(&state.pool, endpoint.app_id, endpoint.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct SecretAnswer {
    secret: String,
}

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

#[derive(Deserialize, Default)]
struct RotateBody {
    secret: Option<String>,
}

/// The new secret signs from now on; the old one keeps signing alongside it for the grace
/// period, so receivers can switch without dropping a single webhook.
async fn rotate(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> AppResult<Json<SecretAnswer>> {
    let endpoint = find(&state, &app, &ep).await?;
    // The body is optional: empty means "generate one for me".
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(e.to_string()))?
    };
    let secret = match body.secret {
        Some(s) => SigningSecret::parse(&s).map_err(AppError::Invalid)?,
        None => SigningSecret::generate(),
    };
    rotate_to(&state, endpoint.id, &secret).await?;
    Ok(Json(SecretAnswer {
        secret: secret.expose().to_owned(),
    }))
}

async fn attempts(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    Query(page): Query<PageParams>,
) -> AppResult<Json<Page<Attempt>>> {
    let endpoint = find(&state, &app, &ep).await?;
    let limit = page.limit().map_err(AppError::BadRequest)?;
    let before = page.cursor::<AttemptId>().map_err(AppError::BadRequest)?;
    let rows = db::attempts::list(
        &state.pool,
        endpoint.app_id,
        Of::Endpoint(endpoint.id),
        before,
        limit,
    )
    .await?;
    Ok(Json(Page::from_rows(rows, limit, |a| a.id.to_string())))
}

/// Makes `secret` the endpoint's signing secret; the old one keeps signing for the grace
/// period. Shared with the dashboard's rotate button.
pub(super) async fn rotate_to(
    state: &AppState,
    endpoint: EndpointId,
    secret: &SigningSecret,
) -> AppResult<()> {
    let mut tx = state.pool.begin().await?;
    db::endpoints::rotate_secret(&mut tx, endpoint, secret, state.config.secret_grace_period)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Deserialize)]
struct RecoverBody {
    since: String,
    until: Option<String>,
}

#[derive(Serialize)]
struct Recovering {
    /// Dead deliveries in the window, all of which are being queued again.
    queued: i32,
    recovery_id: String,
}

/// Sends again every dead delivery of the endpoint created in `[since, until)`. Answers at
/// once; the deliveries are queued in the background, in batches, and a restart part-way
/// does not lose the rest.
async fn recover(
    State(state): State<AppState>,
    Path((app, ep)): Path<(String, String)>,
    Json(body): Json<RecoverBody>,
) -> AppResult<(StatusCode, Json<Recovering>)> {
    let endpoint = find(&state, &app, &ep).await?;
    let (since, until) = super::admin_ws::parse_window(Some(&body.since), body.until.as_deref())
        .map_err(AppError::Invalid)?;
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
