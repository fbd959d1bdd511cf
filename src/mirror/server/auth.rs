//! htpasswd authentication (bcrypt entries, as Distribution accepts them).
//!
//! bcrypt is slow on purpose, so it is rationed (a review saw 16 clients sending wrong passwords
//! take both cores and a good user's request go from 70 ms to 773 ms):
//! - a header whose check succeeded is remembered for [`GOOD_FOR`] by its SHA-256 (never the
//!   password itself) and for the version of the file it was checked against, so a client that
//!   sends the same credentials with every request costs one bcrypt a minute. (A hit answers
//!   faster than a miss, but it tells nothing the 200 itself does not: only the right
//!   credentials are ever remembered.)
//! - at most [`bcrypt_slots`] checks run at once, whoever sends them: the other core serves;
//! - an address whose checks failed waits before its next one, longer with each failure in a
//!   row (up to [`MAX_PENALTY`]), so guessing from one address is slow and costs little.
//!
//! An unknown user is checked against a dummy hash of the same cost, so it is not answered faster
//! than a known one. The file is re-read when it changes (checked by mtime and size on each
//! request; a stat is cheap), and what was remembered from the old file is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use sha2::Digest as _;

/// How long a header whose check succeeded is taken without another bcrypt.
pub const GOOD_FOR: Duration = Duration::from_secs(60);
/// Headers remembered at most (then the oldest half is forgotten).
const GOOD_MAX: usize = 4096;
/// The longest an address waits before a check after failures in a row.
pub const MAX_PENALTY: Duration = Duration::from_secs(2);
/// A failure older than this no longer slows its address down.
const FAILURES_FORGOTTEN: Duration = Duration::from_secs(300);

/// bcrypt checks at once: half the cores, at least one.
pub fn bcrypt_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

type Stamp = Option<(SystemTime, u64)>;

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

pub struct Htpasswd {
    path: PathBuf,
    anonymous_read: bool,
    state: Mutex<Loaded>,
    /// SHA-256 of a header whose check succeeded → when, and against which file version.
    good: Mutex<HashMap<[u8; 32], (Instant, Stamp)>>,
    slots: tokio::sync::Semaphore,
    /// Per address: failures in a row, and when the last one was.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// bcrypt checks run, running now, and the most that ever ran at once (for tests and
    /// `/metrics`).
    pub bcrypt_runs: AtomicU64,
    running: AtomicUsize,
    pub bcrypt_peak: AtomicUsize,
}

/// What a request's credentials need: an answer now, or a bcrypt check.
pub enum Pending {
    Decided(Verdict),
    Check {
        user: String,
        password: String,
        key: [u8; 32],
    },
}

/// The users as last read, and which version of the file (mtime, size) they came from.
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    users: Arc<Users>,
}

#[derive(Default)]
struct Users {
    hashes: HashMap<String, String>,
    /// A hash of the cost most entries use, for unknown users.
    dummy: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No or wrong credentials: 401 with a Basic challenge.
    Unauthorized,
}

fn parse(text: &str) -> Users {
    let mut hashes = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((user, hash)) = line.split_once(':') {
            // bcrypt only ($2a$, $2b$, $2x$, $2y$), as Distribution.
            if hash.starts_with("$2") {
                hashes.insert(user.to_owned(), hash.to_owned());
            } else {
                tracing::warn!(user, "htpasswd entry is not bcrypt; ignored");
            }
        }
    }
    let cost = hashes
        .values()
        .next()
        .and_then(|h| h.get(4..6))
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(bcrypt::DEFAULT_COST);
    let dummy = bcrypt::hash("ferry-dummy-password", cost).unwrap_or_default();
    Users { hashes, dummy }
}

impl Htpasswd {
    pub fn new(path: PathBuf, anonymous_read: bool) -> std::io::Result<Htpasswd> {
        let h = Htpasswd {
            path,
            anonymous_read,
            state: Mutex::new(Loaded {
                stamp: None,
                users: Arc::new(Users::default()),
            }),
            good: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(bcrypt_slots()),
            failures: Mutex::new(HashMap::new()),
            bcrypt_runs: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            bcrypt_peak: AtomicUsize::new(0),
        };
        h.users()?;
        Ok(h)
    }

    fn users(&self) -> std::io::Result<Arc<Users>> {
        let meta = std::fs::metadata(&self.path)?;
        let stamp = (meta.modified()?, meta.len());
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.stamp != Some(stamp) {
            let text = std::fs::read_to_string(&self.path)?;
            st.users = Arc::new(parse(&text));
            st.stamp = Some(stamp);
            tracing::info!(users = st.users.hashes.len(), "htpasswd loaded");
        }
        Ok(st.users.clone())
    }

