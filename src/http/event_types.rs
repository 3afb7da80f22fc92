//! `/event-types`: the catalog of the events this sender publishes (issue 17), each with a
//! description, an optional JSON Schema (2020-12) and examples. A schema is checked when it
//! is stored, against the 2020-12 meta-schema and by compiling it (a `$ref` that cannot be
//! resolved, a pattern that is not a regular expression), and every example against it:
//! what is refused says where.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ServerState;
use super::openapi::{ErrorBody, EventTypeParam, EventTypesList};
use super::paging::ListQuery;
use crate::db::event_types::{EventTypeFields, EventTypeRow};
use crate::db::{self, Listing};
use crate::domain::EventType;
use crate::error::{ApiError, ApiResult, Json, JsonObject};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
}

/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 4096;
/// Most examples one type keeps.
const MAX_EXAMPLES: usize = 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEventType {
    /// `[A-Za-z0-9_.-]`, 1 to 256 characters, e.g. `invoice.paid`.
    #[schema(value_type = EventType)]
    name: String,
    #[schema(max_length = 4096)]
    description: Option<String>,
    /// A JSON Schema (2020-12) that every payload of this type must satisfy: an object, or
    /// `true`/`false`.
    #[schema(schema_with = schema_value)]
    schema: Option<Value>,
    /// Example payloads; each must satisfy the schema.
    #[schema(value_type = Option<Vec<serde_json::Value>>, max_items = 20)]
    examples: Option<Vec<Value>>,
    deprecated: Option<bool>,
    archived: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateEventType {
    #[schema(max_length = 4096)]
    description: Option<String>,
    /// `null` removes the schema.
    #[serde(default, deserialize_with = "crate::http::present")]
    #[schema(schema_with = schema_value)]
    schema: Option<Option<Value>>,
    #[schema(value_type = Option<Vec<serde_json::Value>>, max_items = 20)]
    examples: Option<Vec<Value>>,
    deprecated: Option<bool>,
    archived: Option<bool>,
}

/// How the document describes a JSON Schema value: an object or a boolean, or `null`.
pub fn schema_value() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Object,
            Type::Boolean,
            Type::Null,
        ]))
        .build()
}

/// Where in a document a validation error is, as a JSON pointer (`/` for the whole).
pub fn location(e: &jsonschema::ValidationError<'_>) -> String {
    let at = e.instance_path().to_string();
    if at.is_empty() { "/".to_owned() } else { at }
}

/// Refuses a schema that is not a usable JSON Schema 2020-12, saying where.
pub fn check_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
        let at = location(&e);
        return Err(format!(
            "schema is not a valid JSON Schema (2020-12) at {at}: {e}"
        ));
    }
    jsonschema::draft202012::new(schema).map_err(|e| format!("schema cannot be used: {e}"))
}

/// Checks the fields that are set, and the examples against the schema they will have.
fn check(
    fields: &EventTypeFields,
    schema_after: Option<&Value>,
    examples_after: &[Value],
) -> ApiResult<()> {
    if let Some(d) = &fields.description
        && d.chars().count() > MAX_DESCRIPTION
    {
        return Err(ApiError::Invalid(format!(
            "description must be at most {MAX_DESCRIPTION} characters"
        )));
    }
    if examples_after.len() > MAX_EXAMPLES {
        return Err(ApiError::Invalid(format!(
            "at most {MAX_EXAMPLES} examples"
        )));
    }
    let Some(schema) = schema_after else {
        return Ok(());
    };
    let validator = check_schema(schema).map_err(ApiError::Invalid)?;
    for (i, example) in examples_after.iter().enumerate() {
        if let Err(e) = validator.validate(example) {
            let at = location(&e);
            return Err(ApiError::Invalid(format!(
                "examples[{i}] does not match the schema at {at}: {e}"
            )));
        }
    }
    Ok(())
}

/// Commits a change of the catalog with its announcement, then reads it again here at once
/// (every other process does on the notice). A reload that fails after the commit is
/// logged, not answered: the change is made, and the next poll catches up.
async fn changed(
    state: &ServerState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
) -> ApiResult<()> {
    crate::catalog::announce(&mut *tx).await?;
    tx.commit().await?;
    if let Err(e) = state.catalog.reload(&state.pool).await {
        tracing::warn!(error = %e, "event-type catalog not reloaded after a change");
    }
    Ok(())
}

