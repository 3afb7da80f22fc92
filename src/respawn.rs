//! Background tasks that must outlive a bug: one that panics is logged and started again,
//! rather than leaving the process up but without it.

use std::future::Future;
use std::time::Duration;

use tracing::error;

/// How long a task that panicked waits before it is started again: a panic on every start
/// must not spin a core.
const PAUSE: Duration = Duration::from_millis(100);

/// Runs `task()` until it returns, starting it again each time it panics. Returns when it
/// returns normally or is cancelled (the runtime shutting down).
pub async fn respawning<F, Fut>(what: &'static str, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(task()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                error!(task = what, "background task panicked; starting it again");
                tokio::time::sleep(PAUSE).await;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::respawning;

    #[tokio::test]
    async fn a_task_that_panics_is_started_again_and_one_that_returns_is_not() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        respawning("test", move || {
            let starts = counted.clone();
            async move {
                // Panics on its first two starts, then returns.
                if starts.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("on purpose");
                }
            }
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }
}
