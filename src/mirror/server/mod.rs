//! The registry: an HTTP front (OCI distribution-spec v1.1) over a [`Store`].
//!
//! [`run`] takes an already bound listener and a shutdown future (as mini-redis does), so tests
//! bind `127.0.0.1:0` and the binary only parses arguments. The accept loop is written out rather
//! than using `axum::serve` for one reason: BuildKit configured with `insecure = true` opens every
//! connection with a TLS ClientHello and falls back to plain HTTP only when the answer starts with
//! `HTTP/`. A plain-HTTP server must therefore *answer* a ClientHello with `HTTP/1.0 400`, not
//! drop it, and that needs a look at the first byte before hyper sees the connection.

pub mod auth;
pub mod endpoint;
pub mod error;
pub mod handlers;
pub mod limits;
pub mod maintenance;
pub mod metrics;
pub mod range;
pub mod signals;
pub mod zerocopy;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::IntoResponse as _;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::layout::Store;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared state of a running registry.
pub struct App {
    pub store: Store,
    /// `--htpasswd`: when set, requests need credentials (reads too, unless anonymous reads).
    pub auth: Option<Arc<auth::Htpasswd>>,
    pub metrics: metrics::Metrics,
    pub limits: limits::Limits,
    pub uploads: Arc<limits::UploadGate>,
    /// Who opened each upload session (the bound per client).
    pub sessions: limits::SessionOwners,
    /// `--redirect`: blob GETs answered with a 307 to a presigned URL of the object store.
    pub redirect: bool,
    /// The web page's state (manifest summaries).
    pub ui: crate::mirror::ui::Ui,
    /// `--upstream`: what the store lacks is fetched from these registries.
    pub pull: Option<Arc<crate::mirror::proxy::PullThrough>>,
    /// What builds used and what could not be answered.
    pub record: Arc<crate::mirror::record::Recorder>,
    /// `--read-only` beside `--upstream`: clients' writes are refused while pull-through still
    /// stores what it fetches (the store itself is writable).
    pub refuse_writes: bool,
    /// `--metrics-public`: `/metrics` without credentials under `--htpasswd`.
    pub metrics_public: bool,
}

impl App {
    pub fn new(store: Store, auth: Option<auth::Htpasswd>) -> App {
        App {
            store,
            auth: auth.map(Arc::new),
            metrics: Default::default(),
            limits: Default::default(),
            uploads: Default::default(),
            sessions: Default::default(),
            redirect: false,
            ui: Default::default(),
            pull: None,
            record: Default::default(),
            refuse_writes: false,
            metrics_public: false,
        }
    }

    /// Refuse every client write (pushes, deletes) while the store stays writable for
    /// pull-through.
    pub fn with_refuse_writes(mut self, refuse: bool) -> App {
        self.refuse_writes = refuse;
        self
    }

    /// Fetch what the store lacks from upstream registries.
    pub fn with_pull_through(mut self, pull: Option<crate::mirror::proxy::PullThrough>) -> App {
        self.pull = pull.map(Arc::new);
        self
    }

    /// Answer blob GETs with a 307 to the store (see [`crate::layout::Store::blob_url`]).
    pub fn with_redirect(mut self, redirect: bool) -> App {
        self.redirect = redirect;
        self
    }

    /// Serve `/metrics` to anyone, even when `--htpasswd` asks reads for credentials.
    pub fn with_metrics_public(mut self, public: bool) -> App {
        self.metrics_public = public;
        self
    }

    pub fn with_limits(mut self, limits: limits::Limits) -> App {
        self.limits = limits;
        self
    }
}

impl AsRef<Store> for App {
    fn as_ref(&self) -> &Store {
        &self.store
    }
}

impl crate::mirror::ui::Site for App {
    fn store(&self) -> &Store {
        &self.store
    }
    fn ui(&self) -> &crate::mirror::ui::Ui {
        &self.ui
    }
}

/// The web page, behind the same credentials as reads.
async fn page(app: Arc<App>, req: Request) -> axum::response::Response {
    if let Err(denied) =
        handlers::authorize(&app, req.headers(), handlers::client_of(&req), false).await
    {
        return denied;
    }
    let params = handlers::query_params(&req);
    crate::mirror::ui::handle(app, req, params).await
}

