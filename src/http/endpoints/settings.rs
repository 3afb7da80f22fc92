//! What an endpoint's create and update take, and how it is checked before it is stored:
//! the settings both share, the URL, event types, limits and custom headers.

use std::collections::BTreeMap;

use axum::http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::catalog::Catalog;
use crate::db::endpoints::{EndpointFields, REDACTED};
use crate::domain::{EndpointUrl, SigningSecret, refused_header, routing};
use crate::error::{ApiError, ApiResult};

/// What create and update share; on update every field is optional.
#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct EndpointSettings {
    #[schema(max_length = 1024)]
    description: Option<String>,
    /// Event types this endpoint receives: names (`invoice.paid`), prefixes ending in `.*`
    /// (`invoice.*`: every type that starts with `invoice.`) or `*`; at most 100. Empty or
    /// absent: all of them.
    #[schema(value_type = Option<Vec<String>>, max_items = 100, examples(json!(["invoice.*", "customer.created"])))]
    event_types: Option<Vec<String>>,
    /// Channels this endpoint receives: a message reaches it only if it carries one of
    /// them. Empty or absent: every message, whatever its channels. At most 100, each 1 to
    /// 128 characters of `[A-Za-z0-9_.:-]`.
    #[schema(max_items = 100, examples(json!(["eu", "acct:42"])))]
    channels: Option<Vec<String>>,
    /// A JSON object the payload must contain (PostgreSQL's `@>`: `{"region": "eu"}` takes
    /// payloads whose `region` is `"eu"`), at most 4096 bytes as JSON; `null`: none.
    #[serde(default, deserialize_with = "crate::http::present")]
    #[schema(value_type = Option<Object>)]
    filter: Option<Option<serde_json::Value>>,
    disabled: Option<bool>,
    /// Requests in flight at once to this endpoint; `null` takes the server default.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 1000)]
    max_in_flight: Option<Option<i32>>,
    /// Requests per second this endpoint receives at most, across every Herald process,
    /// retries included; bursts up to one second's worth. `null`: unlimited.
    #[serde(default, deserialize_with = "present_whole")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 10000)]
    rate_limit: Option<Option<i32>>,
    /// Sent with every request; `webhook-*`, `content-type` and the like are Herald's.
    #[schema(schema_with = headers_schema)]
    headers: Option<BTreeMap<String, String>>,
}

/// Up to 20 headers; names are HTTP tokens of at most 256 bytes, values visible ASCII of
/// at most 4096 bytes, 6144 bytes in all. Hop-by-hop headers and Herald's own are refused.
/// `null`: unchanged.
fn headers_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let string = |pattern: &str, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .max_length(Some(max))
    };
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(MAX_HEADERS))
        .property_names(Some(
            string("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", MAX_HEADER_NAME).build(),
        ))
        .additional_properties(Some(string("^[\\t\\x20-\\x7e]*$", MAX_HEADER_VALUE)))
        .build()
}

/// An endpoint to create. The signing secret is generated unless given.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateEndpoint {
    #[schema(format = Uri, max_length = 2048, examples("https://example.com/webhooks"))]
    pub(super) url: String,
    /// `whsec_` and the standard base64 of 24 to 64 bytes.
    #[schema(value_type = Option<SigningSecret>)]
    pub(super) secret: Option<String>,
    #[serde(flatten)]
    pub(super) settings: EndpointSettings,
}

/// Changes to an endpoint: fields left out stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateEndpoint {
    #[schema(format = Uri, max_length = 2048, examples("https://example.com/webhooks"))]
    pub(super) url: Option<String>,
    /// Not patchable; present only to say so (`POST .../secret/rotate` changes it).
    #[schema(ignore)]
    pub(super) secret: Option<serde_json::Value>,
    #[serde(flatten)]
    pub(super) settings: EndpointSettings,
}

/// Tells "absent" (None) from "null" (Some(None)), for a whole number: as in JSON Schema,
/// `119.0` is the integer 119.
fn present_whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i32>>, D::Error> {
    let Some(n) = Option::<f64>::deserialize(d)? else {
        return Ok(Some(None));
    };
    if n.fract() != 0.0 || n < f64::from(i32::MIN) || n > f64::from(i32::MAX) {
        return Err(serde::de::Error::custom(format!(
            "expected a whole number, found {n}"
        )));
    }
    // Exact: a whole number within i32's range.
    Ok(Some(Some(n as i32)))
}

/// Who sets an endpoint's URL, with whether they may aim it at a private address
/// (`HERALD_ALLOW_PRIVATE_TARGETS` for the API, `HERALD_PORTAL_ALLOW_PRIVATE_TARGETS` for
/// the portal). The worker asks the same of the URL when it sends, so that a host name
/// resolving to a private address is refused to a portal customer too.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UrlBy {
    Api { allow_private: bool },
    Portal { allow_private: bool },
}

impl UrlBy {
    fn allow_private(self) -> bool {
        match self {
            Self::Api { allow_private } | Self::Portal { allow_private } => allow_private,
        }
    }
}

