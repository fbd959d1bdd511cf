//! What one client may take from a shared mirror: upload slots, time, and bandwidth floors.
//!
//! Memory is bounded elsewhere by construction (bodies stream through fixed buffers, manifests are
//! read up to 4 MiB, headers up to [`MAX_HEADER_BYTES`], JSON nesting by serde_json's 128 levels);
//! this module bounds what is left: how many uploads run at once, and how long a connection may
//! sit idle or trickle a body (a slowloris client cannot hold a connection forever).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::error::Error;

/// HTTP/1 request heads (and HTTP/2 header lists) larger than this are refused.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 streams one connection may have open at once.
pub const MAX_H2_STREAMS: u32 = 64;
/// HTTP/2 flow-control windows: what a client may send before the server has taken it, per
/// stream and per connection.
pub const H2_STREAM_WINDOW: u32 = 128 << 10;
pub const H2_CONN_WINDOW: u32 = 256 << 10;
/// Body bytes queued per HTTP/2 stream before the body is asked for more.
pub const H2_SEND_BUF: usize = 64 << 10;

/// Raise the soft limit on open descriptors to the hard one (each connection, blob being
/// served and upload holds one; Debian's default soft limit of 1,024 would cap a build farm's
/// burst). Returns the limit now in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a local, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    r.rlim_cur
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Upload requests (blob bodies being received) at once, all clients together.
    pub max_uploads: usize,
    /// Upload requests at once from one client address.
    pub max_uploads_per_client: usize,
    /// Upload sessions open at once (started, not yet finished, cancelled or expired).
    pub max_sessions: usize,
    /// Upload sessions one client (a user under `--htpasswd`, else an address) may have open:
    /// one pusher opening sessions in a loop cannot take everyone's.
    pub max_sessions_per_client: usize,
    /// A session of a client at its bound that saw no request for this long is let go when the
    /// client asks for another (before the hourly expiry would).
    pub session_reclaim_after: Duration,
    /// A request head must arrive in full within this time.
    pub header_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// A request body that delivers nothing for this long is cut off …
    pub body_stall: Duration,
    /// … and one that, after its first `body_stall`, averages fewer bytes per second than this.
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uploads: 128,
            max_uploads_per_client: 32,
            max_sessions: 10_000,
            max_sessions_per_client: 1_000,
            session_reclaim_after: Duration::from_secs(600),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_stall: Duration::from_secs(30),
            min_body_rate: 1024,
        }
    }
}

/// The address a request came from, put into the request's extensions by the connection loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// Who opened each upload session, and when it was last used: the bound per client on open
/// sessions. Kept in memory: sessions recovered after a restart count only toward the total.
#[derive(Default)]
pub struct SessionOwners {
    inner: Mutex<Owners>,
}

#[derive(Default)]
struct Owners {
    by_id: HashMap<String, (String, Instant)>,
    count: HashMap<String, usize>,
}

impl SessionOwners {
    fn lock(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sessions `client` has open.
    pub fn open_by(&self, client: &str) -> usize {
        self.lock().count.get(client).copied().unwrap_or(0)
    }

    /// `client`'s sessions idle for at least `idle`, the longest idle first.
    pub fn idle_of(&self, client: &str, idle: Duration) -> Vec<String> {
        let o = self.lock();
        let mut v: Vec<(&String, Instant)> = o
            .by_id
            .iter()
            .filter(|(_, (c, at))| c == client && at.elapsed() >= idle)
            .map(|(id, (_, at))| (id, *at))
            .collect();
        v.sort_by_key(|(_, at)| *at);
        v.into_iter().map(|(id, _)| id.clone()).collect()
    }

    /// The client with the most sessions open, and how many.
    pub fn busiest(&self) -> Option<(String, usize)> {
        self.lock()
            .count
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(c, n)| (c.clone(), *n))
    }

    pub fn opened(&self, id: &str, client: &str) {
        let mut o = self.lock();
        o.by_id
            .insert(id.to_owned(), (client.to_owned(), Instant::now()));
        *o.count.entry(client.to_owned()).or_insert(0) += 1;
    }

    /// A request on a session (it is not idle).
    pub fn used(&self, id: &str) {
        if let Some(e) = self.lock().by_id.get_mut(id) {
            e.1 = Instant::now();
        }
    }

    /// The session ended (finished, cancelled, expired).
    pub fn closed(&self, id: &str) {
        let mut o = self.lock();
        if let Some((client, _)) = o.by_id.remove(id) {
            if let Some(n) = o.count.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    o.count.remove(&client);
                }
            }
        }
    }
}