/// Adds an event type to the catalog.
#[utoipa::path(
    post,
    path = "/event-types",
    tag = "event types",
    request_body = CreateEventType,
    responses(
        (status = 201, body = EventTypeRow),
        (status = 409, body = ErrorBody, description = "An event type of this name exists."),
    )
)]
async fn create(
    State(state): State<ServerState>,
    JsonObject(body): JsonObject<CreateEventType>,
) -> ApiResult<(StatusCode, Json<EventTypeRow>)> {
    let name = EventType::parse(&body.name)
        .map_err(|e| ApiError::Invalid(e.replacen("event_type", "name", 1)))?;
    let fields = EventTypeFields {
        description: body.description,
        schema: Some(body.schema),
        examples: body.examples,
        deprecated: body.deprecated,
        archived: body.archived,
    };
    let schema = fields.schema.clone().flatten();
    let examples = fields.examples.clone().unwrap_or_default();
    check(&fields, schema.as_ref(), &examples)?;
    let mut tx = state.pool.begin().await?;
    let row = db::event_types::create(&mut *tx, name.as_str(), fields)
        .await
        .map_err(|e| ApiError::from_db(e, |_| "an event type of this name exists".into()))?;
    changed(&state, tx).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// The catalog, by name.
#[utoipa::path(
    get,
    path = "/event-types",
    tag = "event types",
    params(EventTypesList),
    responses((status = 200, body = Listing<EventTypeRow>))
)]
async fn list(
    State(state): State<ServerState>,
    ListQuery { limit, cursor }: ListQuery<String>,
) -> ApiResult<Json<Listing<EventTypeRow>>> {
    if let Some(c) = &cursor
        && EventType::parse(c).is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "cursor {c:?} is not an event type's name"
        )));
    }
    let rows = db::event_types::list(&state.pool, cursor.as_deref(), limit).await?;
    Ok(Json(Listing::from_rows(rows, limit, |t| t.name.clone())))
}

async fn find(state: &ServerState, name: &str) -> ApiResult<EventTypeRow> {
    if EventType::parse(name).is_err() {
        return Err(ApiError::NotFound("event type"));
    }
    db::event_types::find(&state.pool, name)
        .await?
        .ok_or(ApiError::NotFound("event type"))
}

/// One event type.
#[utoipa::path(
    get,
    path = "/event-types/{name}",
    tag = "event types",
    params(EventTypeParam),
    responses((status = 200, body = EventTypeRow))
)]
async fn show(
    State(state): State<ServerState>,
    Path(name): Path<String>,
) -> ApiResult<Json<EventTypeRow>> {
    Ok(Json(find(&state, &name).await?))
}

/// Changes an event type: its examples are checked against the schema it will have.
#[utoipa::path(
    patch,
    path = "/event-types/{name}",
    tag = "event types",
    params(EventTypeParam),
    request_body = UpdateEventType,
    responses((status = 200, body = EventTypeRow))
)]
async fn update(
    State(state): State<ServerState>,
    Path(name): Path<String>,
    JsonObject(body): JsonObject<UpdateEventType>,
) -> ApiResult<Json<EventTypeRow>> {
    let current = find(&state, &name).await?;
    let fields = EventTypeFields {
        description: body.description,
        schema: body.schema,
        examples: body.examples,
        deprecated: body.deprecated,
        archived: body.archived,
    };
    let schema = match &fields.schema {
        Some(next) => next.clone(),
        None => current.schema.map(|s| s.0),
    };
    let examples = fields.examples.clone().unwrap_or(current.examples.0);
    check(&fields, schema.as_ref(), &examples)?;
    let mut tx = state.pool.begin().await?;
    let row = db::event_types::update(&mut *tx, &name, fields)
        .await?
        .ok_or(ApiError::NotFound("event type"))?;
    changed(&state, tx).await?;
    Ok(Json(row))
}

/// Removes an event type from the catalog (messages already sent keep their type). To stop
/// sends of a type while keeping it in the catalog, archive it instead.
#[utoipa::path(
    delete,
    path = "/event-types/{name}",
    tag = "event types",
    params(EventTypeParam),
    responses((status = 204, description = "Removed"))
)]
async fn remove(
    State(state): State<ServerState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    find(&state, &name).await?;
    let mut tx = state.pool.begin().await?;
    if !db::event_types::delete(&mut *tx, &name).await? {
        return Err(ApiError::NotFound("event type"));
    }
    changed(&state, tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
