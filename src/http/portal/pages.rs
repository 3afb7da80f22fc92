//! The portal's pages: the application's endpoints (with the live attempt feed), one
//! endpoint, its messages, one message, and the event types it may receive.

use askama::Template;
use axum::extract::{Path, Query, State};

use super::{Failed, Portal, PortalResult};
use crate::db::attempts::Of;
use crate::db::{self, ListParams};
use crate::domain::{AttemptId, EndpointId, MessageId};
use crate::error::ApiError;
use crate::http::access::Scope;
use crate::http::dashboard::view::{
    AttemptRow, DeliveryRow, EndpointRow, PAGE_ROWS, bad_filter, query_of, rows, stamp,
};
use crate::http::dashboard::{PageError, render};
use crate::http::search::MessageFilters;
use crate::http::{ServerState, path_id};

/// What every portal page's layout needs.
pub(super) struct Layout {
    pub(super) title: String,
    pub(super) nav: &'static str,
    pub(super) base: String,
    pub(super) csrf: String,
    pub(super) product: String,
    pub(super) logo_url: Option<String>,
    pub(super) return_url: Option<String>,
    /// The feed query this page follows live, if any.
    pub(super) stream: Option<String>,
    pub(super) from: String,
    /// Until when this link opens the portal.
    pub(super) expires: String,
    /// What the link allows besides endpoints: messages and attempts, replay and recover.
    pub(super) can_read: bool,
    pub(super) can_replay: bool,
    /// Whether the catalog describes any event type (the page that shows them is linked).
    pub(super) has_event_types: bool,
}

impl Layout {
    pub(super) fn new(
        state: &ServerState,
        portal: &Portal,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Self {
        Self {
            title: title.into(),
            nav,
            base: portal.base.clone(),
            csrf: portal.csrf.clone(),
            product: portal
                .brand
                .product_name
                .clone()
                .unwrap_or_else(|| "Webhooks".into()),
            logo_url: portal.brand.logo_url.clone(),
            return_url: portal.link.return_url.clone(),
            stream: None,
            from: state.feed.head().to_string(),
            expires: stamp(portal.link.expires_at),
            can_read: portal.allows(Scope::MessagesRead),
            can_replay: portal.allows(Scope::Replay),
            has_event_types: state.catalog.publishes_any(),
        }
    }

    /// Follows the feed, if the link lets it read attempts.
    fn live(mut self, query: impl Into<String>) -> Self {
        if self.can_read {
            self.stream = Some(query.into());
        }
        self
    }
}

#[derive(Template)]
#[template(path = "portal/error.html")]
pub(super) struct ErrorPage<'a> {
    pub(super) status: u16,
    pub(super) message: &'a str,
    pub(super) base: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "portal/endpoints.html")]
pub(super) struct EndpointsPage {
    pub(super) layout: Layout,
    pub(super) endpoints: Vec<EndpointRow>,
    /// The query of the next page's link, if there is one.
    pub(super) more: Option<String>,
    pub(super) attempts: Vec<AttemptRow>,
    /// What the create form was sent with, when it is shown again with why it was refused.
    pub(super) form: EndpointForm,
    pub(super) event_types: EventTypeChoices,
    pub(super) error: Option<String>,
    pub(super) flash: Option<String>,
}

/// An endpoint form's fields as the customer typed them.
#[derive(Default, Clone)]
pub(super) struct EndpointForm {
    pub(super) url: String,
    pub(super) description: String,
    pub(super) event_types: String,
    pub(super) rate_limit: String,
}

/// An endpoint form's event types: a box for each type of the catalog, ticked if the form
/// holds it, and the rest of what it holds (groups such as `invoice.*`, types the catalog
/// does not describe) as text. Sent back, the two together are what the form held.
pub(super) struct EventTypeChoices {
    pub(super) choices: Vec<EventTypeChoice>,
    pub(super) other: String,
    /// Whether a box is ticked: the list is shown open.
    pub(super) any_ticked: bool,
}

pub(super) struct EventTypeChoice {
    pub(super) name: String,
    pub(super) ticked: bool,
    pub(super) deprecated: bool,
}

