//! The read-only web page of a running mirror, at `/` and `/ui/…` (the registry API stays under
//! `/v2/`). Server-rendered with maud (templates checked at compile time, no JavaScript build chain,
//! no asset from outside: it must work on a site with no internet), behind the same credentials as
//! reads.
//!
//! Three pages answer an operator's weekly questions: the mirror (what is on it, how much space
//! each repository takes, is it used), a repository (its tags, what each is, the lines to copy),
//! and a tag (its graph, and which other tags share each blob: what deleting it would free).
//! Sorting, filtering and paging are query parameters, so every view is a link and needs no
//! script. The numbers come from [`model`], which the tests check against the registry API.

pub mod model;
mod pages;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::layout::index::Index;
use crate::layout::Store;

/// What the page needs from the running mirror, which provides it (the server's `App`): the
/// store, and the page's own state kept between requests. The server checks credentials before
/// it hands a request to [`handle`].
pub trait Site: Send + Sync + 'static {
    fn store(&self) -> &Store;
    fn ui(&self) -> &Ui;
}

/// Rows per page of a table.
pub const PAGE: usize = 100;

/// A catalog is reused for this long while `index.json` is unchanged (only "last read" can go
/// stale meanwhile); a push, a delete or a GC gives a new index and so a new catalog at once.
const CATALOG_TTL: Duration = Duration::from_secs(5);
/// The count of stored blobs (a listing of the store) is reused for this long.
const STORED_TTL: Duration = Duration::from_secs(30);

type Cached<T> = Mutex<Option<(Instant, T)>>;

/// What the page keeps between requests: manifest summaries by digest, the last catalog and
/// the last count of stored blobs.
#[derive(Default)]
pub struct Ui {
    pub summaries: model::Summaries,
    catalog: Cached<(Arc<Index>, Arc<model::Catalog>)>,
    stored: Cached<(usize, u64)>,
    /// A background count of stored blobs is running.
    counting: std::sync::atomic::AtomicBool,
}

impl Ui {
    /// The catalog of `index` (blocking).
    pub fn catalog(&self, store: &Store, index: Arc<Index>) -> Arc<model::Catalog> {
        let mut c = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, (i, cat))) = c.as_ref() {
            if Arc::ptr_eq(i, &index) && at.elapsed() < CATALOG_TTL {
                return cat.clone();
            }
        }
        let cat = Arc::new(model::Catalog::build(store, &index, &self.summaries));
        *c = Some((Instant::now(), (index, cat.clone())));
        cat
    }

    /// Blobs on the store and their bytes (blocking). A listing of the store costs a stat per
    /// blob (0.3 s for 40,000), so after the first one it is served from the last count and
    /// refreshed in the background once that is older than [`STORED_TTL`].
    pub fn stored<S: Site>(site: &Arc<S>) -> (usize, u64, Instant) {
        let count = |site: &S| {
            let blobs = site
                .store()
                .wait(site.store().list_blobs())
                .unwrap_or_default();
            (blobs.len(), blobs.iter().map(|b| b.size).sum::<u64>())
        };
        let mut c = site.ui().stored.lock().unwrap_or_else(|p| p.into_inner());
        match c.as_ref() {
            Some((at, v)) => {
                let (v, at) = (*v, *at);
                if at.elapsed() >= STORED_TTL
                    && !site
                        .ui()
                        .counting
                        .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    let a = site.clone();
                    tokio::task::spawn_blocking(move || {
                        let v = count(&a);
                        *a.ui().stored.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((Instant::now(), v));
                        a.ui()
                            .counting
                            .store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                (v.0, v.1, at)
            }
            None => {
                let v = count(site);
                let at = Instant::now();
                *c = Some((at, v));
                (v.0, v.1, at)
            }
        }
    }

    /// Read every manifest once in the background, so the first visit to the page is nearly as
    /// fast as the next ones. The stored-blob count is not taken here: a count made while the
    /// first pushes arrive would be shown as current; the first page counts instead.
    pub fn warm<S: Site>(site: Arc<S>) {
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            if let Ok(index) = site.store().wait(site.store().index()) {
                let c = site.ui().catalog(site.store(), index);
                tracing::debug!(
                    entries = c.rows.len(),
                    ms = start.elapsed().as_millis() as u64,
                    "page catalog ready"
                );
            }
        });
    }
}

/// The query of a table view: filter, sort column, direction, page.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub q: String,
    pub sort: String,
    pub desc: bool,
    pub page: usize,
}

fn param(p: &[(String, String)], key: &str) -> Option<String> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn view(p: &[(String, String)]) -> View {
    View {
        q: param(p, "q").unwrap_or_default(),
        sort: param(p, "sort").unwrap_or_default(),
        desc: param(p, "dir").as_deref() == Some("desc"),
        page: param(p, "page")
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1),
    }
}

/// `GET /`, `/ui/`, `/ui/repo?name=…`, `/ui/tag?repo=…&tag=…` (or `&digest=…`), with the
/// request's query parameters `p` as the server decoded them; credentials already checked.
pub async fn handle<S: Site>(site: Arc<S>, req: Request, p: Vec<(String, String)>) -> Response {
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "the page is read-only\n").into_response();
    }
    let path = req.uri().path().to_owned();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() < 256
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost:5000")
        .to_owned();
    let start = Instant::now();
    let a = site.clone();
    let page = tokio::task::spawn_blocking(move || {
        let index = a.store().wait(a.store().index())?;
        let catalog = a.ui().catalog(a.store(), index);
        let ctx = pages::Ctx {
            store: a.store(),
            ui: a.ui(),
            catalog: catalog.as_ref(),
            host: &host,
        };
        Ok::<_, crate::Error>(match path.as_str() {
            "/" | "/ui" | "/ui/" => Some(pages::mirror(&ctx, &view(&p), Ui::stored(&a))),
            "/ui/repo" => param(&p, "name").and_then(|n| pages::repo(&ctx, &n, &view(&p))),
            "/ui/tag" => param(&p, "repo").and_then(|r| {
                pages::tag(
                    &ctx,
                    &r,
                    param(&p, "tag").as_deref(),
                    param(&p, "digest").as_deref(),
                )
            }),
            _ => None,
        })
    })
    .await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let (status, body) = match page {
        Ok(Ok(Some(html))) => (StatusCode::OK, html),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, pages::not_found()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "rendering the page failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                pages::failed(&e.to_string()),
            )
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::failed(&e.to_string()),
        ),
    };
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing from outside, no inline script: a strict policy costs nothing and keeps it so.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("render;dur={ms:.1}")) {
        h.insert("server-timing", v);
    }
    res
}
