//! The dashboard: server-rendered pages (askama) that work without JavaScript. A little
//! plain JS (`assets/live.js`) subscribes to the feed and updates them live. Everything is
//! embedded in the binary: no CDN, since Herald often runs where there is no internet.

use askama::Template;
use axum::extract::{Form, FromRequestParts, Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY as CONTENT_SECURITY_POLICY_HEADER, CONTENT_TYPE,
    LOCATION, REFERRER_POLICY, RETRY_AFTER, SET_COOKIE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::search::{self, AttemptFilters, MessageFilters};
use super::throttle::ClientAddr;
use super::{AppState, path_id, session};
use crate::db::attempts::{Attempt, Of};
use crate::db::dashboard::{self, Minute, QueueStats, Rate};
use crate::db::endpoints::{Endpoint, EndpointFields};
use crate::db::events::DeadDelivery;
use crate::db::messages::{DeliveryStatus, Message};
use crate::db::replays::{self, Refused};
use crate::db::{self, PageParams};
use crate::domain::{
    AttemptId, DeliveryId, EndpointId, MessageId, SigningSecret, redact_userinfo, short_url,
};
use crate::error::AppError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/apps", get(apps))
        .route("/apps/{app}", get(app))
        .route("/apps/{app}/endpoints/{ep}", get(endpoint))
        .route("/apps/{app}/endpoints/{ep}/rotate", post(rotate))
        .route("/apps/{app}/endpoints/{ep}/state", post(set_state))
        .route("/apps/{app}/messages/{msg}", get(message))
        .route("/apps/{app}/messages/{msg}/replay", post(replay))
        .route("/apps/{app}/endpoints/{ep}/recover", post(recover))
        .route("/dead", get(dead))
        .route("/assets/herald.css", get(css))
        .route("/assets/live.js", get(js))
        .layer(middleware::map_response(page_headers))
}

/// Scripts, styles and everything else from this origin only (the pages have no inline
/// script or style, and `live.js` talks to this origin's feed and WebSocket); no framing;
/// no URL (with ids in it) sent to other sites. Pages show secrets, payloads and response
/// bodies: none is kept in a cache (assets say their own `Cache-Control`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY_HEADER,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const CSS: &str = include_str!("../../assets/herald.css");
const JS: &str = include_str!("../../assets/live.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// A logged-in browser: its session cookie and the CSRF token its forms carry. Anyone else
/// is sent to the login page.
pub struct Session {
    csrf: String,
    cookie: String,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match session::session(&state.config, &state.revoked_sessions, &parts.headers) {
            Some(cookie) => Ok(Self {
                csrf: session::csrf_token(&state.config, &cookie),
                cookie,
            }),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let next =
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
                Err(Redirect::to(&format!("/login?next={next}")).into_response())
            }
        }
    }
}

impl Session {
    fn check_csrf(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        token: &str,
    ) -> Result<(), PageError> {
        if session::csrf_ok(&state.config, headers, &self.cookie, token) {
            Ok(())
        } else {
            Err(PageError(
                StatusCode::FORBIDDEN,
                "This form is stale or did not come from this dashboard. Go back, reload and try again."
                    .into(),
            ))
        }
    }
}

/// What every page's layout needs.
struct Layout {
    title: String,
    nav: &'static str,
    csrf: String,
    /// The feed query this page follows live (`app=…&endpoint=…`), if any.
    stream: Option<String>,
    /// The feed position when the page was rendered: the live script resumes from here,
    /// so nothing that happens between render and subscription is missed.
    from: String,
}

