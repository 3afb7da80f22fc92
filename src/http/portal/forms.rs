//! The portal's forms. Each checks the session's CSRF token and origin (`Posted`), does
//! what the REST API does for the same change (the same validation, the same `actions`),
//! and answers with the page it was sent from, showing what happened.

use std::collections::BTreeMap;

use axum::extract::{Form, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::pages::{EndpointForm, Shown, endpoint_page, endpoints_page, message_page};
use super::{Failed, Portal, PortalResult};
use crate::db;
use crate::db::endpoints::EndpointFields;
use crate::domain::{EndpointId, SigningSecret, Window};
use crate::error::ApiError;
use crate::http::access::{PORTAL_ACTOR, Scope};
use crate::http::dashboard::PageError;
use crate::http::dashboard::view::form_time_value;
use crate::http::endpoints::settings::{EndpointSettings, UrlBy};
use crate::http::{ServerState, actions, path_id};

/// A form with its CSRF token.
pub(super) trait PortalForm: DeserializeOwned {
    fn csrf(&self) -> &str;
}

/// A form this portal session's own page sent: the session, and the form once its token
/// and origin checked out.
pub(super) struct Posted<F> {
    portal: Portal,
    form: F,
}

impl<F: PortalForm> FromRequest<ServerState> for Posted<F> {
    type Rejection = axum::response::Response;

    async fn from_request(
        request: Request,
        state: &ServerState,
    ) -> Result<Self, axum::response::Response> {
        use axum::extract::FromRequestParts;
        let (mut parts, body) = request.into_parts();
        let portal = Portal::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let Form(form) = Form::<F>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        if !portal.form_ok(state, &headers, form.csrf()) {
            let message = "This form is stale or did not come from this page. Go back, \
                           reload and try again.";
            return Err(Failed(
                PageError(StatusCode::FORBIDDEN, message.into()),
                Some(portal.base.clone()),
            )
            .into_response());
        }
        if let Err(blocked) = state.portal_writes.spend(portal.app.id) {
            let secs = blocked.retry_after_secs();
            let message =
                format!("Too many changes in a short time. Wait {secs} seconds, then try again.");
            let mut refused = Failed(
                PageError(StatusCode::TOO_MANY_REQUESTS, message),
                Some(portal.base.clone()),
            )
            .into_response();
            refused
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
            return Err(refused);
        }
        Ok(Self { portal, form })
    }
}

macro_rules! portal_form {
    ($name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        pub(super) struct $name {
            #[serde(default)]
            csrf: String,
            $(#[serde(default)] $field: $ty,)*
        }

        impl PortalForm for $name {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    };
}

/// An endpoint's form: its fields, and a `type:<name>` box for each event type of the
/// catalog that is ticked (`EventTypeChoices`).
#[derive(Deserialize)]
pub(super) struct EndpointFormBody {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    event_types: String,
    #[serde(default)]
    rate_limit: String,
    /// Every other field; the ticked boxes among them.
    #[serde(flatten)]
    others: BTreeMap<String, String>,
}

impl PortalForm for EndpointFormBody {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The event types in an endpoint form's text, separated by commas or spaces.
pub(super) fn event_type_list(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

portal_form!(TokenOnly {});
portal_form!(StateForm { disabled: bool });
portal_form!(DeleteForm { confirm: String });
portal_form!(RecoverForm { since: String });
portal_form!(ReplayForm {
    endpoint_id: String
});

impl EndpointFormBody {
    fn shown(&self) -> EndpointForm {
        EndpointForm {
            url: self.url.clone(),
            description: self.description.clone(),
            event_types: self.event_types().join(", "),
            rate_limit: self.rate_limit.clone(),
        }
    }

    /// The ticked types, then those typed, each once.
    fn event_types(&self) -> Vec<String> {
        let ticked = self
            .others
            .keys()
            .filter_map(|field| field.strip_prefix("type:"));
        let mut types: Vec<String> = vec![];
        for t in ticked.chain(event_type_list(&self.event_types)) {
            if !types.iter().any(|held| held == t) {
                types.push(t.to_owned());
            }
        }
        types
    }

    /// The endpoint these fields describe, checked as the REST API checks it. A URL sent
    /// back as `shown` (the stored one as the page showed it, credentials masked) is kept
    /// as stored.
    fn fields(&self, state: &ServerState, shown: Option<&str>) -> Result<EndpointFields, String> {
        let rate_limit = match self.rate_limit.trim() {
            "" => None,
            n => Some(
                n.parse::<i32>()
                    .map_err(|_| "the rate limit must be a whole number of requests per second")?,
            ),
        };
        EndpointSettings::from_portal(
            self.description.trim().to_owned(),
            self.event_types(),
            rate_limit,
        )
        .into_fields(
            Some(self.url.trim()).filter(|url| Some(*url) != shown),
            UrlBy::Portal {
                allow_private: state.config.portal_allow_private_targets,
            },
            state.required_catalog(),
        )
        .map_err(|e| match e {
            ApiError::Invalid(why) | ApiError::BadRequest(why) => why,
            other => other.to_string(),
        })
    }
}

fn endpoint_id(portal: &Portal, ep: &str) -> Result<EndpointId, Failed> {
    path_id(ep, "endpoint").map_err(|e| portal.fail()(e.into()))
}

/// The endpoint `ep` of this portal's application.
async fn own_endpoint(
    state: &ServerState,
    portal: &Portal,
    ep: &str,
) -> Result<crate::db::endpoints::Endpoint, Failed> {
    let id = endpoint_id(portal, ep)?;
    db::endpoints::find(&state.pool, portal.app.id, id)
        .await
        .map_err(|e| failed(portal)(e.into()))?
        .ok_or_else(|| failed(portal)(ApiError::NotFound("endpoint")))
}

/// Fails, as the portal page of `portal`, with what `e` says.
fn failed(portal: &Portal) -> impl Fn(ApiError) -> Failed + '_ {
    move |e| portal.fail()(e.into())
}

pub(super) async fn create_endpoint(
    State(state): State<ServerState>,
    Posted { portal, form }: Posted<EndpointFormBody>,
) -> PortalResult {
    let fields = match form.fields(&state, None) {
        Ok(fields) => fields,
        Err(why) => return endpoints_page(&state, &portal, form.shown(), Some(why), None).await,
    };
    let secret = SigningSecret::generate();
    let created = async {
        let mut tx = state.pool.begin().await?;
        let max = state.config.max_endpoints_per_app;
        if !db::endpoints::room_for_one(&mut tx, portal.app.id, max).await? {
            return Err(ApiError::Refused(
                "endpoint_limit",
                format!("You have {max} endpoints, the most allowed: remove one to add another."),
            ));
        }
        db::operational::act_as(&mut tx, PORTAL_ACTOR).await?;
        let endpoint = db::endpoints::create(&mut tx, portal.app.id, fields, &secret).await?;
        tx.commit().await?;
        Ok::<_, ApiError>(endpoint)
    };
    let endpoint = created.await.map_err(failed(&portal))?;
    tracing::info!(app = %portal.app.id, endpoint = %endpoint.id, "endpoint created in the portal");
    let shown = Shown {
        secret: Some(secret.expose().to_owned()),
        flash: Some("Endpoint added. Use the signing secret below to verify our requests.".into()),
        ..Shown::default()
    };
    endpoint_page(&state, &portal, &endpoint.id.to_string(), None, shown).await
}

pub(super) async fn update_endpoint(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, form }: Posted<EndpointFormBody>,
) -> PortalResult {
    let current = own_endpoint(&state, &portal, &ep).await?;
    let id = current.id;
    let shown = crate::domain::redact_userinfo(&current.url);
    let fields = match form.fields(&state, Some(&shown)) {
        Ok(fields) => fields,
        Err(why) => {
            let shown = Shown {
                form: Some(form.shown()),
                error: Some(why),
                ..Shown::default()
            };
            return endpoint_page(&state, &portal, &ep, None, shown).await;
        }
    };
    actions::update_endpoint(&state, portal.app.id, id, fields, Some(PORTAL_ACTOR))
        .await
        .map_err(failed(&portal))?;
    let shown = Shown {
        flash: Some("Saved.".into()),
        ..Shown::default()
    };
    endpoint_page(&state, &portal, &ep, None, shown).await
}

pub(super) async fn set_state(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, form }: Posted<StateForm>,
) -> PortalResult {
    let id = endpoint_id(&portal, &ep)?;
    let fields = EndpointFields {
        disabled: Some(form.disabled),
        ..EndpointFields::default()
    };
    actions::update_endpoint(&state, portal.app.id, id, fields, Some(PORTAL_ACTOR))
        .await
        .map_err(failed(&portal))?;
    let flash = if form.disabled {
        "Endpoint disabled: we send it nothing until you enable it."
    } else {
        "Endpoint enabled. Webhooks sent while it was disabled can be sent with \"Resend failed webhooks\"."
    };
    let shown = Shown {
        flash: Some(flash.into()),
        ..Shown::default()
    };
    endpoint_page(&state, &portal, &ep, None, shown).await
}

pub(super) async fn delete_endpoint(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, form }: Posted<DeleteForm>,
) -> PortalResult {
    let id = endpoint_id(&portal, &ep)?;
    if form.confirm != "yes" {
        let shown = Shown {
            error: Some("Tick \"I am sure\" to delete the endpoint.".into()),
            ..Shown::default()
        };
        return endpoint_page(&state, &portal, &ep, None, shown).await;
    }
    let removal = db::removals::queue_endpoint(&state.pool, portal.app.id, id, Some(PORTAL_ACTOR))
        .await
        .map_err(|e| failed(&portal)(e.into()))?
        .ok_or_else(|| failed(&portal)(ApiError::NotFound("endpoint")))?;
    state.removals.wake();
    tracing::info!(app = %portal.app.id, endpoint = %id, removal = %removal.id, "endpoint deleted in the portal");
    let flash = Some("Endpoint deleted: we send it nothing more.".to_owned());
    endpoints_page(&state, &portal, EndpointForm::default(), None, flash).await
}

pub(super) async fn reveal_secret(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, .. }: Posted<TokenOnly>,
) -> PortalResult {
    let id = own_endpoint(&state, &portal, &ep).await?.id;
    let secret = db::endpoints::current_secret(&state.pool, id)
        .await
        .map_err(|e| failed(&portal)(e.into()))?;
    let shown = Shown {
        secret,
        ..Shown::default()
    };
    endpoint_page(&state, &portal, &ep, None, shown).await
}

