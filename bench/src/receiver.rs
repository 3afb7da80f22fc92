//! The counting receiver: records the first arrival of every (endpoint, webhook-id), counts
//! duplicates, and answers 204, or slowly, or with a failure, as each endpoint is told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald::domain::SigningSecret;

/// The behaviours key for endpoints without one of their own.
const DEFAULT: &str = "*";

/// How one endpoint (`/e/{name}`) behaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub delay: Duration,
    /// Share of requests answered 500, 0.0 to 1.0.
    pub fail_share: f64,
    /// When set, every request's signature is checked with it.
    pub secret: Option<SigningSecret>,
}

#[derive(Default)]
pub struct Counts {
    arrivals: Mutex<HashMap<(String, String), Instant>>,
    behaviours: RwLock<HashMap<String, Behaviour>>,
    pub requests: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed_on_purpose: AtomicU64,
    pub bad_signatures: AtomicU64,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
}

impl Receiver {
    pub async fn start(listen: SocketAddr) -> anyhow::Result<Self> {
        let counts = Arc::new(Counts::default());
        let router = Router::new()
            .route("/e/{name}", post(receive))
            .with_state(counts.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { addr, counts })
    }

    pub fn url(&self, endpoint: &str) -> String {
        format!("http://{}/e/{endpoint}", self.addr)
    }

    pub fn set(&self, endpoint: &str, behaviour: Behaviour) {
        self.counts
            .behaviours
            .write()
            .unwrap()
            .insert(endpoint.to_owned(), behaviour);
    }

    /// How endpoints without a behaviour of their own answer.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.set(DEFAULT, behaviour);
    }

    /// First arrival of `id` at `endpoint`.
    pub fn arrival(&self, endpoint: &str, id: &str) -> Option<Instant> {
        self.counts
            .arrivals
            .lock()
            .unwrap()
            .get(&(endpoint.to_owned(), id.to_owned()))
            .copied()
    }

    /// Distinct (endpoint, webhook-id) pairs received so far.
    pub fn distinct(&self) -> usize {
        self.counts.arrivals.lock().unwrap().len()
    }

    pub fn distinct_at(&self, endpoint: &str) -> usize {
        self.counts
            .arrivals
            .lock()
            .unwrap()
            .keys()
            .filter(|(e, _)| e == endpoint)
            .count()
    }
}

async fn receive(
    State(counts): State<Arc<Counts>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let behaviour = {
        let all = counts.behaviours.read().unwrap();
        all.get(&endpoint)
            .or_else(|| all.get(DEFAULT))
            .cloned()
            .unwrap_or_default()
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let id = header("webhook-id").to_owned();
    if let Some(secret) = &behaviour.secret {
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let verified = herald::verify(
            secret,
            &id,
            header("webhook-timestamp"),
            header("webhook-signature"),
            &body,
            now_secs,
            300,
        );
        if verified.is_err() {
            counts.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
    }
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    if behaviour.fail_share > 0.0 && pseudo_random(&id, &counts) < behaviour.fail_share {
        counts.failed_on_purpose.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let mut arrivals = counts.arrivals.lock().unwrap();
    match arrivals.entry((endpoint, id)) {
        std::collections::hash_map::Entry::Occupied(_) => {
            counts.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(now);
        }
    }
    StatusCode::NO_CONTENT
}

/// A cheap, well-spread number in [0, 1) from the id and the request counter, so retries
/// of one message do not all fail alike.
fn pseudo_random(id: &str, counts: &Counts) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ counts.requests.load(Ordering::Relaxed);
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}
