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

use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, ToSchema};

use super::ServerState;
use super::access::{self, Reach, Scope};
use crate::domain::{EndpointId, MessageId, RemovalId, TokenId};
use crate::error::ApiResult;

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

/// This document, with the event-type catalog as it is now in `webhooks`: what this
/// sender's endpoints receive, one webhook per type that is not archived.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn document(
    State(state): State<ServerState>,
    Extension(api): Extension<Arc<OpenApi>>,
) -> ApiResult<Response> {
    // The routes are fixed at start-up, the catalog is not: its part is added per request,
    // which costs a walk over each type's schema, next to serialising the document anyway.
    let published = state.catalog.published();
    if published.is_empty() {
        return Ok(Json(api).into_response());
    }
    let mut doc = serde_json::to_value(&*api).map_err(anyhow::Error::from)?;
    webhooks::publish(&mut doc, &published);
    Ok(Json(doc).into_response())
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

/// The event-type catalog as OpenAPI 3.1 `webhooks`, so that a customer's tooling can
/// generate the types its receiver takes: for each type, the `POST` an endpoint receives,
/// with the body exactly as the worker builds it (`delivery::worker::send`, `envelope`):
/// `{"type": <the type>, "timestamp": <RFC 3339>, "data": <the payload as sent>}`, `data`
/// described by the type's schema, and the Standard Webhooks headers.
///
/// The schemas go in `components/schemas`. OpenAPI 3.1 schemas are JSON Schema 2020-12,
/// but a schema pasted into the document is no longer a resource of its own: its
/// `"$ref": "#/$defs/money"` would resolve against the document's root, which has no
/// `$defs`. Either the embedded schema gets an `$id` (a resource again, resolving its own
/// refs), or its refs are rewritten to where their targets now are. Code generators, the
/// reason these are published, mostly follow refs as JSON pointers into the document and
/// ignore `$id`, so refs are rewritten: a type's schema becomes the component
/// `<type>.data`, each of its `$defs` one of its own, `<type>.<def>.def` (a generator makes
/// a type of each), and every `$ref` to `#…` points where its target now is. A schema that
/// names its parts some other way (an `$id` below its root, `$anchor`, `$dynamicRef`, a
/// `$ref` that is not a JSON pointer into itself) cannot be rewritten as simply: it is
/// published whole, as a resource with an `$id` (under `https://herald.invalid/`, a name
/// that is never fetched), which OpenAPI 3.1 tools that treat components as schemas follow,
/// and which any JSON Schema validator can take on its own. Either way `$schema` is left
/// out: Herald checks every payload as 2020-12 whatever it says, and a subschema that is
/// not a resource root may not carry it.
///
/// The names cannot collide: the routes' components have no `.`, a `.data` name ends in
/// `data` and a `.def` name in `def`, and a def's name is spelt without `.` (`-` and hex
/// for each byte outside `[A-Za-z0-9_]`), so the type's name is what precedes it.
mod webhooks {
    use std::sync::Arc;

    use serde_json::{Map, Value, json};

    use crate::catalog::Entry;

    const ENVELOPE: &str = "The body as sent: its exact bytes are what `webhook-signature` \
                            signs, so verify them before parsing.";

    /// Adds `webhooks`, one per published type, and their schemas to `doc`.
    pub fn publish(doc: &mut Value, published: &[(String, Arc<Entry>)]) {
        let mut webhooks = Map::new();
        let mut schemas = Map::new();
        for (name, entry) in published {
            let data = match &entry.schema {
                Some(schema @ Value::Object(_)) => {
                    let component = add_schema(name, schema, &mut schemas);
                    json!({"$ref": format!("#/components/schemas/{component}")})
                }
                // `true` or `false`.
                Some(schema) => schema.clone(),
                None => json!({"description": "Any JSON: this type has no schema."}),
            };
            webhooks.insert(
                name.clone(),
                json!({ "post": operation(name, entry, data) }),
            );
        }
        doc["webhooks"] = Value::Object(webhooks);
        let components = &mut doc["components"]["schemas"];
        if components.is_null() {
            *components = Value::Object(Map::new());
        }
        if let Value::Object(components) = components {
            components.extend(schemas);
        }
    }

    fn operation(name: &str, entry: &Entry, data: Value) -> Value {
        // Not `additionalProperties: false`: a receiver generated from this document
        // should not refuse a field a later Herald may add.
        let envelope = json!({
            "type": "object",
            "description": ENVELOPE,
            "required": ["type", "timestamp", "data"],
            "properties": {
                "type": {"type": "string", "const": name},
                "timestamp": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the message was accepted (RFC 3339, UTC): the same \
                                    on every attempt."
                },
                "data": data,
            },
        });
        let examples: Map<String, Value> = entry
            .examples
            .iter()
            .enumerate()
            .map(|(i, example)| {
                let value = json!({
                    "type": name,
                    "timestamp": "2026-01-01T12:00:00.000000Z",
                    "data": example,
                });
                (format!("example{}", i + 1), json!({ "value": value }))
            })
            .collect();
        let mut media = json!({ "schema": envelope });
        if !examples.is_empty() {
            media["examples"] = Value::Object(examples);
        }
        let mut operation = json!({
            "parameters": headers(),
            "requestBody": {"required": true, "content": {"application/json": media}},
            "responses": {
                "2XX": {"description": "Received: the delivery succeeded and is not sent again."},
                "410": {"description": "Gone: the endpoint is disabled and sent nothing more."},
                "default": {
                    "description": "Anything else, or no answer in time, fails the attempt \
                                    (redirects are not followed): it is retried later, on \
                                    429, 502, 503 and 504 after `Retry-After` if given."
                },
            },
        });
        let description = entry.description.trim();
        if let Some(summary) = description.lines().next() {
            operation["summary"] = summary.into();
            operation["description"] = description.into();
        }
        if entry.deprecated {
            operation["deprecated"] = true.into();
        }
        operation
    }

    /// The Standard Webhooks headers of every delivery.
    fn headers() -> Value {
        json!([
            {
                "name": "webhook-id",
                "in": "header",
                "required": true,
                "description": "The message's id: the same on every attempt and replay. \
                                Deliveries are at least once: dedupe on it.",
                "schema": {"type": "string", "pattern": "^msg_[0-9a-f]{32}$"},
            },
            {
                "name": "webhook-timestamp",
                "in": "header",
                "required": true,
                "description": "When this attempt was signed, in seconds since the Unix \
                                epoch: new on every attempt. Refuse one far from your clock.",
                "schema": {"type": "integer"},
            },
            {
                "name": "webhook-signature",
                "in": "header",
                "required": true,
                "description": "`v1,` and the base64 HMAC-SHA256 of \
                                `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the \
                                base64-decoded part of the endpoint's secret after `whsec_`; \
                                while a rotated-out secret is still valid, one per secret, \
                                separated by a space.",
                "schema": {
                    "type": "string",
                    "pattern": "^v1,[A-Za-z0-9+/]{43}=( v1,[A-Za-z0-9+/]{43}=)*$",
                },
            },
        ])
    }

    /// Puts the schema of type `name` in `schemas`; answers the component that is its root.
    fn add_schema(name: &str, schema: &Value, schemas: &mut Map<String, Value>) -> String {
        let root = format!("{name}.data");
        let mut rewritten = schema.clone();
        if let Some(top) = rewrite_refs(&mut rewritten, name) {
            // Its `$id` was only the base of the refs now rewritten.
            top.remove("$id");
            top.remove("$schema");
            if let Some(Value::Object(defs)) = top.remove("$defs") {
                for (def, def_schema) in defs {
                    schemas.insert(def_component(name, &def), def_schema);
                }
            }
            schemas.insert(root.clone(), rewritten);
        } else {
            let mut whole = schema.clone();
            if let Value::Object(top) = &mut whole {
                top.remove("$schema");
                top.entry("$id").or_insert_with(|| {
                    format!("https://herald.invalid/event-types/{name}/schema.json").into()
                });
            }
            schemas.insert(root.clone(), whole);
        }
        root
    }

    /// `<type>.<def>.def`, the def's name spelt with `[A-Za-z0-9_]` and `-XX` for each
    /// other byte (`-` alone for an empty name).
    fn def_component(name: &str, def: &str) -> String {
        let mut spelt = String::new();
        for byte in def.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' {
                spelt.push(char::from(byte));
            } else {
                spelt.push_str(&format!("-{byte:02X}"));
            }
        }
        if spelt.is_empty() {
            spelt.push('-');
        }
        format!("{name}.{spelt}.def")
    }

    /// What a `$ref` that can be rewritten points at, in its type's schema.
    enum Target<'a> {
        /// The schema itself (`#`), or somewhere in it outside `$defs`: the pointer after `#`.
        Root(&'a str),
        /// One of its `$defs`, and the pointer within it (empty: the def itself).
        Def(String, &'a str),
    }

    fn target(reference: &str) -> Option<Target<'_>> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(Target::Root(pointer));
        }
        let tokens = pointer.strip_prefix('/')?;
        let (first, after) = tokens.split_once('/').unwrap_or((tokens, ""));
        if unescape(first)? != "$defs" {
            return Some(Target::Root(pointer));
        }
        if after.is_empty() {
            // `$defs` itself, which is no schema.
            return None;
        }
        let (def, rest) = match after.find('/') {
            Some(at) => (&after[..at], &after[at..]),
            None => (after, ""),
        };
        Some(Target::Def(unescape(def)?, rest))
    }

    /// A JSON pointer's token as written in a URI fragment: percent-decoded, then `~1`
    /// and `~0` undone. `None` if it is not UTF-8.
    fn unescape(token: &str) -> Option<String> {
        let bytes = token.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(byte)) => {
                    decoded.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    decoded.push(byte);
                    i += 1;
                }
            }
        }
        let token = String::from_utf8(decoded).ok()?;
        Some(token.replace("~1", "/").replace("~0", "~"))
    }

    /// Points every `$ref` in the schema of type `name` at where its target is published,
    /// and answers its root; `None` if some reference is not a JSON pointer into the schema
    /// resolved against its root (then the rewrite would change what it means).
    fn rewrite_refs<'a>(schema: &'a mut Value, name: &str) -> Option<&'a mut Map<String, Value>> {
        let mut faithful = true;
        each_schema(schema, true, &mut |object, is_root| {
            let named_otherwise = [
                "$anchor",
                "$dynamicAnchor",
                "$dynamicRef",
                "$recursiveAnchor",
                "$recursiveRef",
            ]
            .iter()
            .any(|keyword| object.contains_key(*keyword));
            if named_otherwise || (!is_root && object.contains_key("$id")) {
                faithful = false;
            }
            let rewritten = match object.get("$ref") {
                None => return,
                Some(Value::String(reference)) => match target(reference) {
                    Some(Target::Root(pointer)) => {
                        format!("#/components/schemas/{name}.data{pointer}")
                    }
                    Some(Target::Def(def, pointer)) => {
                        format!(
                            "#/components/schemas/{}{pointer}",
                            def_component(name, &def)
                        )
                    }
                    None => {
                        faithful = false;
                        return;
                    }
                },
                Some(_) => {
                    faithful = false;
                    return;
                }
            };
            object.insert("$ref".into(), rewritten.into());
        });
        match schema {
            Value::Object(top) if faithful => Some(top),
            _ => None,
        }
    }

    /// 2020-12 keywords (and the older `additionalItems`, `definitions`, `dependencies`)
    /// whose value is a schema or an array of schemas...
    const SCHEMA_OR_ARRAY: &[&str] = &[
        "additionalItems",
        "additionalProperties",
        "allOf",
        "anyOf",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "oneOf",
        "prefixItems",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    ];
    /// ...or an object whose values are schemas.
    const SCHEMA_MAP: &[&str] = &[
        "$defs",
        "definitions",
        "dependencies",
        "dependentSchemas",
        "patternProperties",
        "properties",
    ];

    /// Calls `f` on `schema` and on every schema within it, with whether it is the root.
    /// Only the keywords that hold schemas are looked into: `const`, `enum`, `default` or
    /// `examples` are data, and a `$ref` in them is not a reference.
    fn each_schema(
        schema: &mut Value,
        is_root: bool,
        f: &mut impl FnMut(&mut Map<String, Value>, bool),
    ) {
        let Value::Object(object) = schema else {
            return;
        };
        f(object, is_root);
        for (keyword, value) in object.iter_mut() {
            if SCHEMA_OR_ARRAY.contains(&keyword.as_str()) {
                match value {
                    Value::Array(schemas) => {
                        for schema in schemas {
                            each_schema(schema, false, f);
                        }
                    }
                    schema => each_schema(schema, false, f),
                }
            } else if SCHEMA_MAP.contains(&keyword.as_str())
                && let Value::Object(schemas) = value
            {
                for schema in schemas.values_mut() {
                    each_schema(schema, false, f);
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn entry(schema: Value) -> Arc<Entry> {
            Arc::new(Entry {
                archived: false,
                validator: None,
                description: String::new(),
                schema: Some(schema),
                examples: vec![],
                deprecated: false,
            })
        }

        /// `doc` with the type `name` published, and a validator of its webhook's body that
        /// resolves refs as the document does.
        fn published(name: &str, schema: Value) -> (Value, jsonschema::Validator) {
            let mut doc = json!({"openapi": "3.1.0", "components": {"schemas": {}}});
            publish(&mut doc, &[(name.to_owned(), entry(schema))]);
            let mut root = doc.clone();
            root["$ref"] =
                format!("#/webhooks/{name}/post/requestBody/content/application~1json/schema")
                    .into();
            let validator = jsonschema::draft202012::new(&root).expect("the document compiles");
            (doc, validator)
        }

        fn body(name: &str, data: Value) -> Value {
            json!({"type": name, "timestamp": "2026-01-01T00:00:00Z", "data": data})
        }

        #[test]
        fn pointer_refs_point_where_their_targets_are_published() {
            let (doc, validator) = published(
                "order.placed",
                json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "$id": "https://example.com/order.json",
                    "type": "object",
                    "required": ["total", "lines"],
                    "properties": {
                        "total": {"$ref": "#/$defs/money"},
                        "lines": {"type": "array", "items": {"$ref": "#/$defs/line%20item"}},
                        "refund": {"$ref": "#/properties/total"},
                        "parent": {"$ref": "#"},
                        "note": {"const": {"$ref": "#/$defs/money"}},
                    },
                    "$defs": {
                        "money": {"type": "integer", "minimum": 0},
                        "line item": {
                            "type": "object",
                            "required": ["price"],
                            "properties": {"price": {"$ref": "#/$defs/money"}},
                        },
                    },
                }),
            );
            let schemas = &doc["components"]["schemas"];
            let root = &schemas["order.placed.data"];
            assert!(root.get("$defs").is_none() && root.get("$schema").is_none());
            assert_eq!(
                root["properties"]["total"]["$ref"],
                "#/components/schemas/order.placed.money.def"
            );
            assert_eq!(
                root["properties"]["note"]["const"],
                json!({"$ref": "#/$defs/money"}),
                "data is not a reference"
            );
            assert!(schemas.get("order.placed.line-20item.def").is_some());

            let order = |total: i64, price: i64| json!({"total": total, "lines": [{"price": price}], "parent": {"total": 1, "lines": []}});
            let note = json!({"$ref": "#/$defs/money"});
            let mut good = order(5, 5);
            good["note"] = note;
            assert!(validator.is_valid(&body("order.placed", good)));
            assert!(!validator.is_valid(&body("order.placed", order(-1, 5))));
            assert!(
                !validator.is_valid(&body("order.placed", order(5, -1))),
                "a def's own ref"
            );
            let mut bad_parent = order(5, 5);
            bad_parent["parent"]["total"] = json!(-1);
            assert!(
                !validator.is_valid(&body("order.placed", bad_parent)),
                "`#`"
            );
            let mut bad_refund = order(5, 5);
            bad_refund["refund"] = json!(-1);
            assert!(!validator.is_valid(&body("order.placed", bad_refund)));
            assert!(
                !validator.is_valid(&body("order.voided", order(5, 5))),
                "the type"
            );
        }

        #[test]
        fn a_schema_with_anchors_is_published_whole_with_an_id() {
            let mut doc = json!({"openapi": "3.1.0", "components": {"schemas": {}}});
            let schema = json!({
                "type": "object",
                "properties": {"age": {"$ref": "#age"}},
                "$defs": {"age": {"$anchor": "age", "type": "integer", "minimum": 0}},
            });
            publish(&mut doc, &[("user.created".into(), entry(schema))]);
            let data = &doc["webhooks"]["user.created"]["post"]["requestBody"]["content"]["application/json"]
                ["schema"]["properties"]["data"];
            assert_eq!(data["$ref"], "#/components/schemas/user.created.data");
            // A resource of its own: its refs resolve within it wherever it is.
            let root = &doc["components"]["schemas"]["user.created.data"];
            assert_eq!(
                root["$id"],
                "https://herald.invalid/event-types/user.created/schema.json"
            );
            assert_eq!(root["properties"]["age"]["$ref"], "#age");
            let validator = jsonschema::draft202012::new(root).unwrap();
            assert!(validator.is_valid(&json!({"age": 3})));
            assert!(!validator.is_valid(&json!({"age": -3})));
        }

        #[test]
        fn a_type_without_a_schema_takes_any_data() {
            let mut doc = json!({"openapi": "3.1.0", "components": {"schemas": {}}});
            let untyped = Arc::new(Entry {
                archived: false,
                validator: None,
                description: "Something happened.\nIn detail.".into(),
                schema: None,
                examples: vec![json!([1])],
                deprecated: true,
            });
            publish(&mut doc, &[("any.thing".into(), untyped)]);
            let post = &doc["webhooks"]["any.thing"]["post"];
            assert_eq!(post["summary"], "Something happened.");
            assert_eq!(post["deprecated"], true);
            let media = &post["requestBody"]["content"]["application/json"];
            assert_eq!(media["examples"]["example1"]["value"]["data"], json!([1]));
            assert_eq!(doc["components"]["schemas"], json!({}));
        }

        #[test]
        fn def_names_cannot_collide() {
            assert_eq!(def_component("a", "b.c"), "a.b-2Ec.def");
            assert_eq!(def_component("a", ""), "a.-.def");
            assert_ne!(def_component("a.b", "c"), def_component("a", "b.c"));
        }
    }
}