    fn stamp(&self) -> Stamp {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stamp
    }

    /// Decide on a request. `authorization` is the raw header, if any; `client` the address it
    /// came from. Runs bcrypt (on the blocking pool, within the slots) only when it must.
    pub async fn check(
        self: &Arc<Self>,
        access: Access,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Verdict {
        let (user, password, key) = match self.precheck(access, authorization) {
            Pending::Decided(v) => return v,
            Pending::Check {
                user,
                password,
                key,
            } => (user, password, key),
        };
        if let Some(wait) = client.and_then(|c| self.penalty(c)) {
            tokio::time::sleep(wait).await;
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return Verdict::Unauthorized;
        };
        let me = self.clone();
        let ok = tokio::task::spawn_blocking(move || me.verify(&user, &password))
            .await
            .unwrap_or(false);
        self.settle(client, key, ok)
    }

    /// [`Htpasswd::check`] without an address, on the calling thread (blocking).
    pub fn check_blocking(&self, access: Access, authorization: Option<&str>) -> Verdict {
        match self.precheck(access, authorization) {
            Pending::Decided(v) => v,
            Pending::Check {
                user,
                password,
                key,
            } => {
                let ok = self.verify(&user, &password);
                self.settle(None, key, ok)
            }
        }
    }

    /// Everything that needs no bcrypt: no header, a malformed one, one checked lately.
    pub fn precheck(&self, access: Access, authorization: Option<&str>) -> Pending {
        let Some(header) = authorization else {
            return Pending::Decided(if access == Access::Read && self.anonymous_read {
                Verdict::Allowed
            } else {
                Verdict::Unauthorized
            });
        };
        let Some(creds) = header
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return Pending::Decided(Verdict::Unauthorized);
        };
        let Some((user, password)) = creds.split_once(':') else {
            return Pending::Decided(Verdict::Unauthorized);
        };
        // The file may have changed: read it (if so) before trusting what was remembered.
        if self.users().is_err() {
            // The file vanished or cannot be read: refuse rather than open up.
            return Pending::Decided(Verdict::Unauthorized);
        }
        let key: [u8; 32] = sha2::Sha256::digest(header.as_bytes()).into();
        let stamp = self.stamp();
        let good = self.good.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, s)) = good.get(&key) {
            if *s == stamp && at.elapsed() < GOOD_FOR {
                return Pending::Decided(Verdict::Allowed);
            }
        }
        Pending::Check {
            user: user.to_owned(),
            password: password.to_owned(),
            key,
        }
    }

    /// One bcrypt check (blocking).
    fn verify(&self, user: &str, password: &str) -> bool {
        let Ok(users) = self.users() else {
            return false;
        };
        let (hash, known) = match users.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (users.dummy.as_str(), false),
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.bcrypt_peak.fetch_max(now, Ordering::SeqCst);
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        self.running.fetch_sub(1, Ordering::SeqCst);
        ok && known
    }

    /// Remember a success, count a failure against its address.
    fn settle(&self, client: Option<IpAddr>, key: [u8; 32], ok: bool) -> Verdict {
        if ok {
            let stamp = self.stamp();
            let mut good = self.good.lock().unwrap_or_else(|p| p.into_inner());
            if good.len() >= GOOD_MAX {
                good.retain(|_, (at, _)| at.elapsed() < GOOD_FOR / 2);
            }
            good.insert(key, (Instant::now(), stamp));
            if let Some(c) = client {
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&c);
            }
            return Verdict::Allowed;
        }
        if let Some(c) = client {
            let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if f.len() >= GOOD_MAX {
                f.retain(|_, (_, at)| at.elapsed() < FAILURES_FORGOTTEN);
            }
            let e = f.entry(c).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURES_FORGOTTEN {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = Instant::now();
        }
        Verdict::Unauthorized
    }

    /// How long an address waits before its next check: 50 ms after one failure, doubling
    /// with each failure in a row, at most [`MAX_PENALTY`].
    pub fn penalty(&self, client: IpAddr) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (n, at) = f.get(&client)?;
        if *n == 0 || at.elapsed() >= FAILURES_FORGOTTEN {
            return None;
        }
        let ms = 50u64.saturating_mul(1 << (n - 1).min(10));
        Some(Duration::from_millis(ms).min(MAX_PENALTY))
    }
}
