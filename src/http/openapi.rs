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

use axum::http::Method;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, ToSchema};

use super::access::{self, Reach, Scope};
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
    modifiers(&BearerToken),
    security(("bearer" = [])),
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

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "`HERALD_ADMIN_TOKEN`, which may do everything, or an API token (`hrld_…`, from \
             `POST /tokens`) with scopes and perhaps one application. Each operation lists \
             the scope it needs (OpenAPI 3.1 role names; `admin` implies every scope), and \
             says in `x-herald-reach` how an application-bound token is held to its \
             application: `path` (another application's ids answer 404), `narrowed` (the \
             answer holds only its application's) or `operator` (the admin token, or a token \
             with the admin scope and no application, only)."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// States what each operation needs (from `access::ROUTES`), and adds to every operation
/// the errors its inputs can cause, unless it says otherwise.
pub fn finish(mut api: OpenApi) -> OpenApi {
    for (path, item) in api.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            // Operations that say nothing about security need a token.
            let authenticated = operation.security.is_none();
            let mut errors = vec![];
            if authenticated {
                let need = access::need(&method, path.strip_prefix("/api/v1").unwrap_or(path));
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    need.scope.map(Scope::as_str),
                )]);
                let reach = match need.reach {
                    Reach::Path => "path",
                    Reach::Narrowed => "narrowed",
                    Reach::Operator => "operator",
                    Reach::Shared => "shared",
                };
                let extensions = ExtensionsBuilder::new()
                    .add("x-herald-scope", need.scope.map_or("any", Scope::as_str))
                    .add("x-herald-reach", reach)
                    .build();
                operation
                    .extensions
                    .get_or_insert_with(Default::default)
                    .merge(extensions);
                errors.push((401, "The token is missing, wrong, revoked or expired."));
                errors.push((
                    403,
                    "The token lacks the scope this operation needs, or it is bound to an \
                     application and this operation is the operator's.",
                ));
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

fn operations(item: &mut PathItem) -> impl Iterator<Item = (Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::PATCH, &mut item.patch),
        (Method::HEAD, &mut item.head),
        (Method::OPTIONS, &mut item.options),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_mut()?)))
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
list_params!(EventTypesList, "^([A-Za-z0-9_.-]{1,256})?$");

/// `{name}` of an event type.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EventTypeParam {
    /// The event type's name, e.g. `invoice.paid`.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,256}$")]
    name: String,
}