impl EventTypeChoices {
    /// The choices offered with `typed`, an endpoint form's event types.
    pub(super) fn of(state: &ServerState, typed: &str) -> Self {
        let held: Vec<&str> = super::forms::event_type_list(typed).collect();
        let published = state.catalog.for_customers();
        let is_published = |name: &str| {
            published
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .is_ok()
        };
        let choices: Vec<EventTypeChoice> = published
            .iter()
            .map(|(name, entry)| EventTypeChoice {
                ticked: held.contains(&name.as_str()),
                name: name.clone(),
                deprecated: entry.deprecated,
            })
            .collect();
        let other: Vec<&str> = held.into_iter().filter(|t| !is_published(t)).collect();
        Self {
            any_ticked: choices.iter().any(|c| c.ticked),
            choices,
            other: other.join(", "),
        }
    }
}

pub(super) async fn endpoints_page(
    state: &ServerState,
    portal: &Portal,
    form: EndpointForm,
    error: Option<String>,
    flash: Option<String>,
) -> PortalResult {
    endpoints_after(state, portal, None, form, error, flash).await
}

/// The page of endpoints after `after` (oldest first), with a link to the next.
async fn endpoints_after(
    state: &ServerState,
    portal: &Portal,
    after: Option<EndpointId>,
    form: EndpointForm,
    error: Option<String>,
    flash: Option<String>,
) -> PortalResult {
    let mut endpoints = db::endpoints::list(&state.pool, portal.app.id, after, PAGE_ROWS)
        .await
        .map_err(|e| portal.fail()(e.into()))?;
    // `list` reads one more than asked: whether there is a next page.
    let more = if endpoints.len() as i64 > PAGE_ROWS {
        endpoints.truncate(PAGE_ROWS as usize);
        endpoints
            .last()
            .map(|e| query_of([("after", Some(e.id.to_string().as_str()))]))
    } else {
        None
    };
    let status = if error.is_some() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    let page = render(EndpointsPage {
        layout: Layout::new(state, portal, "Your endpoints", "endpoints").live(""),
        endpoints: endpoints.into_iter().map(EndpointRow::from).collect(),
        more,
        attempts: vec![],
        event_types: EventTypeChoices::of(state, &form.event_types),
        form,
        error,
        flash,
    })?;
    Ok(with_status(status, page))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct After {
    #[serde(default)]
    after: String,
}

pub(super) async fn endpoints(
    State(state): State<ServerState>,
    portal: Portal,
    Query(page): Query<After>,
) -> PortalResult {
    let after = match page.after.as_str() {
        "" => None,
        a => Some(
            a.parse::<EndpointId>()
                .map_err(|_| portal.fail()(bad_filter("that page does not exist".into())))?,
        ),
    };
    endpoints_after(&state, &portal, after, EndpointForm::default(), None, None).await
}

#[derive(Template)]
#[template(path = "portal/endpoint.html")]
pub(super) struct EndpointPage {
    pub(super) layout: Layout,
    pub(super) endpoint: EndpointRow,
    pub(super) form: EndpointForm,
    pub(super) event_types: EventTypeChoices,
    pub(super) attempts: Vec<AttemptRow>,
    pub(super) older: Option<String>,
    /// Shown after "Reveal" or "Rotate".
    pub(super) secret: Option<String>,
    pub(super) error: Option<String>,
    pub(super) flash: Option<String>,
}

/// Extra things an endpoint's page shows after a form on it.
#[derive(Default)]
pub(super) struct Shown {
    pub(super) secret: Option<String>,
    pub(super) form: Option<EndpointForm>,
    pub(super) error: Option<String>,
    pub(super) flash: Option<String>,
}

pub(super) async fn endpoint_page(
    state: &ServerState,
    portal: &Portal,
    ep: &str,
    cursor: Option<AttemptId>,
    shown: Shown,
) -> PortalResult {
    let within = portal.fail();
    let found = async {
        let id = path_id(ep, "endpoint")?;
        let endpoint = db::endpoints::find(&state.pool, portal.app.id, id)
            .await?
            .ok_or(ApiError::NotFound("endpoint"))?;
        let search = crate::http::search::AttemptFilters::default().search(cursor)?;
        // A link without messages:read is shown no attempts: none are read for it.
        let attempts = if portal.allows(Scope::MessagesRead) {
            db::attempts::list(
                &state.pool,
                portal.app.id,
                Of::Endpoint(id),
                &search,
                PAGE_ROWS + 1,
            )
            .await?
        } else {
            vec![]
        };
        Ok::<_, ApiError>((endpoint, attempts))
    };
    let (endpoint, mut attempts) = found.await.map_err(|e| within(e.into()))?;
    let older = if attempts.len() as i64 > PAGE_ROWS {
        attempts.truncate(PAGE_ROWS as usize);
        attempts
            .last()
            .map(|a| query_of([("cursor", Some(a.id.to_string().as_str()))]))
    } else {
        None
    };
    let form = shown.form.unwrap_or_else(|| EndpointForm {
        url: crate::domain::redact_userinfo(&endpoint.url),
        description: endpoint.description.clone(),
        event_types: endpoint.event_types.join(", "),
        rate_limit: endpoint
            .rate_limit
            .map(|n| n.to_string())
            .unwrap_or_default(),
    });
    let mut layout = Layout::new(
        state,
        portal,
        crate::domain::short_url(&endpoint.url),
        "endpoints",
    );
    if cursor.is_none() {
        layout = layout.live(format!("endpoint={}", endpoint.id));
    }
    let status = if shown.error.is_some() {
        axum::http::StatusCode::UNPROCESSABLE_ENTITY
    } else {
        axum::http::StatusCode::OK
    };
    let page = render(EndpointPage {
        layout,
        endpoint: endpoint.into(),
        event_types: EventTypeChoices::of(state, &form.event_types),
        form,
        attempts: rows(attempts),
        older,
        secret: shown.secret,
        error: shown.error,
        flash: shown.flash,
    })?;
    Ok(with_status(status, page))
}

#[derive(serde::Deserialize, Default)]
pub(super) struct Cursor {
    #[serde(default)]
    cursor: String,
}

pub(super) async fn endpoint(
    State(state): State<ServerState>,
    portal: Portal,
    Path((_, ep)): Path<(String, String)>,
    Query(page): Query<Cursor>,
) -> PortalResult {
    let cursor = match page.cursor.as_str() {
        "" => None,
        c => Some(c.parse::<AttemptId>().map_err(|_| {
            Failed(
                bad_filter("that page does not exist".into()),
                Some(portal.base.clone()),
            )
        })?),
    };
    endpoint_page(&state, &portal, &ep, cursor, Shown::default()).await
}

#[derive(Template)]
#[template(path = "portal/event_types.html")]
struct EventTypesPage {
    layout: Layout,
    types: Vec<EventTypeView>,
    /// The query of the next page's link, if there is one.
    more: Option<String>,
}

struct EventTypeView {
    name: String,
    description: String,
    deprecated: bool,
    /// The schema of `data`, pretty-printed; `None`: any JSON.
    schema: Option<String>,
    /// The whole body of a webhook with the type's first example as its `data`.
    example: Option<String>,
}

/// The event types this application may receive, by name, in pages: what the catalog
/// publishes (archived types are not sent, so not shown). Any link opens it: the catalog is
/// the same for every application, and the REST API lets any credential read it.
pub(super) async fn event_types(
    State(state): State<ServerState>,
    portal: Portal,
    Query(page): Query<After>,
) -> PortalResult {
    let within = portal.fail();
    if !page.after.is_empty() && crate::domain::EventType::parse(&page.after).is_err() {
        return Err(within(bad_filter("that page does not exist".into())));
    }
    let published = state.catalog.for_customers();
    let start = published.partition_point(|(name, _)| name.as_str() <= page.after.as_str());
    let mut rest = published[start..].iter();
    let shown: Vec<_> = rest.by_ref().take(PAGE_ROWS as usize).collect();
    let more = match (rest.next(), shown.last()) {
        (Some(_), Some((last, _))) => Some(query_of([("after", Some(last.as_str()))])),
        _ => None,
    };
    let pretty = |value: &serde_json::Value| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    render(EventTypesPage {
        layout: Layout::new(&state, &portal, "Event types", "event-types"),
        types: shown
            .into_iter()
            .map(|(name, entry)| EventTypeView {
                name: name.clone(),
                description: entry.description.clone(),
                deprecated: entry.deprecated,
                schema: entry.schema.as_ref().map(pretty),
                example: entry.examples.first().map(|data| {
                    // In the order a receiver reads it (a JSON object prints its keys sorted).
                    let kind = serde_json::Value::from(name.as_str());
                    format!(
                        "{{\n  \"type\": {kind},\n  \"timestamp\": \"2026-01-01T12:00:00.000000Z\",\n  \"data\": {}\n}}",
                        pretty(data).replace('\n', "\n  ")
                    )
                }),
            })
            .collect(),
        more,
    })
    .map_err(within)
}

#[derive(Template)]
#[template(path = "portal/messages.html")]
struct MessagesPage {
    layout: Layout,
    messages: Vec<MessageRow>,
    event_type: String,
    older: Option<String>,
}

struct MessageRow {
    id: String,
    event_type: String,
    created: String,
}

pub(super) async fn messages(
    State(state): State<ServerState>,
    portal: Portal,
    Query(filters): Query<MessageFilters>,
    Query(page): Query<Cursor>,
) -> PortalResult {
    portal.require(Scope::MessagesRead)?;
    let within = portal.fail();
    let filters = filters.without_empty();
    let cursor = match page.cursor.as_str() {
        "" => None,
        c => Some(
            c.parse::<MessageId>()
                .map_err(|_| within(bad_filter("that page does not exist".into())))?,
        ),
    };
    let search = filters
        .search(cursor, crate::http::search::rfc3339)
        .map_err(|e| within(PageError::from(e)))?;
    let mut messages = match &search {
        Some(search) => db::messages::list(&state.pool, portal.app.id, search, PAGE_ROWS + 1)
            .await
            .map_err(|e| within(e.into()))?,
        None => vec![],
    };
    let event_type = filters.event_type.clone().unwrap_or_default();
    let older = if messages.len() as i64 > PAGE_ROWS {
        messages.truncate(PAGE_ROWS as usize);
        messages.last().map(|m| {
            let cursor = m.id.to_string();
            query_of([
                ("event_type", Some(event_type.as_str())),
                ("cursor", Some(cursor.as_str())),
            ])
        })
    } else {
        None
    };
    render(MessagesPage {
        layout: Layout::new(&state, &portal, "Messages", "messages"),
        messages: messages
            .into_iter()
            .map(|m| MessageRow {
                id: m.id.to_string(),
                event_type: m.event_type,
                created: stamp(m.created_at),
            })
            .collect(),
        event_type,
        older,
    })
    .map_err(within)
}

#[derive(Template)]
#[template(path = "portal/message.html")]
struct MessagePage {
    layout: Layout,
    id: String,
    event_type: String,
    created: String,
    payload: String,
    erased: bool,
    deliveries: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
    flash: Option<String>,
}

pub(super) async fn message_page(
    state: &ServerState,
    portal: &Portal,
    msg: &str,
    flash: Option<String>,
) -> PortalResult {
    portal.require(Scope::MessagesRead)?;
    let within = portal.fail();
    let found = async {
        let id = path_id(msg, "message")?;
        let message = db::messages::find(&state.pool, portal.app.id, id)
            .await?
            .ok_or(ApiError::NotFound("message"))?;
        let deliveries = db::messages::deliveries(&state.pool, message.id).await?;
        let attempts = db::attempts::list(
            &state.pool,
            portal.app.id,
            Of::Message(message.id),
            &Default::default(),
            ListParams::MAX_LIMIT,
        )
        .await?;
        Ok::<_, ApiError>((message, deliveries, attempts))
    };
    let (message, deliveries, attempts) = found.await.map_err(|e| within(e.into()))?;
    let payload = crate::http::dashboard::view::pretty(&message.payload);
    render(MessagePage {
        layout: Layout::new(state, portal, message.event_type.clone(), "messages").live(""),
        id: message.id.to_string(),
        event_type: message.event_type,
        created: stamp(message.created_at),
        payload,
        erased: message.payload_erased_at.is_some(),
        deliveries: deliveries.into_iter().map(DeliveryRow::from).collect(),
        attempts: rows(attempts),
        flash,
    })
    .map_err(within)
}

pub(super) async fn message(
    State(state): State<ServerState>,
    portal: Portal,
    Path((_, msg)): Path<(String, String)>,
) -> PortalResult {
    message_page(&state, &portal, &msg, None).await
}

/// A rendered page answered with `status`.
fn with_status(
    status: axum::http::StatusCode,
    mut page: axum::response::Response,
) -> axum::response::Response {
    *page.status_mut() = status;
    page
}
