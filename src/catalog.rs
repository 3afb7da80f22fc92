//! The event-type catalog as each process holds it, to check sends without a query: every
//! type with its compiled schema. Loaded before the server answers anything, reloaded by
//! the process that changes it at once and by every other within milliseconds (a
//! `pg_notify` on [`CHANGED`]), and every [`POLL`] in case a notice was missed while the
//! listener reconnected.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;

/// The channel on which a change of the catalog is announced.
pub const CHANGED: &str = "herald_event_types";
/// How often the catalog is read again anyway.
const POLL: Duration = Duration::from_secs(10);

/// One type as a send needs it, with what the catalog publishes of it (the OpenAPI
/// document's `webhooks`, the portal's page).
pub struct Entry {
    pub archived: bool,
    /// `None`: the type has no schema.
    pub validator: Option<jsonschema::Validator>,
    pub description: String,
    /// The schema as stored; `None`: any payload.
    pub schema: Option<serde_json::Value>,
    pub examples: Vec<serde_json::Value>,
    pub deprecated: bool,
}

#[derive(Default)]
pub struct Catalog {
    entries: RwLock<Arc<HashMap<String, Arc<Entry>>>>,
    /// What the catalog was when last read (its row count and latest change): a poll that
    /// finds the same reads nothing more.
    seen: std::sync::Mutex<Option<(i64, Option<chrono::DateTime<chrono::Utc>>)>>,
}

impl Entry {
    /// One of Herald's operational event types (`crate::operational`).
    pub fn is_operational(&self) -> bool {
        self.description.starts_with(crate::operational::OWN)
    }
}

impl Catalog {
    /// The type `name`, if the catalog has it.
    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .expect("catalog lock")
            .get(name)
            .cloned()
    }

    /// Every type that is not archived, by name: what customers are told they may receive.
    pub fn published(&self) -> Vec<(String, Arc<Entry>)> {
        let entries = self.entries.read().expect("catalog lock");
        let mut published: Vec<_> = entries
            .iter()
            .filter(|(_, entry)| !entry.archived)
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        drop(entries);
        published.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        published
    }

    /// The entry a send or a subscription names, or why it may not name it: the type is
    /// archived, or (`required`: `HERALD_REQUIRE_EVENT_TYPES`) the catalog lacks it.
    pub fn usable(&self, name: &str, required: bool) -> Result<Option<Arc<Entry>>, String> {
        match self.get(name) {
            None if required => Err(format!(
                "event type {name:?} is not in the catalog (POST /event-types adds it)"
            )),
            None => Ok(None),
            Some(entry) if entry.archived => Err(format!(
                "event type {name:?} is archived: it is no longer sent"
            )),
            Some(entry) => Ok(Some(entry)),
        }
    }

    /// What the customer portal offers: the published types but Herald's own operational
    /// ones, which are the operator's (sent to the operator's application only).
    pub fn for_customers(&self) -> Vec<(String, Arc<Entry>)> {
        let mut published = self.published();
        published.retain(|(_, entry)| !entry.is_operational());
        published
    }

    /// Whether the portal has any type to offer.
    pub fn publishes_any(&self) -> bool {
        let entries = self.entries.read().expect("catalog lock");
        entries
            .values()
            .any(|entry| !entry.archived && !entry.is_operational())
    }

    /// Reads the whole catalog again. A stored schema that no longer compiles (it was
    /// checked when stored) is kept as "no schema", and logged.
    pub async fn reload(&self, pool: &PgPool) -> sqlx::Result<()> {
        let seen: (i64, Option<chrono::DateTime<chrono::Utc>>) =
            sqlx::query_as("select count(*), max(updated_at) from event_type")
                .fetch_one(pool)
                .await?;
        if *self.seen.lock().expect("catalog lock") == Some(seen) {
            return Ok(());
        }
        let mut entries = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let rows = db::event_types::list(pool, after.as_deref(), 1000).await?;
            let more = rows.len() > 1000;
            for row in rows.into_iter().take(1000) {
                let validator = row.schema.as_ref().and_then(|schema| {
                    jsonschema::draft202012::new(&schema.0)
                        .inspect_err(|e| {
                            tracing::error!(event_type = %row.name, error = %e, "stored schema does not compile; not checked");
                        })
                        .ok()
                });
                after = Some(row.name.clone());
                entries.insert(
                    row.name,
                    Arc::new(Entry {
                        archived: row.archived,
                        validator,
                        description: row.description,
                        schema: row.schema.map(|schema| schema.0),
                        examples: row.examples.0,
                        deprecated: row.deprecated,
                    }),
                );
            }
            if !more {
                break;
            }
        }
        *self.entries.write().expect("catalog lock") = Arc::new(entries);
        *self.seen.lock().expect("catalog lock") = Some(seen);
        Ok(())
    }

    /// Loads the catalog, then follows its changes until `cancel`.
    pub async fn spawn(
        database_url: String,
        pool: PgPool,
        cancel: CancellationToken,
    ) -> sqlx::Result<Arc<Catalog>> {
        let catalog = Arc::new(Catalog::default());
        catalog.reload(&pool).await?;
        let follower = catalog.clone();
        tokio::spawn(async move {
            loop {
                let listen = follow(&database_url, &pool, &follower);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    Err(e) = listen => {
                        tracing::warn!(error = %e, "not following event-type changes; retrying");
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(catalog)
    }
}

async fn follow(database_url: &str, pool: &PgPool, catalog: &Catalog) -> sqlx::Result<()> {
    let mut listener = sqlx::postgres::PgListener::connect(database_url).await?;
    listener.listen(CHANGED).await?;
    // What changed while nobody listened.
    catalog.reload(pool).await?;
    loop {
        match tokio::time::timeout(POLL, listener.recv()).await {
            Ok(notice) => {
                notice?;
            }
            Err(_elapsed) => {}
        }
        catalog.reload(pool).await?;
    }
}

/// Announces a change of the catalog to every process (at commit, with `db`'s
/// transaction).
pub async fn announce(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANGED)
        .execute(db)
        .await
        .map(|_| ())
}