/// The registry as an axum `Router` (useful on its own in tests).
pub fn router(app: Arc<App>) -> Router {
    let (a1, a2, a3, a4) = (app.clone(), app.clone(), app.clone(), app.clone());
    let page = move |req: Request| page(a4.clone(), req);
    Router::new()
        .route("/", axum::routing::any(page.clone()))
        .route("/ui", axum::routing::any(page.clone()))
        .route("/ui/", axum::routing::any(page.clone()))
        .route("/ui/repo", axum::routing::any(page.clone()))
        .route("/ui/tag", axum::routing::any(page))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || handlers::readyz(a1.clone())),
        )
        .route(
            "/metrics",
            axum::routing::get(move |req: Request| async move {
                let a = a2.clone();
                // What a mirror holds and serves is no one's business without credentials when
                // pulls need them: /metrics follows the rule reads follow, unless made public.
                if !a.metrics_public {
                    if let Err(res) =
                        handlers::authorize(&a, req.headers(), handlers::client_of(&req), false)
                            .await
                    {
                        return res;
                    }
                }
                // Counting stored blobs lists the store: on the blocking pool.
                let a = a.clone();
                let text = tokio::task::spawn_blocking(move || {
                    let pull = a.pull.as_ref().map(|p| &p.counters);
                    a.metrics.render(&a.store, a.uploads.in_flight(), pull)
                })
                .await
                .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
                    .into_response()
            }),
        )
        .fallback(move |req: Request| handlers::handle(app.clone(), req))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            common_headers_and_log(a3.clone(), req, next)
        }))
}

async fn common_headers_and_log(app: Arc<App>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut res = next.run(req).await;
    let sent = res
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| method != axum::http::Method::HEAD)
        .unwrap_or(0);
    let ep = endpoint::parse_endpoint(&path);
    app.metrics.request(
        metrics::endpoint_label(ep.as_ref()),
        method.as_str(),
        res.status().as_u16(),
        sent,
    );
    res.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::info!(
        %method,
        path,
        status = res.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    res
}

/// Serve until `shutdown` resolves, then stop accepting, let in-flight requests finish (up to
/// [`DRAIN_TIMEOUT`]) and return. With `tls`, every connection must open with a TLS handshake
/// (plain HTTP gets a `400` saying so); without it, a TLS ClientHello gets that `400` instead.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<crate::mirror::tls::ServerTls>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router(app.clone());
    crate::mirror::ui::Ui::warm(app.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Set when the shutdown starts: a connection that has not sent its first byte yet has no
    // request in flight and is closed then, instead of holding the drain for the header
    // timeout (a client's pool may hold such a connection, opened and never used).
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut refused = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE (out of descriptors) and friends: the connection stays in the
                    // kernel's backlog and is accepted once descriptors free up. Back off
                    // instead of spinning, and say so once per interval, not per attempt.
                    refused.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = &mut shutdown => break,
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        refused.recovered();
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            router: router.clone(),
            limits: app.limits.clone(),
            peer,
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                f = first_byte(&stream, conn.limits.header_timeout) => f,
                _ = closing.wait_for(|c| *c) => None,
            };
            match (first, tls) {
                (None, _) => {}
                (Some(0x16), None) => {
                    tracing::debug!(%peer, "TLS ClientHello on the plain-HTTP port; answering 400");
                    reject(stream, "Client sent an HTTPS request to an HTTP server.").await;
                }
                (Some(0x16), Some(tls)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                    match tokio::time::timeout(conn.limits.header_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => conn.serve(s, None).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
                (Some(_), Some(_)) => {
                    tracing::debug!(%peer, "plain HTTP on the TLS port; answering 400");
                    reject(stream, "Client sent an HTTP request to an HTTPS server.").await;
                }
                (Some(_), None) => {
                    // Plain TCP: blob downloads can go out with sendfile (see `zerocopy`).
                    let regions = Arc::new(zerocopy::Regions::default());
                    let io = zerocopy::ZeroCopyTcp::new(stream, regions.clone());
                    conn.serve(io, Some(regions)).await
                }
            }
        });
    }
    drop(listener);
    closing_tx.send_replace(true);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in time");
    }
    Ok(())
}