impl Layout {
    fn new(
        state: &AppState,
        session: &Session,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Self {
        Self {
            title: title.into(),
            nav,
            csrf: session.csrf.clone(),
            stream: None,
            from: state.feed.head().to_string(),
        }
    }

    fn live(mut self, query: impl Into<String>) -> Self {
        self.stream = Some(query.into());
        self
    }
}

/// An error shown as a page rather than JSON.
pub struct PageError(StatusCode, String);

impl From<AppError> for PageError {
    fn from(e: AppError) -> Self {
        let status = e.status();
        let message = match &e {
            AppError::Database(_) | AppError::Internal(_) => {
                tracing::error!(error = format!("{e:#}"), "dashboard page failed");
                "Something went wrong on our side; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        Self(status, message)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Database(e).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let html = ErrorPage {
            status: self.0.as_u16(),
            message: &self.1,
        }
        .render()
        .unwrap_or_else(|_| "error".into());
        (self.0, Html(html)).into_response()
    }
}

type PageResult = Result<Response, PageError>;

fn render(page: impl Template) -> PageResult {
    let html = page
        .render()
        .map_err(|e| PageError::from(AppError::Internal(e.into())))?;
    Ok(Html(html).into_response())
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

/// Only a path on this site: `next` must not become an open redirect. Browsers drop tabs
/// and newlines from a `Location` and read `\` as `/`, so `/\t/evil.example` would leave
/// the site: anything but printable ASCII without spaces or backslashes, after a single
/// leading `/`, goes to the overview instead. A request's own path and query always pass.
fn safe_next(next: Option<String>) -> String {
    next.filter(|n| {
        let rest = n.strip_prefix('/');
        rest.is_some_and(|rest| !rest.starts_with('/'))
            && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
    })
    .unwrap_or_else(|| "/".into())
}

async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<NextParam>,
) -> PageResult {
    let next = safe_next(q.next);
    if session::session(&state.config, &state.revoked_sessions, &headers).is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    render(LoginPage { next, error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let next = safe_next(form.next);
    if let Err(blocked) = state.auth_throttle.check(client) {
        let secs = blocked.retry_after_secs();
        let mut page = render(LoginPage {
            next,
            error: Some(format!(
                "Too many wrong tokens from your address: try again in {secs} s."
            )),
        })?;
        *page.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        page.headers_mut().insert(RETRY_AFTER, secs.into());
        return Ok(page);
    }
    if !session::is_admin_token(&state.config, form.token.trim()) {
        super::auth_failed(&state, client, "token at login");
        let mut page = render(LoginPage {
            next,
            error: Some("That is not this Herald's admin token.".into()),
        })?;
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(page);
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (SET_COOKIE, session::login_cookie(&state.config)),
            (
                LOCATION,
                next.parse().expect("a checked path is a header value"),
            ),
        ],
    )
        .into_response())
}

/// A missing token is simply a wrong one (403), not a malformed form.
#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    session.check_csrf(&state, &headers, &form.csrf)?;
    // The cookie a browser drops could have been copied: it must stop working here and on
    // every other process, not merely leave this browser.
    state.revoked_sessions.revoke(&session.cookie);
    if let Err(e) = sqlx::query("select pg_notify($1, $2)")
        .bind(session::REVOKED_CHANNEL)
        .bind(session::revocation_notice(&session.cookie))
        .execute(&state.pool)
        .await
    {
        tracing::warn!(error = %e, "logout not announced to other processes");
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (SET_COOKIE, session::logout_cookie()),
            (LOCATION, "/login".parse().expect("static")),
        ],
    )
        .into_response())
}

// ---- view models: values formatted once, so templates stay plain ----

fn ago(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds().max(0);
    duration_text(secs as f64) + " ago"
}

