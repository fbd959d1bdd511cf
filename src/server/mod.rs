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
pub mod metrics;
pub mod range;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

use crate::layout::Store;

/// How long a connection may stay silent before its first byte.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared state of a running registry.
pub struct App {
    pub store: Store,
    /// `--htpasswd`: when set, requests need credentials (reads too, unless anonymous reads).
    pub auth: Option<auth::Htpasswd>,
    pub metrics: metrics::Metrics,
}

impl App {
    pub fn new(store: Store, auth: Option<auth::Htpasswd>) -> App {
        App {
            store,
            auth,
            metrics: Default::default(),
        }
    }
}

/// The registry as an axum `Router` (useful on its own in tests).
pub fn router(app: Arc<App>) -> Router {
    let (a1, a2, a3) = (app.clone(), app.clone(), app.clone());
    Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || handlers::readyz(a1.clone())),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    a2.metrics.render(&a2.store),
                )
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
/// [`DRAIN_TIMEOUT`]) and return.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router(app);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match first_byte(&stream).await {
                Some(0x16) => {
                    tracing::debug!(%peer, "TLS ClientHello on the plain-HTTP port; answering 400");
                    reject_tls(stream).await;
                    return;
                }
                Some(_) => {}
                None => return,
            }
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    router.clone().call(req.map(axum::body::Body::new))
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in time");
    }
    Ok(())
}

async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

async fn reject_tls(mut stream: TcpStream) {
    let _ = stream
        .write_all(
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
              Client sent an HTTPS request to an HTTP server.\n",
        )
        .await;
    let _ = stream.shutdown().await;
}