pub(super) async fn rotate_secret(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, .. }: Posted<TokenOnly>,
) -> PortalResult {
    let id = own_endpoint(&state, &portal, &ep).await?.id;
    let secret = SigningSecret::generate();
    db::endpoints::rotate_to(&state.pool, id, &secret, state.config.secret_grace_period)
        .await
        .map_err(|e| failed(&portal)(e.into()))?;
    let grace = crate::config::spell_duration(state.config.secret_grace_period);
    let shown = Shown {
        secret: Some(secret.expose().to_owned()),
        flash: Some(format!(
            "New signing secret below. For {grace}, requests carry signatures with both the old and the new one."
        )),
        ..Shown::default()
    };
    endpoint_page(&state, &portal, &ep, None, shown).await
}

pub(super) async fn recover(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, form }: Posted<RecoverForm>,
) -> PortalResult {
    portal.require(Scope::Replay)?;
    let id = endpoint_id(&portal, &ep)?;
    let refuse = |why: &str| Shown {
        error: Some(why.to_owned()),
        ..Shown::default()
    };
    let Some(since) = form_time_value(&form.since) else {
        let shown = refuse("Give the time to resend from (UTC).");
        return endpoint_page(&state, &portal, &ep, None, shown).await;
    };
    let Some(window) = Window::new(since, Utc::now()) else {
        let shown = refuse("The time to resend from must be in the past.");
        return endpoint_page(&state, &portal, &ep, None, shown).await;
    };
    let started = state
        .bulk_replays
        .start(portal.app.id, id, window.since, window.until)
        .await
        .map_err(|e| failed(&portal)(e.into()))?;
    let shown = match started {
        Ok(started) => Shown {
            flash: Some(format!(
                "Resending {} webhooks in the background.",
                started.recovery.total
            )),
            ..Shown::default()
        },
        Err(refused) => refuse(&refused.message()),
    };
    endpoint_page(&state, &portal, &ep, None, shown).await
}