fn duration_text(secs: f64) -> String {
    let s = secs as i64;
    match s {
        _ if secs < 1.0 => format!("{:.0} ms", secs * 1000.0),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".into(), |p| format!("{p:.1}%"))
}

struct AttemptRow {
    id: String,
    at: String,
    outcome: String,
    app_id: String,
    message_id: String,
    endpoint_id: String,
    event_type: String,
    attempt: i32,
    trigger: String,
    status: String,
    latency: String,
    error: String,
    body: String,
}

impl From<Attempt> for AttemptRow {
    fn from(a: Attempt) -> Self {
        Self {
            id: a.id.to_string(),
            at: stamp(a.created_at),
            outcome: a.outcome,
            app_id: a.app_id.to_string(),
            message_id: a.message_id.to_string(),
            endpoint_id: a.endpoint_id.to_string(),
            event_type: a.event_type,
            attempt: a.attempt,
            trigger: a.trigger,
            status: a
                .response_status
                .map_or_else(|| "–".into(), |s| s.to_string()),
            latency: format!("{} ms", a.duration_ms),
            error: a.error.unwrap_or_default(),
            body: a.response_body.unwrap_or_default(),
        }
    }
}

fn rows(attempts: Vec<Attempt>) -> Vec<AttemptRow> {
    attempts.into_iter().map(AttemptRow::from).collect()
}

/// One bar of the throughput chart, in SVG user units (the chart is 600 x 140).
struct Bar {
    x: i64,
    ok_y: f64,
    ok_h: f64,
    failed_y: f64,
    failed_h: f64,
    title: String,
}

const CHART_BASE: f64 = 130.0;
const CHART_HEIGHT: f64 = 120.0;

fn chart(minutes: &[Minute]) -> (Vec<Bar>, String) {
    let max = minutes.iter().map(|m| m.total).max().unwrap_or(0).max(1) as f64;
    let bars = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ok_h = m.succeeded as f64 / max * CHART_HEIGHT;
            let failed_h = (m.total - m.succeeded) as f64 / max * CHART_HEIGHT;
            let at = DateTime::from_timestamp(m.minute, 0).unwrap_or_default();
            Bar {
                x: i as i64 * 10,
                ok_y: CHART_BASE - ok_h,
                ok_h,
                failed_y: CHART_BASE - ok_h - failed_h,
                failed_h,
                title: format!(
                    "{}: {} attempts, {} failed",
                    at.format("%H:%M"),
                    m.total,
                    m.total - m.succeeded
                ),
            }
        })
        .collect();
    // The success rate as a line, over the minutes that had attempts.
    let line = minutes
        .iter()
        .enumerate()
        .filter(|(_, m)| m.total > 0)
        .map(|(i, m)| {
            let rate = m.succeeded as f64 / m.total as f64;
            format!("{},{:.1}", i * 10 + 5, CHART_BASE - rate * CHART_HEIGHT)
        })
        .collect::<Vec<_>>()
        .join(" ");
    (bars, line)
}

// ---- pages ----

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    queue: QueueStats,
    oldest: String,
    hour_total: i64,
    hour_rate: String,
    bars: Vec<Bar>,
    rate_line: String,
    minutes_json: String,
    attempts: Vec<AttemptRow>,
}

async fn overview(State(state): State<AppState>, session: Session) -> PageResult {
    let queue = dashboard::queue(&state.pool).await?;
    let minutes = dashboard::throughput(&state.pool, 60).await?;
    let hour = minutes.iter().fold(Rate::default(), |r, m| Rate {
        succeeded: r.succeeded + m.succeeded,
        total: r.total + m.total,
    });
    let (bars, rate_line) = chart(&minutes);
    let attempts = db::attempts::recent(&state.pool, 50).await?;
    render(Overview {
        layout: Layout::new(&state, &session, "Overview", "overview").live(""),
        oldest: if queue.pending > 0 {
            duration_text(queue.oldest_pending_age_seconds)
        } else {
            "–".into()
        },
        queue,
        hour_total: hour.total,
        hour_rate: percent(hour.percent()),
        bars,
        rate_line,
        minutes_json: serde_json::to_string(&minutes).unwrap_or_default(),
        attempts: rows(attempts),
    })
}

struct AppRow {
    id: String,
    name: String,
    uid: String,
    endpoints: i64,
    disabled_endpoints: i64,
    created: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    layout: Layout,
    apps: Vec<AppRow>,
}

async fn apps(State(state): State<AppState>, session: Session) -> PageResult {
    let apps = dashboard::apps(&state.pool, 500).await?;
    render(AppsPage {
        layout: Layout::new(&state, &session, "Applications", "apps"),
        apps: apps
            .into_iter()
            .map(|a| AppRow {
                id: a.id.to_string(),
                name: a.name,
                uid: a.uid.unwrap_or_default(),
                endpoints: a.endpoints,
                disabled_endpoints: a.disabled_endpoints,
                created: stamp(a.created_at),
            })
            .collect(),
    })
}

struct EndpointRow {
    id: String,
    /// Without credentials or query: titles and lists show this.
    url: String,
    /// Without credentials: the endpoint's own page shows its query too.
    full_url: String,
    description: String,
    event_types: String,
    disabled: bool,
    disabled_reason: String,
    /// Its cap on requests in flight and its rate limit, in words.
    limits: String,
}

