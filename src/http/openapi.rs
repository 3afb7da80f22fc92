//! `GET /api/v1/openapi.json`: the API as an OpenAPI 3.1 document, generated from the
//! handlers themselves. Every route is registered through `utoipa_axum::routes!`, which
//! adds the handler to the router and its `#[utoipa::path]` to the document in one step, so
//! the two cannot drift apart.
//!
//! The error answers that follow from how a request is taken apart (a path that names
//! nothing, a body that does not parse, a missing token, ...) are the same for every
//! operation; `finish` adds them from what each operation takes, so handlers declare only
//! their successes and their own refusals.

use std::sync::Arc;

use axum::{Extension, Json};
use serde::Serialize;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, ToSchema};

use crate::domain::{EndpointId, MessageId, RemovalId, TokenId};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Reliable webhook delivery: applications, their endpoints, messages \
                       fanned out to every subscribed endpoint, and each delivery attempt.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminToken),
    security(("admin_token" = [])),
)]
pub struct ApiDoc;

/// Every 4xx and 5xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: `bad_request`, `invalid`, `not_found`, `conflict`, ...
    code: String,
    /// For a person; never contains secrets.
    message: String,
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn document(Extension(api): Extension<Arc<OpenApi>>) -> Json<Arc<OpenApi>> {
    Json(api)
}

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds to every operation the errors its inputs can cause, unless it says otherwise.
pub fn finish(mut api: OpenApi) -> OpenApi {
    for item in api.paths.paths.values_mut() {
        for operation in operations(item) {
            // Operations that say nothing about security need the admin token.
            let authenticated = operation.security.is_none();
            let mut errors = vec![];
            if authenticated {
                errors.push((401, "The admin token is missing or wrong."));
                errors.push((
                    429,
                    "Too many wrong tokens from this address: nothing is checked from it \
                     until `Retry-After` seconds have passed.",
                ));
                errors.push((
                    503,
                    "The database is unavailable. A write may have been committed before the \
                     connection failed: retry a send with the same Idempotency-Key.",
                ));
            }
            let takes = |place: ParameterIn| {
                operation.parameters.iter().flatten().any(|p| match p {
                    RefOr::T(p) => p.parameter_in == place,
                    RefOr::Ref(_) => false,
                })
            };
            if takes(ParameterIn::Path) {
                errors.push((404, "Nothing by that id (or uid) exists here."));
            }
            if takes(ParameterIn::Query) || takes(ParameterIn::Header) {
                errors.push((400, "A parameter is malformed."));
            }
            if operation.request_body.is_some() {
                errors.push((400, "The body is not JSON."));
                errors.push((413, "The body or its payload is too large."));
                errors.push((415, "The body is not sent as application/json."));
                errors.push((422, "The body is JSON but a field is invalid."));
            }
            for (status, description) in errors {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description));
            }
        }
    }
    api
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                ))))
                .build(),
        )
        .into()
}

// The path parameters, described once. The handlers take them as plain strings (a segment
// that cannot be an id names nothing: 404), so these types only document them.

/// `{app}`.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AppParam {
    /// The application's id (`app_…`) or its uid.
    app: String,
}

/// `{app}` and `{ep}`.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointParams {
    /// The application's id (`app_…`) or its uid.
    app: String,
    /// The endpoint's id.
    ep: EndpointId,
}

/// `{id}` of a token.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenParam {
    /// The token's id (not its secret).
    id: TokenId,
}

/// `{id}` of a removal.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RemovalParam {
    /// The removal's id.
    id: RemovalId,
}

/// `{app}` and `{msg}`.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessageParams {
    /// The application's id (`app_…`) or its uid.
    app: String,
    /// The message's id.
    msg: MessageId,
}

/// `limit` and `cursor` of a list, with the pattern of its cursor.
macro_rules! list_params {
    ($name:ident, $pattern:literal) => {
        #[allow(dead_code)]
        #[derive(utoipa::IntoParams)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            /// Items per page, 1 to 250 (default 50).
            #[param(minimum = 1, maximum = 250)]
            limit: Option<i64>,
            /// The `next_cursor` of the previous page; empty: the first page.
            #[param(pattern = $pattern)]
            cursor: Option<String>,
        }
    };
}

list_params!(AppsList, "^(app_[0-9a-fA-F]{32})?$");
list_params!(EndpointsList, "^(ep_[0-9a-fA-F]{32})?$");
list_params!(MessagesList, "^(msg_[0-9a-fA-F]{32})?$");
list_params!(AttemptsList, "^(atm_[0-9a-fA-F]{32})?$");
