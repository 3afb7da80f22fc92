//! Values parsed once at the edge; past this point they are known to be valid.

mod brand;
mod event_type;
mod header;
mod id;
mod position;
pub mod routing;
mod secret;
mod state;
mod url;
mod window;

pub use brand::Brand;
pub use event_type::EventType;
pub use header::refused_header;
pub use id::{AppId, AttemptId, DeliveryId, EndpointId, InvalidId, MessageId, RemovalId, TokenId};
pub use position::{InvalidPosition, Position};
pub use secret::SigningSecret;
pub use state::{AttemptOutcome, AttemptTrigger, DeliveryState, EventKind};
pub use url::{EndpointUrl, ip_literal, is_public_ip, redact_userinfo, short_url};
pub use window::Window;