impl From<Endpoint> for EndpointRow {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id.to_string(),
            url: short_url(&e.url),
            full_url: redact_userinfo(&e.url),
            description: e.description,
            event_types: if e.event_types.is_empty() {
                "all".into()
            } else {
                e.event_types.join(", ")
            },
            disabled: e.disabled,
            disabled_reason: e.disabled_reason.unwrap_or_default(),
            limits: format!(
                "{} · {}",
                e.max_in_flight
                    .map_or("default cap".into(), |n| format!("at most {n} in flight")),
                e.rate_limit.map_or("no rate limit".into(), |n| format!(
                    "at most {n} requests/s"
                ))
            ),
        }
    }
}

struct MessageRow {
    id: String,
    event_type: String,
    at: String,
}

/// The dashboard's list pages: 50 rows, then an "Older" link.
const PAGE_ROWS: i64 = 50;

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    layout: Layout,
    id: String,
    name: String,
    uid: String,
    endpoints: Vec<EndpointRow>,
    messages: Vec<MessageRow>,
    /// The filter form's values, as it shows them.
    filter: MessageFilters,
    filtered: bool,
    /// The query of the next page's link: the same filters and the cursor.
    older: Option<String>,
}

/// A time from a form: RFC 3339, or a `datetime-local` value read as UTC.
fn form_time_value(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    search::rfc3339(value).or_else(|| {
        chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f"))
            .ok()
            .map(|t| t.and_utc())
    })
}

/// How a `datetime-local` input shows a time (UTC).
fn form_time_text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// `pairs` without the empty ones, as a query string.
fn query_of<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            query.append_pair(name, v);
        }
    }
    query.finish()
}

fn bad_filter(e: String) -> PageError {
    PageError(StatusCode::UNPROCESSABLE_ENTITY, e)
}

async fn app(
    State(state): State<AppState>,
    session: Session,
    Path(key): Path<String>,
    axum::extract::Query(page): axum::extract::Query<PageParams>,
    axum::extract::Query(filter): axum::extract::Query<MessageFilters>,
) -> PageResult {
    let app = state.app(&key).await?;
    let cursor = page.cursor::<MessageId>().map_err(bad_filter)?;
    let mut filter = filter.without_empty();
    let search = filter.search(cursor, form_time_value)?;
    // The form shows the times it was given in the form it takes them.
    for value in [&mut filter.since, &mut filter.until] {
        if let Some(at) = value.as_deref().and_then(form_time_value) {
            *value = Some(form_time_text(at));
        }
    }
    let endpoints = db::endpoints::list(&state.pool, app.id, None, PageParams::MAX_LIMIT).await?;
    let mut messages = match &search {
        Some(search) => db::messages::list(&state.pool, app.id, search, PAGE_ROWS).await?,
        None => vec![],
    };
    let older = if messages.len() as i64 > PAGE_ROWS {
        messages.truncate(PAGE_ROWS as usize);
        messages.last().map(|m| {
            let cursor = m.id.to_string();
            query_of([
                ("event_type", filter.event_type.as_deref()),
                ("since", filter.since.as_deref()),
                ("until", filter.until.as_deref()),
                ("idempotency_key", filter.idempotency_key.as_deref()),
                ("cursor", Some(cursor.as_str())),
            ])
        })
    } else {
        None
    };
    let filtered = filter.event_type.is_some()
        || filter.since.is_some()
        || filter.until.is_some()
        || filter.idempotency_key.is_some();
    render(AppPage {
        layout: Layout::new(&state, &session, app.name.clone(), "apps"),
        id: app.id.to_string(),
        name: app.name,
        uid: app.uid.unwrap_or_default(),
        endpoints: endpoints.into_iter().map(EndpointRow::from).collect(),
        messages: messages
            .into_iter()
            .map(|m| MessageRow {
                id: m.id.to_string(),
                event_type: m.event_type,
                at: stamp(m.created_at),
            })
            .collect(),
        filter,
        filtered,
        older,
    })
}