pub(super) async fn replay(
    State(state): State<ServerState>,
    Path((_, msg)): Path<(String, String)>,
    Posted { portal, form }: Posted<ReplayForm>,
) -> PortalResult {
    portal.require(Scope::Replay)?;
    let message = path_id(&msg, "message").map_err(failed(&portal))?;
    let endpoint = match form.endpoint_id.as_str() {
        "" => None,
        e => Some(endpoint_id(&portal, e)?),
    };
    let done = actions::replay_message(&state, message, Some(portal.app.id), endpoint)
        .await
        .map_err(|e| failed(&portal)(e.into()))?;
    let flash = match done {
        Ok(queued) => format!("Sending again to {} endpoint(s).", queued.len()),
        Err(refused) => refused.message(),
    };
    message_page(&state, &portal, &msg, Some(flash)).await
}

pub(super) async fn send_test(
    State(state): State<ServerState>,
    Path((_, ep)): Path<(String, String)>,
    Posted { portal, .. }: Posted<TokenOnly>,
) -> PortalResult {
    let id = endpoint_id(&portal, &ep)?;
    let payload = serde_json::json!({
        "type": db::messages::TEST_EVENT_TYPE,
        "endpoint_id": id,
        "sent_at": Utc::now(),
        "note": "A test event sent from the webhook portal.",
    })
    .to_string();
    let sent = async {
        let mut conn = state.pool.acquire().await?;
        db::messages::send_test(&mut conn, portal.app.id, id, &payload).await
    };
    let sent = sent.await.map_err(|e| failed(&portal)(e.into()))?;
    let shown = match sent {
        Ok(message) => Shown {
            flash: Some(format!(
                "Test event {message} sent: its attempt appears below."
            )),
            ..Shown::default()
        },
        Err(crate::db::replays::Refused::NotFound(what)) => {
            return Err(failed(&portal)(ApiError::NotFound(what)));
        }
        Err(refused) => Shown {
            error: Some(refused.message()),
            ..Shown::default()
        },
    };
    endpoint_page(&state, &portal, &ep, None, shown).await
}