impl EndpointSettings {
    /// What the customer portal's endpoint form sets: its description, event types and
    /// rate limit (`None`: unlimited).
    pub(crate) fn from_portal(
        description: String,
        event_types: Vec<String>,
        rate_limit: Option<i32>,
    ) -> Self {
        Self {
            description: Some(description),
            event_types: Some(event_types),
            rate_limit: Some(rate_limit),
            ..Self::default()
        }
    }

    /// Checks every setting given. With `catalog` (`HERALD_REQUIRE_EVENT_TYPES`), each event
    /// type named without a wildcard must be in it and not archived. `by` is who sets the
    /// URL, which says whether it may aim at a private address.
    pub(crate) fn into_fields(
        self,
        url: Option<&str>,
        by: UrlBy,
        catalog: Option<&Catalog>,
    ) -> ApiResult<EndpointFields> {
        let allow_private = by.allow_private();
        let url = url
            .map(|u| EndpointUrl::parse(u, allow_private).map(|u| u.to_string()))
            .transpose()
            .map_err(ApiError::Invalid)?;
        let event_types = self
            .event_types
            .map(|types| routing::event_type_patterns(&types))
            .transpose()
            .map_err(ApiError::Invalid)?;
        if let (Some(catalog), Some(types)) = (catalog, &event_types) {
            for name in types.iter().filter(|t| !t.ends_with('*')) {
                catalog.usable(name, true).map_err(ApiError::Invalid)?;
            }
        }
        let channels = self
            .channels
            .map(|c| routing::channels(&c, routing::MAX_ENDPOINT_CHANNELS))
            .transpose()
            .map_err(ApiError::Invalid)?;
        if let Some(Some(filter)) = &self.filter {
            routing::filter(filter).map_err(ApiError::Invalid)?;
        }
        // `{}` is contained by every object but by no other payload: as good as no filter
        // for the objects it means, and surprising for the rest.
        let filter = self
            .filter
            .map(|f| f.filter(|f| f.as_object().is_some_and(|o| !o.is_empty())));
        if let Some(d) = &self.description
            && d.chars().count() > 1024
        {
            return Err(ApiError::Invalid(
                "description must be at most 1024 characters".into(),
            ));
        }
        if let Some(Some(n)) = self.max_in_flight
            && !(1..=1000).contains(&n)
        {
            return Err(ApiError::Invalid(
                "max_in_flight must be between 1 and 1000".into(),
            ));
        }
        if let Some(Some(n)) = self.rate_limit
            && !(1..=10_000).contains(&n)
        {
            return Err(ApiError::Invalid(
                "rate_limit must be between 1 and 10000 requests per second".into(),
            ));
        }
        if let Some(headers) = &self.headers {
            validate_headers(headers)?;
        }
        Ok(EndpointFields {
            url,
            url_by_portal: matches!(by, UrlBy::Portal { .. }),
            description: self.description,
            event_types,
            channels,
            filter,
            disabled: self.disabled,
            max_in_flight: self.max_in_flight,
            rate_limit: self.rate_limit,
            headers: self.headers,
        })
    }
}

/// Most custom headers an endpoint may have.
const MAX_HEADERS: usize = 20;
/// Longest header name, in bytes.
const MAX_HEADER_NAME: usize = 256;
/// Longest header value, in bytes: room for any bearer token or JWT, not for a payload.
const MAX_HEADER_VALUE: usize = 4096;
/// All names and values together, in bytes: well under what servers accept in a request's
/// headers (8 KiB and up) once Herald's own are added.
const MAX_HEADERS_TOTAL: usize = 6144;

fn validate_headers(headers: &BTreeMap<String, String>) -> ApiResult<()> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::Invalid(format!(
            "at most {MAX_HEADERS} custom headers"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        if let Some(why) = refused_header(name) {
            return Err(ApiError::Invalid(format!("header {name:?} {why}")));
        }
        // Header names are case-insensitive: two spellings of one name would reach the
        // receiver as one, silently.
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ApiError::Invalid(format!(
                "header {name:?} is given twice (names are case-insensitive)"
            )));
        }
        if value == REDACTED {
            return Err(ApiError::Invalid(format!(
                "header {name:?} has the value {REDACTED:?} that reads show in place of every \
                 value: send the real value (GET .../headers shows them), or leave headers out \
                 to keep them as they are"
            )));
        }
        if name.len() > MAX_HEADER_NAME {
            return Err(ApiError::Invalid(format!(
                "header names must be at most {MAX_HEADER_NAME} bytes"
            )));
        }
        if value.len() > MAX_HEADER_VALUE {
            return Err(ApiError::Invalid(format!(
                "header {name:?} is {} bytes long; a value must be at most {MAX_HEADER_VALUE}",
                value.len()
            )));
        }
        // HeaderValue takes any byte but controls; receivers handle ASCII only reliably.
        let ascii = value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if HeaderName::from_bytes(name.as_bytes()).is_err() || !ascii {
            return Err(ApiError::Invalid(format!(
                "header {name:?} is not a valid HTTP header"
            )));
        }
    }
    let total: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_HEADERS_TOTAL {
        return Err(ApiError::Invalid(format!(
            "custom headers take {total} bytes (names and values); at most {MAX_HEADERS_TOTAL}"
        )));
    }
    Ok(())
}