#[derive(Template)]
#[template(path = "endpoint.html")]
struct EndpointPage {
    layout: Layout,
    app_id: String,
    app_name: String,
    endpoint: EndpointRow,
    rate: String,
    rate_counts: Rate,
    attempts: Vec<AttemptRow>,
    /// The filter form's values.
    outcome: String,
    status: String,
    filtered: bool,
    /// The query of the next page's link: the same filters and the cursor.
    older: Option<String>,
    /// Shown once, right after a rotation from this page.
    new_secret: Option<String>,
    flash: Option<String>,
}

/// Which of an endpoint's attempts its page shows.
#[derive(Default)]
struct AttemptView {
    filter: AttemptFilters,
    cursor: Option<AttemptId>,
}

async fn endpoint_page(
    state: &AppState,
    session: &Session,
    app_key: &str,
    ep: &str,
    view: AttemptView,
    new_secret: Option<String>,
    flash: Option<String>,
) -> PageResult {
    let app = state.app(app_key).await?;
    let id = path_id(ep, "endpoint")?;
    let search = view.filter.search(view.cursor)?;
    let endpoint = db::endpoints::find(&state.pool, app.id, id)
        .await?
        .ok_or(AppError::NotFound("endpoint"))?;
    let rate = dashboard::endpoint_rate(&state.pool, endpoint.id).await?;
    let mut attempts = db::attempts::list(
        &state.pool,
        app.id,
        Of::Endpoint(endpoint.id),
        &search,
        PAGE_ROWS,
    )
    .await?;
    let AttemptFilters { outcome, status } = view.filter;
    let older = if attempts.len() as i64 > PAGE_ROWS {
        attempts.truncate(PAGE_ROWS as usize);
        attempts.last().map(|a| {
            let cursor = a.id.to_string();
            query_of([
                ("outcome", outcome.as_deref()),
                ("status", status.as_deref()),
                ("cursor", Some(cursor.as_str())),
            ])
        })
    } else {
        None
    };
    let filtered = outcome.is_some() || status.is_some();
    let mut layout = Layout::new(state, session, short_url(&endpoint.url), "apps");
    // New attempts are added live only to the unfiltered newest page: the feed cannot say
    // which of them a filter would show.
    if !filtered && view.cursor.is_none() {
        layout = layout.live(format!("endpoint={}", endpoint.id));
    }
    render(EndpointPage {
        layout,
        app_id: app.id.to_string(),
        app_name: app.name,
        endpoint: endpoint.into(),
        rate: percent(rate.percent()),
        rate_counts: rate,
        attempts: rows(attempts),
        outcome: outcome.unwrap_or_default(),
        status: status.unwrap_or_default(),
        filtered,
        older,
        new_secret,
        flash,
    })
}

async fn endpoint(
    State(state): State<AppState>,
    session: Session,
    Path((app, ep)): Path<(String, String)>,
    axum::extract::Query(page): axum::extract::Query<PageParams>,
    axum::extract::Query(filter): axum::extract::Query<AttemptFilters>,
) -> PageResult {
    let view = AttemptView {
        filter: filter.without_empty(),
        cursor: page.cursor::<AttemptId>().map_err(bad_filter)?,
    };
    endpoint_page(&state, &session, &app, &ep, view, None, None).await
}