/// Connections the kernel holds for the accept loop (capped by `net.core.somaxconn`, 4096 on
/// current kernels). The standard library's 128 is too few for a build farm's burst: past it,
/// the kernel drops new connections' SYNs and clients retry after 1, 3, 7 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long the accept loop waits after a failed accept (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this long while accepts keep failing.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Failed accepts since the last warning, so a descriptor shortage is logged once per
/// [`ACCEPT_WARN_EVERY`] with a count instead of ten times a second.
#[derive(Default)]
struct AcceptFailures {
    since_warning: u64,
    warned: Option<Instant>,
}

impl AcceptFailures {
    fn failed(&mut self, e: &std::io::Error) {
        self.since_warning += 1;
        if self.warned.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
            tracing::warn!(
                error = %e,
                failed_accepts = self.since_warning,
                "cannot accept connections (new ones wait in the backlog); retrying"
            );
            self.warned = Some(Instant::now());
            self.since_warning = 0;
        }
    }

    fn recovered(&mut self) {
        if self.warned.take().is_some() {
            tracing::info!("accepting connections again");
            self.since_warning = 0;
        }
    }
}

/// One accepted connection, ready to be served over any byte stream (TCP or TLS).
struct Conn {
    router: Router,
    limits: limits::Limits,
    peer: std::net::SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    /// `regions`: the connection can send file regions with `sendfile` (plain TCP); requests
    /// carry it so that blob downloads use it.
    async fn serve<I>(self, io: I, regions: Option<Arc<zerocopy::Regions>>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            router,
            limits,
            peer,
            watcher,
        } = self;
        let client = limits::ClientAddr(peer.ip());
        // Handlers running on this connection. While one runs, silence on the wire is the
        // server's doing (an fsync of a large blob on slow media can take minutes), not the
        // client's: the idle watchdog waits. A stalled request body is the body guard's business,
        // a stalled download (handler done, body streaming) the watchdog's.
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let busy_svc = busy.clone();
        let regions_svc = regions.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(client);
                if let Some(r) = &regions_svc {
                    req.extensions_mut().insert(r.clone());
                }
                let running = limits::Running::new(busy_svc.clone());
                let call = router.clone().call(req.map(axum::body::Body::new));
                async move {
                    let res = call.await;
                    drop(running);
                    res
                }
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits::MAX_HEADER_BYTES);
        if regions.is_some() {
            // Queue body buffers as they are, never copy them into hyper's own buffer: the
            // zero-copy body's placeholder slices must reach the I/O object by address.
            builder.http1().writev(true);
        }
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(limits::MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(limits::MAX_H2_STREAMS)
            // Memory per connection: what HTTP/2 buffers for a connection is bounded by these
            // (received data the handlers have not taken, and body data queued to send), not
            // by hyper's defaults (1 MiB windows per stream, 400 KiB send buffers).
            .initial_stream_window_size(limits::H2_STREAM_WINDOW)
            .initial_connection_window_size(limits::H2_CONN_WINDOW)
            .max_send_buf_size(limits::H2_SEND_BUF);
        let activity = limits::Activity::new();
        let io = limits::Watched::new(io, activity.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = watcher.watch(conn.into_owned());
        tokio::pin!(conn);
        let idle = limits.idle_timeout;
        let tick = (idle / 4).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep(tick) => {
                    let running = busy.load(std::sync::atomic::Ordering::Relaxed);
                    if running == 0 && activity.idle_for() >= idle {
                        tracing::info!(%peer, idle_s = idle.as_secs(), "closing an idle connection");
                        return;
                    }
                }
            }
        }
    }
}

/// The first byte a client sends, without consuming it; `None` if it sends none within `wait`.
async fn first_byte(stream: &TcpStream, wait: Duration) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(wait, stream.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

async fn reject(mut stream: TcpStream, why: &str) {
    let msg = format!(
        "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{why}\n"
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.shutdown().await;
}
