//! What a running registry does on its own, on a schedule: remove abandoned upload sessions, apply
//! retention and collect garbage. Server behaviour, so it lives next to the server (a second
//! storage backend needs the same schedule), and the binary only turns flags into a [`Schedule`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::App;
use crate::keep::retention::Policy;

/// How often each chore runs.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Upload sessions idle this long are removed (at start, then at every tick).
    pub upload_expiry: Duration,
    /// Retention (when set) then GC, this often; never when `None`.
    pub gc_interval: Option<Duration>,
    /// Unreferenced blobs younger than this are kept by GC.
    pub gc_grace: Duration,
    /// Applied before each scheduled GC.
    pub retention: Option<Policy>,
}

/// The longest wait between two ticks: upload expiry runs at least hourly.
const MAX_TICK: Duration = Duration::from_secs(3600);

/// Remove upload sessions idle for longer than `max_age`, and say how many went.
pub fn expire_uploads(app: &App, max_age: Duration) -> crate::Result<usize> {
    let n = app.store.wait(app.store.expire_uploads(max_age))?;
    if n > 0 {
        tracing::info!(removed = n, "expired upload sessions");
    }
    Ok(n)
}

/// Run the schedule forever (spawn it; dropping the task stops it). Read-only stores have
/// nothing to do and return at once.
pub async fn run(app: Arc<App>, schedule: Schedule) {
    if app.store.read_only() {
        return;
    }
    let tick = schedule.gc_interval.map_or(MAX_TICK, |g| g.min(MAX_TICK));
    let mut since_gc = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        since_gc += tick;
        let a = app.clone();
        let expiry = schedule.upload_expiry;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || expire_uploads(&a, expiry)).await {
            tracing::warn!(error = %e, "expiring upload sessions failed");
        }
        if schedule.gc_interval.is_some_and(|g| since_gc >= g) {
            since_gc = Duration::ZERO;
            collect(&app, &schedule).await;
        }
    }
}

/// One scheduled round: retention (if any), then GC. Failures are logged; the server goes on.
pub async fn collect(app: &Arc<App>, schedule: &Schedule) {
    if let Some(policy) = schedule.retention.clone() {
        let a = app.clone();
        let plan =
            tokio::task::spawn_blocking(move || crate::keep::retention::plan(&a.store, &policy))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        match plan {
            Ok(plan) if plan.remove.is_empty() => {}
            Ok(plan) => match crate::keep::retention::apply(&app.store, &plan).await {
                Ok(n) => {
                    app.metrics
                        .retention_tags_removed
                        .fetch_add(n as u64, Relaxed);
                    tracing::info!(
                        tags_removed = n,
                        bytes_to_return = plan.bytes_freed,
                        "retention"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            },
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
    let a = app.clone();
    let grace = schedule.gc_grace;
    let r = tokio::task::spawn_blocking(move || crate::keep::gc::gc(&a.store, grace, false)).await;
    match r {
        Ok(Ok(r)) => {
            app.metrics.gc_runs.fetch_add(1, Relaxed);
            app.metrics.gc_bytes_freed.fetch_add(r.bytes_freed, Relaxed);
            tracing::info!(%r, "gc")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "gc failed"),
        Err(e) => tracing::warn!(error = %e, "gc failed"),
    }
}