async fn rotate(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((app, ep)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    session.check_csrf(&state, &headers, &form.csrf)?;
    let app_id = state.app_id(&app).await?;
    let id = path_id(&ep, "endpoint")?;
    db::endpoints::find(&state.pool, app_id, id)
        .await?
        .ok_or(AppError::NotFound("endpoint"))?;
    let secret = SigningSecret::generate();
    super::endpoints::rotate_to(&state, id, &secret).await?;
    let shown = secret.expose().to_owned();
    endpoint_page(
        &state,
        &session,
        &app,
        &ep,
        AttemptView::default(),
        Some(shown),
        Some("Secret rotated.".into()),
    )
    .await
}

#[derive(Deserialize)]
struct StateForm {
    #[serde(default)]
    csrf: String,
    disabled: bool,
}

async fn set_state(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((app, ep)): Path<(String, String)>,
    Form(form): Form<StateForm>,
) -> PageResult {
    session.check_csrf(&state, &headers, &form.csrf)?;
    let app_id = state.app_id(&app).await?;
    let id = path_id(&ep, "endpoint")?;
    db::endpoints::update(
        &state.pool,
        app_id,
        id,
        EndpointFields {
            disabled: Some(form.disabled),
            ..EndpointFields::default()
        },
    )
    .await?
    .ok_or(AppError::NotFound("endpoint"))?;
    state.feed.poke();
    let flash = if form.disabled {
        "Endpoint disabled."
    } else {
        "Endpoint enabled: new messages are sent to it again. Messages sent while it was disabled were not queued for it; recover a time window to send them."
    };
    endpoint_page(
        &state,
        &session,
        &app,
        &ep,
        AttemptView::default(),
        None,
        Some(flash.into()),
    )
    .await
}

struct DeliveryRow {
    id: String,
    endpoint_id: String,
    state: String,
    attempt_count: i32,
    next_attempt: String,
    last_error: String,
}

impl From<DeliveryStatus> for DeliveryRow {
    fn from(d: DeliveryStatus) -> Self {
        Self {
            id: d.id.to_string(),
            endpoint_id: d.endpoint_id.to_string(),
            state: d.state,
            attempt_count: d.attempt_count,
            next_attempt: d.next_attempt_at.map(stamp).unwrap_or_default(),
            last_error: d.last_error.unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    app_id: String,
    app_name: String,
    id: String,
    event_type: String,
    created: String,
    idempotency_key: String,
    payload: String,
    /// When the payload was erased; empty if it was not.
    payload_erased: String,
    deliveries: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
    flash: Option<String>,
}

/// The payload indented for reading; the receiver gets the exact bytes stored.
fn pretty(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| payload.to_owned())
}

async fn message(
    State(state): State<AppState>,
    session: Session,
    Path((app_key, msg)): Path<(String, String)>,
) -> PageResult {
    message_page(&state, &session, &app_key, &msg, None).await
}

async fn message_page(
    state: &AppState,
    session: &Session,
    app_key: &str,
    msg: &str,
    flash: Option<String>,
) -> PageResult {
    let app = state.app(app_key).await?;
    let id = path_id(msg, "message")?;
    let message: Message = db::messages::find(&state.pool, app.id, id)
        .await?
        .ok_or(AppError::NotFound("message"))?;
    let deliveries = db::messages::deliveries(&state.pool, message.id).await?;
    let attempts = db::attempts::list(
        &state.pool,
        app.id,
        Of::Message(message.id),
        &Default::default(),
        PageParams::MAX_LIMIT,
    )
    .await?;
    render(MessagePage {
        layout: Layout::new(state, session, format!("Message {}", message.id), "apps")
            .live(format!("app={}", app.id)),
        flash,
        app_id: app.id.to_string(),
        app_name: app.name,
        id: message.id.to_string(),
        event_type: message.event_type,
        created: stamp(message.created_at),
        idempotency_key: message.idempotency_key.unwrap_or_default(),
        payload: pretty(&message.payload),
        payload_erased: message.payload_erased_at.map(stamp).unwrap_or_default(),
        deliveries: deliveries.into_iter().map(DeliveryRow::from).collect(),
        attempts: rows(attempts),
    })
}

struct DeadRow {
    id: String,
    app_id: String,
    message_id: String,
    endpoint_id: String,
    event_type: String,
    attempt_count: i32,
    last_error: String,
    at: String,
}

impl From<DeadDelivery> for DeadRow {
    fn from(d: DeadDelivery) -> Self {
        Self {
            id: d.id.to_string(),
            app_id: d.app_id.to_string(),
            message_id: d.message_id.to_string(),
            endpoint_id: d.endpoint_id.to_string(),
            event_type: d.event_type,
            attempt_count: d.attempt_count,
            last_error: d.last_error.unwrap_or_default(),
            at: ago(d.updated_at),
        }
    }
}

#[derive(Template)]
#[template(path = "dead.html")]
struct DeadPage {
    layout: Layout,
    endpoints: Vec<DeadEndpointRow>,
    rows: Vec<DeadRow>,
    next_cursor: Option<String>,
    flash: Option<String>,
}

struct DeadEndpointRow {
    id: String,
    app_id: String,
    url: String,
    /// "1000+" past what is counted.
    dead: String,
}

async fn dead(
    State(state): State<AppState>,
    session: Session,
    axum::extract::Query(page): axum::extract::Query<PageParams>,
) -> PageResult {
    let before = page
        .cursor::<DeliveryId>()
        .map_err(|e| PageError(StatusCode::BAD_REQUEST, e))?;
    dead_page(&state, &session, before, None).await
}

async fn dead_page(
    state: &AppState,
    session: &Session,
    before: Option<DeliveryId>,
    flash: Option<String>,
) -> PageResult {
    let limit = 100;
    let mut rows = dashboard::dead_letters(&state.pool, before, limit).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|d| d.id.to_string())
    } else {
        None
    };
    let endpoints = dashboard::dead_by_endpoint(&state.pool, 50).await?;
    render(DeadPage {
        layout: Layout::new(state, session, "Dead letters", "dead").live(""),
        endpoints: endpoints
            .into_iter()
            .map(|e| DeadEndpointRow {
                id: e.id.to_string(),
                app_id: e.app_id.to_string(),
                url: short_url(&e.url),
                dead: if e.dead >= dashboard::DEAD_COUNTED {
                    format!("{}+", e.dead)
                } else {
                    e.dead.to_string()
                },
            })
            .collect(),
        rows: rows.into_iter().map(DeadRow::from).collect(),
        next_cursor,
        flash,
    })
}