/// Counts upload requests in flight, in total and per client address.
#[derive(Default)]
pub struct UploadGate {
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One upload slot; given back when dropped (also when the request is cancelled).
pub struct UploadPermit {
    gate: Arc<UploadGate>,
    client: IpAddr,
}

impl UploadGate {
    /// Take a slot for `client`, or say which cap is reached.
    pub fn acquire(
        self: &Arc<Self>,
        client: Option<ClientAddr>,
        limits: &Limits,
    ) -> Result<UploadPermit, Error> {
        let client = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
        let mut map = match self.per_client.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let total: usize = map.values().sum();
        if total >= limits.max_uploads {
            return Err(Error::TooManyRequests(format!(
                "{total} uploads are running (limit {}); retry shortly",
                limits.max_uploads
            )));
        }
        let mine = map.entry(client).or_insert(0);
        if *mine >= limits.max_uploads_per_client {
            return Err(Error::TooManyRequests(format!(
                "{mine} uploads from {client} are running (limit {} per client); retry shortly",
                limits.max_uploads_per_client
            )));
        }
        *mine += 1;
        Ok(UploadPermit {
            gate: self.clone(),
            client,
        })
    }

    pub fn in_flight(&self) -> usize {
        match self.per_client.lock() {
            Ok(m) => m.values().sum(),
            Err(p) => p.into_inner().values().sum(),
        }
    }
}

impl Drop for UploadPermit {
    fn drop(&mut self) {
        let mut map = match self.gate.per_client.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// A request body that ends with an error when it stalls for `limits.body_stall` or, once that
/// long has passed, averages under `limits.min_body_rate` bytes a second. The store keeps what
/// arrived before the error (a chunked upload can resume from it).
pub fn guarded_body(
    body: axum::body::Body,
    limits: &Limits,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
    let stall = limits.body_stall;
    let min_rate = limits.min_body_rate;
    let started = Instant::now();
    let state = (body.into_data_stream(), 0u64, false);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut inner, mut seen, done)| async move {
            if done {
                return None;
            }
            let timed_out = |msg: String| std::io::Error::new(std::io::ErrorKind::TimedOut, msg);
            match tokio::time::timeout(stall, inner.next()).await {
                Err(_) => Some((
                    Err(timed_out(format!(
                        "no body data for {} s after {seen} bytes",
                        stall.as_secs_f64()
                    ))),
                    (inner, seen, true),
                )),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), (inner, seen, true))),
                Ok(Some(Ok(chunk))) => {
                    seen += chunk.len() as u64;
                    let elapsed = started.elapsed();
                    if elapsed > stall && (seen as f64) < min_rate as f64 * elapsed.as_secs_f64() {
                        return Some((
                            Err(timed_out(format!(
                                "body arriving at {:.0} bytes/s, under the minimum {min_rate}",
                                seen as f64 / elapsed.as_secs_f64()
                            ))),
                            (inner, seen, true),
                        ));
                    }
                    Some((Ok(chunk), (inner, seen, false)))
                }
            }
        },
    ))
}

/// Counts a handler as running on its connection until dropped (also when cancelled).
pub struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    pub fn new(counter: Arc<std::sync::atomic::AtomicUsize>) -> Running {
        counter.fetch_add(1, Ordering::Relaxed);
        Running(counter)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since a fixed start at which the connection last moved a byte.
#[derive(Clone)]
pub struct Activity {
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
    pub fn idle_for(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// Wraps a connection's I/O and notes every read or write that moved bytes, for the idle
/// watchdog. Written by hand because hyper has no idle timeout of its own: its HTTP/1 header
/// timeout does not cover a kept-alive connection between requests, nor bodies, nor HTTP/2.
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Activity) -> Watched<T> {
        Watched { inner, activity }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_slots_are_capped_per_client_and_in_total_and_given_back() {
        let gate = Arc::new(UploadGate::default());
        let limits = Limits {
            max_uploads: 3,
            max_uploads_per_client: 2,
            ..Limits::default()
        };
        let a = Some(ClientAddr("10.0.0.1".parse().unwrap()));
        let b = Some(ClientAddr("10.0.0.2".parse().unwrap()));
        let a1 = gate.acquire(a, &limits).unwrap();
        let _a2 = gate.acquire(a, &limits).unwrap();
        assert!(matches!(
            gate.acquire(a, &limits),
            Err(Error::TooManyRequests(_))
        ));
        let _b1 = gate.acquire(b, &limits).unwrap();
        assert!(matches!(
            gate.acquire(b, &limits),
            Err(Error::TooManyRequests(_))
        ));
        drop(a1);
        assert_eq!(gate.in_flight(), 2);
        let _b2 = gate.acquire(b, &limits).unwrap();
        assert_eq!(gate.in_flight(), 3);
    }
}
