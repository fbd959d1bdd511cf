//! `/metrics` in the Prometheus text format, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub auth_failures: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_bytes_freed: AtomicU64,
    pub retention_tags_removed: AtomicU64,
    /// (when, blobs, bytes): counting a large store takes a while, so scrapes reuse it for a minute.
    stored: Mutex<Option<(Instant, u64, u64)>>,
}

/// A short, bounded label for a request path.
pub fn endpoint_label(ep: Option<&Endpoint>) -> &'static str {
    match ep {
        Some(Endpoint::Base) => "base",
        Some(Endpoint::Catalog) => "catalog",
        Some(Endpoint::Tags { .. }) => "tags",
        Some(Endpoint::Manifest { .. }) => "manifest",
        Some(Endpoint::Blob { .. }) => "blob",
        Some(Endpoint::UploadStart { .. }) | Some(Endpoint::Upload { .. }) => "upload",
        Some(Endpoint::Referrers { .. }) => "referrers",
        None => "other",
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, method: &str, status: u16, bytes_out: u64) {
        // Methods are a small fixed set for real clients; anything else is folded into one label.
        let method = match method {
            "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE" => method.to_owned(),
            _ => "OTHER".to_owned(),
        };
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, method, status))
            .or_default() += 1;
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    fn stored(&self, store: &crate::layout::Store) -> (u64, u64) {
        let mut cache = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, n, b)) = *cache {
            if at.elapsed() < Duration::from_secs(60) {
                return (n, b);
            }
        }
        let (n, b) = store.wait(store.stored());
        *cache = Some((Instant::now(), n, b));
        (n, b)
    }

    /// Blocking: counting what is stored lists the store (cached for a minute).
    pub fn render(
        &self,
        store: &crate::layout::Store,
        uploads_in_flight: usize,
        pull: Option<&crate::mirror::proxy::Counters>,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferry_http_requests_total Requests by endpoint, method and status."
        );
        let _ = writeln!(out, "# TYPE ferry_http_requests_total counter");
        for ((ep, m, st), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "ferry_http_requests_total{{endpoint=\"{ep}\",method=\"{m}\",status=\"{st}\"}} {n}"
            );
        }
        let (blobs, bytes) = self.stored(store);
        let gauges: [(&str, &str, &str, u64); 10] = [
            (
                "ferry_bytes_received_total",
                "counter",
                "Blob bytes received in uploads.",
                self.bytes_in.load(Ordering::Relaxed),
            ),
            (
                "ferry_bytes_sent_total",
                "counter",
                "Response body bytes sent.",
                self.bytes_out.load(Ordering::Relaxed),
            ),
            (
                "ferry_upload_sessions_open",
                "gauge",
                "Upload sessions in progress.",
                store.open_uploads() as u64,
            ),
            (
                "ferry_upload_requests_in_flight",
                "gauge",
                "Upload requests receiving data now (capped by --max-uploads).",
                uploads_in_flight as u64,
            ),
            (
                "ferry_blobs_stored",
                "gauge",
                "Blob and manifest files in the store.",
                blobs,
            ),
            (
                "ferry_bytes_stored",
                "gauge",
                "Bytes in the store's blob files.",
                bytes,
            ),
            (
                "ferry_gc_runs_total",
                "counter",
                "Garbage collections run by this server.",
                self.gc_runs.load(Ordering::Relaxed),
            ),
            (
                "ferry_gc_bytes_freed_total",
                "counter",
                "Bytes freed by those collections.",
                self.gc_bytes_freed.load(Ordering::Relaxed),
            ),
            (
                "ferry_retention_tags_removed_total",
                "counter",
                "Tags removed by scheduled retention.",
                self.retention_tags_removed.load(Ordering::Relaxed),
            ),
            (
                "ferry_auth_failures_total",
                "counter",
                "Requests refused for missing or wrong credentials.",
                self.auth_failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        // Pull-through (`serve --upstream`): absent without an upstream.
        if let Some(c) = pull {
            let counters: [(&str, &str, &AtomicU64); 5] = [
                (
                    "ferry_pull_through_blob_fetches_total",
                    "Blob bodies fetched from upstreams (one per blob, however many clients wait).",
                    &c.blob_fetches,
                ),
                (
                    "ferry_pull_through_blob_fetch_failures_total",
                    "Blob fetches that failed; nothing was stored.",
                    &c.blob_fetch_failures,
                ),
                (
                    "ferry_pull_through_manifest_fetches_total",
                    "Manifests fetched from upstreams.",
                    &c.manifest_fetches,
                ),
                (
                    "ferry_pull_through_tag_checks_total",
                    "Tags re-checked against their upstream after --upstream-ttl.",
                    &c.tag_checks,
                ),
                (
                    "ferry_pull_through_served_stale_total",
                    "Tag re-checks answered from the store because the upstream could not be reached or read.",
                    &c.served_stale,
                ),
            ];
            for (name, help, v) in counters {
                let v = v.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            }
        }
        out
    }
}
