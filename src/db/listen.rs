//! LISTEN/NOTIFY as a wake-up signal: notifications carry no data, they only say "look
//! again", so a lost one costs latency (the caller also polls), never correctness.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Calls `wake` for every notification on `channel` until cancelled, reconnecting when the
/// connection drops. `wake` is also called after each (re)connection, since anything
/// announced while nobody listened is otherwise missed until the next poll.
pub async fn forward(
    pool: PgPool,
    channel: &'static str,
    wake: impl Fn() + Send + 'static,
    cancel: CancellationToken,
) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, channel, "cannot LISTEN; relying on polling for now");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = cancel.cancelled() => return,
                    }
                }
            },
            _ = cancel.cancelled() => return,
        };
        wake();
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(_) => wake(),
                    Err(e) => {
                        warn!(error = %e, channel, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
                _ = cancel.cancelled() => return,
            }
        }
    }
}
