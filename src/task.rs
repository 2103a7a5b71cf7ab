//! Spawned tasks, each with a name: it runs inside a `task` span carrying
//! the name (so every line it logs says which task it is), and its end is
//! logged. `clippy.toml` disallows bare `tokio::spawn` so that no task goes
//! unnamed.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// Spawn `fut` as the task `name` (see the module docs).
pub fn spawn<F>(name: &'static str, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(
        async move {
            let out = fut.await;
            tracing::debug!(task = name, "task ended");
            out
        }
        .instrument(tracing::debug_span!("task", task = name)),
    )
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_named_task_returns_its_output() {
        assert_eq!(super::spawn("test", async { 7 }).await.unwrap(), 7);
    }
}
