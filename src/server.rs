//! The server (one `herald serve` process). Start-up: connect, migrate, bind, and run the API and the worker pool together until
//! the cancellation token fires.

use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;
use tracing::{info, warn};

use crate::config::Config;
use crate::db;
use crate::delivery::{BulkReplays, WorkerPool, WorkerSettings, client};
use crate::feed::{Feed, FeedSettings};
use crate::http::{self, ServerState};
use crate::probe::Probe;
use crate::removal::Removals;
use crate::retention;

/// Connections of the live feed's own pool: its reader keeps one, catch-ups and pruning
/// share the rest.
const FEED_CONNECTIONS: u32 = 4;
/// Connections of the probes (`/readyz`, the queue gauges of `/metrics`): one each.
const PROBE_CONNECTIONS: u32 = 2;

pub struct Server {
    listener: TcpListener,
    router: axum::Router,
    pool: PgPool,
    workers: WorkerPool,
    bulk_replays: BulkReplays,
    cancel: CancellationToken,
    limits: ServerLimits,
}

impl Server {
    /// Binds `config.listen` (port 0 picks a free port) and starts the workers.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = db::connect_with_window(
            config.database_url.expose(),
            config.db_pool_size,
            config.idempotency_window,
            config
                .operational_app
                .as_deref()
                .map(|app| (app, config.operational_failing_share)),
        )
        .await
        .context("cannot connect to the database")?;
        db::migrate(&pool).await.context("migrations failed")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let mut config = config;
        if config.public_url == format!("http://{}", config.listen) {
            // No public URL was configured: it is wherever we are listening, which is
            // only known now when the port was 0.
            config.public_url = format!("http://{}", listener.local_addr()?);
        }
        let client = client::build(
            config.request_timeout,
            config.allow_private_targets,
            config.worker_concurrency,
        )?;
        // Private targets for the operator's endpoints but not for the portal's: those are
        // sent with a client of their own, which resolves to public addresses only.
        let portal_client = (config.allow_private_targets && !config.portal_allow_private_targets)
            .then(|| client::build(config.request_timeout, false, config.worker_concurrency))
            .transpose()?;
        let cancel = CancellationToken::new();
        let workers = WorkerPool::spawn(
            pool.clone(),
            client,
            portal_client,
            WorkerSettings::from(&config),
            cancel.clone(),
        );
        // The feed reads on connections of its own: it neither waits behind sends and
        // claims when the API is busy, nor takes connections from them when many
        // subscribers catch up at once.
        let feed_pool = db::connect(config.database_url.expose(), FEED_CONNECTIONS)
            .await
            .context("cannot connect to the database")?;
        let feed = Feed::spawn(feed_pool, FeedSettings::from(&config), cancel.clone())
            .await
            .context("cannot start the live feed")?;
        let bulk_replays = BulkReplays::spawn(pool.clone(), config.recover_batch, cancel.clone());
        let layout = db::history::Layout {
            interval: config.partition_interval,
            retention: config.retention,
        };
        retention::spawn(pool.clone(), layout, cancel.clone()).await;
        let removals = Removals::spawn(pool.clone(), cancel.clone());
        // The probes too: however many scrapes come, and however busy the shared pool is,
        // they cost one readiness check a second and one queue count per interval.
        let probe_pool = db::connect(config.database_url.expose(), PROBE_CONNECTIONS)
            .await
            .context("cannot connect to the database")?;
        let probe = Probe::spawn(probe_pool, config.metrics_interval, cancel.clone()).await;
        let limits = ServerLimits {
            header_timeout: config.header_timeout,
            max_connections: config.max_connections,
            grace: config.shutdown_grace,
        };
        if config.operational_app.is_some() {
            crate::operational::install_event_types(&pool)
                .await
                .context("cannot write Herald's operational event types")?;
            // A fact names the application it goes to: whichever process sends it, it goes
            // where it was recorded for.
            crate::operational::spawn(
                config.database_url.expose().to_owned(),
                pool.clone(),
                config.operational_coalesce,
                cancel.clone(),
            );
        }
        // Loaded before anything is answered: no send goes unchecked against it.
        let catalog = crate::catalog::Catalog::spawn(
            config.database_url.expose().to_owned(),
            pool.clone(),
            cancel.clone(),
        )
        .await
        .context("cannot read the event-type catalog")?;
        let router = http::router(ServerState::new(
            pool.clone(),
            config,
            http::Services {
                direct: workers.direct(),
                feed,
                bulk_replays: bulk_replays.clone(),
                removals,
                probe,
                catalog,
            },
        ));
        Ok(Self {
            listener,
            router,
            pool,
            workers,
            bulk_replays,
            cancel,
            limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Cancel this to shut down: the server stops accepting, workers stop claiming and
    /// finish what is in flight within the grace period.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        info!(addr = %self.local_addr(), "herald listening");
        // The server and the workers wind down side by side, each within the grace period.
        let workers = async {
            self.workers.join().await;
            self.bulk_replays.join().await;
        };
        tokio::join!(
            serve(self.listener, self.router, self.limits, self.cancel.clone()),
            workers
        );
        self.pool.close().await;
        info!("herald stopped");
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct ServerLimits {
    header_timeout: Duration,
    max_connections: usize,
    grace: Duration,
}

/// The accept loop, written out rather than `axum::serve` for what that does not offer: a
/// timer (without one hyper applies no header timeout at all, and a client sending half a
/// request head holds its connection forever), a cap on connections, and an end to
/// shutdown when a client does not let go.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // Fires when the grace period is over: connections still open are dropped.
    let hard_stop = CancellationToken::new();
    // The peer address reaches handlers as `ConnectInfo`: failed tokens are throttled per
    // client address.
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        // At the cap, new connections wait in the kernel's backlog, and the descriptors
        // the workers need for their sends and DNS lookups stay free.
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept:
                    // retrying at once would spin.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes (API answers, SSE events) go out at once instead of waiting for
        // the previous segment's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(service) = make_service.call(peer).await;
        let service = TowerToHyperService::new(service);
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let (cancel, hard_stop) = (cancel.clone(), hard_stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = cancel.cancelled() => {}
            }
            // Finish the request in progress, then close; SSE streams end on `cancel`.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection => {}
                _ = hard_stop.cancelled() => {}
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "closing the connections still open after the shutdown grace period"
        );
        hard_stop.cancel();
        connections.wait().await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
