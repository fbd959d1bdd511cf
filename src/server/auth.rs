//! htpasswd authentication (bcrypt entries, as Distribution accepts them).
//!
//! Every request with credentials is checked with bcrypt; nothing is cached. A cache of successes
//! would answer a right password in microseconds and a wrong one in bcrypt time, which tells an
//! attacker which is which; without it both take one bcrypt at the entry's cost. An unknown user is
//! checked against a dummy hash of the same cost, so it is not answered faster either. The file is
//! re-read when it changes (checked by mtime and size on each request; a stat is cheap).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;

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

    /// Decide on a request. `authorization` is the raw header, if any.
    pub fn check(&self, access: Access, authorization: Option<&str>) -> Verdict {
        let Some(header) = authorization else {
            return if access == Access::Read && self.anonymous_read {
                Verdict::Allowed
            } else {
                Verdict::Unauthorized
            };
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
            return Verdict::Unauthorized;
        };
        let Some((user, password)) = creds.split_once(':') else {
            return Verdict::Unauthorized;
        };
        let Ok(users) = self.users() else {
            // The file vanished or cannot be read: refuse rather than open up.
            return Verdict::Unauthorized;
        };
        let (hash, known) = match users.hashes.get(user) {
            Some(h) => (h.as_str(), true),
            None => (users.dummy.as_str(), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok && known {
            Verdict::Allowed
        } else {
            Verdict::Unauthorized
        }
    }
}