// ---- replay: the plain-form twins of the admin channel's commands ----

impl From<Refused> for PageError {
    fn from(r: Refused) -> Self {
        AppError::from(r).into()
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    csrf: String,
    /// Empty: every subscribed endpoint.
    #[serde(default)]
    endpoint_id: String,
}

async fn replay(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((app, msg)): Path<(String, String)>,
    Form(form): Form<ReplayForm>,
) -> PageResult {
    session.check_csrf(&state, &headers, &form.csrf)?;
    let app_id = state.app_id(&app).await?;
    let message: MessageId = path_id(&msg, "message")?;
    let endpoint: Option<EndpointId> = match form.endpoint_id.trim() {
        "" => None,
        e => Some(path_id(e, "endpoint")?),
    };
    let mut conn = state.pool.acquire().await?;
    let queued = replays::replay_message(&mut conn, message, Some(app_id), endpoint).await??;
    drop(conn);
    let flash = format!(
        "Replay queued to {} endpoint(s); its attempts appear below.",
        queued.len()
    );
    message_page(&state, &session, &app, &msg, Some(flash)).await
}

#[derive(Deserialize)]
struct RecoverForm {
    #[serde(default)]
    csrf: String,
    since: String,
    /// `dead` when sent from the dead-letter page, which is then shown again.
    #[serde(default)]
    back: String,
}

/// `since` from a form: RFC 3339, or a `datetime-local` value read as UTC.
fn form_time(value: &str) -> Result<DateTime<Utc>, PageError> {
    let value = value.trim();
    form_time_value(value).ok_or_else(|| {
        PageError(
            StatusCode::BAD_REQUEST,
            format!("{value:?} is not a time like 2026-11-24T08:00 (UTC)"),
        )
    })
}

async fn recover(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Path((app, ep)): Path<(String, String)>,
    Form(form): Form<RecoverForm>,
) -> PageResult {
    session.check_csrf(&state, &headers, &form.csrf)?;
    let app_id = state.app_id(&app).await?;
    let endpoint: EndpointId = path_id(&ep, "endpoint")?;
    let since = form_time(&form.since)?;
    let started = state
        .recoveries
        .start(app_id, endpoint, since, Utc::now())
        .await??;
    let flash = format!(
        "Recover started: {} to send (dead, or never queued), in the background.",
        started.recovery.total
    );
    if form.back == "dead" {
        dead_page(&state, &session, None, Some(flash)).await
    } else {
        endpoint_page(
            &state,
            &session,
            &app,
            &ep,
            AttemptView::default(),
            None,
            Some(flash),
        )
        .await
    }
}
