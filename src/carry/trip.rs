//! Signed trips: a statement of what a trip carries, signed with a minisign key, checked on the
//! offline side before any tag is published.
//!
//! Blobs are content-addressed, but `index.json` is not: whoever holds a USB disk can repoint a
//! tag at other content, add a tag, or drop one. `ferry sync … --sign KEY` writes
//! [`STATEMENT`] (every tag → the digest it names, every blob digest, the creation time and the
//! key id) and its minisign signature [`SIGNATURE`] into the trip (the top of a directory, the
//! end of an archive). `--verify-key PUB` refuses, naming what differs, a trip that is unsigned,
//! signed by another key, whose statement was edited, whose tags differ from the statement, or
//! whose blobs are not exactly the statement's and intact (each is re-hashed).
//!
//! Keys and signatures are minisign's own formats through the `minisign` crate (Ed25519; the
//! secret key encrypted with a password by scrypt), so `minisign -Vm ferry-trip.json -p
//! ferry.pub` verifies a statement without ferry.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::carry::place::Place;
use crate::error::{Error, Result};
use crate::vocab::digest::Digest;
use crate::vocab::reference::Reference;

pub const STATEMENT: &str = "ferry-trip.json";
pub const SIGNATURE: &str = "ferry-trip.json.minisig";
const FORMAT: &str = "ferry-trip/1";
const MAX_STATEMENT_BYTES: u64 = 64 << 20;

fn trip(msg: impl Into<String>) -> Error {
    Error::Trip(msg.into())
}

fn key_err(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{}: {e}", what.display()))
}

/// minisign's key id: the 8-byte key number as minisign prints it.
fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    let n = keynum.len().min(8);
    b[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// What a trip carries, as signed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Statement {
    pub format: String,
    /// RFC 3339, UTC, whole seconds.
    pub created: String,
    pub key_id: String,
    /// `REPO:TAG` → manifest digest.
    pub tags: BTreeMap<String, String>,
    /// Every blob and manifest digest the trip holds.
    pub blobs: Vec<String>,
    /// Layers the trip carries as patches: target digest → patch blob digest (the trip's
    /// `ferry-patches.json` must say the same).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub patches: BTreeMap<String, String>,
}

/// `ferry key generate`: `ferry.key` (the secret key; encrypted with `password`, asked on the
/// terminal when `None`, unless `encrypt` is false) and `ferry.pub`. Never overwrites either.
pub fn generate(out: &Path, encrypt: bool, password: Option<String>) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let (skp, pkp) = (out.join("ferry.key"), out.join("ferry.pub"));
    for p in [&skp, &pkp] {
        if p.exists() {
            return Err(Error::Usage(format!(
                "{} exists: ferry does not overwrite a key",
                p.display()
            )));
        }
    }
    let kp = if encrypt {
        // `None` makes minisign ask twice on the terminal (the binary asks itself instead).
        minisign::KeyPair::generate_encrypted_keypair(password)
    } else {
        minisign::KeyPair::generate_unencrypted_keypair()
    }
    .map_err(|e| Error::Usage(format!("generating a key: {e}")))?;
    let id = key_id(kp.pk.keynum());
    let sk_text = kp
        .sk
        .to_box(Some(&format!("ferry secret key {id}")))
        .map_err(|e| key_err(&skp, e))?
        .to_string();
    let pk_text = kp.pk.to_box().map_err(|e| key_err(&pkp, e))?.to_string();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&skp)?;
        f.write_all(sk_text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::write(&pkp, pk_text)?;
    Ok((skp, pkp))
}

/// A secret key ready to sign.
pub struct Signer {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
    pub key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_id)
    }
}

impl Signer {
    /// Whether the secret key at `path` is encrypted (a password is needed to sign).
    pub fn needs_password(path: &Path) -> Result<bool> {
        let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e))?;
        let boxed = minisign::SecretKeyBox::from_string(&text).map_err(|e| key_err(path, e))?;
        Ok(!matches!(
            minisign::SecretKey::from_unencrypted_box(boxed),
            Ok(sk) if !sk.is_encrypted()
        ))
    }

    /// Load `ferry.key`: an unencrypted key as it is, an encrypted one with `password` (or,
    /// when `None`, minisign's own prompt on the terminal).
    pub fn load(path: &Path, password: Option<String>) -> Result<Signer> {
        let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e))?;
        let boxed = || minisign::SecretKeyBox::from_string(&text).map_err(|e| key_err(path, e));
        let sk = match minisign::SecretKey::from_unencrypted_box(boxed()?) {
            Ok(sk) if !sk.is_encrypted() => sk,
            _ => minisign::SecretKey::from_box(boxed()?, password).map_err(|e| {
                key_err(path, format!("{e} (FERRY_KEY_PASSWORD holds the password)"))
            })?,
        };
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| key_err(path, e))?;
        let key_id = key_id(sk.keynum());
        Ok(Signer { sk, pk, key_id })
    }

    /// A statement's bytes and their signature (minisign's `.minisig` text).
    pub fn sign(
        &self,
        tags: BTreeMap<String, String>,
        mut blobs: Vec<String>,
        patches: BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        blobs.sort();
        blobs.dedup();
        let created = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let st = Statement {
            format: FORMAT.into(),
            created,
            key_id: self.key_id.clone(),
            tags,
            blobs,
            patches,
        };
        let mut bytes = serde_json::to_vec_pretty(&st).map_err(|e| trip(e.to_string()))?;
        bytes.push(b'\n');
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            Cursor::new(&bytes),
            Some(&format!("ferry trip statement, key {}", self.key_id)),
            Some(&format!("signature from ferry key {}", self.key_id)),
        )
        .map_err(|e| trip(format!("signing: {e}")))?;
        Ok((bytes, sig.to_string().into_bytes()))
    }
}

/// A public key to check trips with (`ferry.pub`, or minisign's own `.pub`).
#[derive(Debug)]
pub struct Verifier {
    pk: minisign::PublicKey,
    pub key_id: String,
}

impl Verifier {
    pub fn load(path: &Path) -> Result<Verifier> {
        let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e))?;
        let pk = minisign::PublicKeyBox::from_string(&text)
            .and_then(|b| b.into_public_key())
            .or_else(|_| minisign::PublicKey::from_base64(text.trim()))
            .map_err(|e| key_err(path, format!("not a minisign public key: {e}")))?;
        let key_id = key_id(pk.keynum());
        Ok(Verifier { pk, key_id })
    }

    /// Check the signature over a statement's bytes and parse it.
    pub fn statement(&self, bytes: &[u8], sig: &[u8]) -> Result<Statement> {
        let sig_text = std::str::from_utf8(sig).map_err(|_| trip("the signature is not text"))?;
        let sig = minisign::SignatureBox::from_string(sig_text).map_err(|e| {
            trip(format!(
                "the signature file is not a minisign signature: {e}"
            ))
        })?;
        let signer = key_id(sig.keynum());
        if signer != self.key_id {
            return Err(trip(format!(
                "signed by key {signer}, not by the trusted key {}",
                self.key_id
            )));
        }
        minisign::verify(&self.pk, &sig, Cursor::new(bytes), true, false, false).map_err(|e| {
            trip(format!(
                "the statement does not match its signature (edited after signing?): {e}"
            ))
        })?;
        let st: Statement = serde_json::from_slice(bytes)
            .map_err(|e| trip(format!("the statement is not ferry's: {e}")))?;
        if st.format != FORMAT {
            return Err(trip(format!("unknown statement format {:?}", st.format)));
        }
        Ok(st)
    }
}

/// Read the statement and signature a trip holds; `None` where a file is absent.
async fn read_signed(place: &Place) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>)> {
    match place {
        Place::Archive(a, _) => {
            let get = |n: &str| {
                a.has(n)
                    .then(|| a.read_small(n, MAX_STATEMENT_BYTES))
                    .transpose()
            };
            Ok((get(STATEMENT)?, get(SIGNATURE)?))
        }
        Place::Store(s) => {
            let Some(root) = s.root() else {
                return Err(Error::Usage(
                    "signed trips are directories or archives, not buckets".into(),
                ));
            };
            let get = |n: &str| -> Result<Option<Vec<u8>>> {
                match crate::layout::read::read_regular(root, &root.join(n), MAX_STATEMENT_BYTES) {
                    Ok(Ok(b)) => Ok(Some(b)),
                    Ok(Err(_)) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e.into()),
                }
            };
            Ok((get(STATEMENT)?, get(SIGNATURE)?))
        }
        Place::Remote(_) => Err(Error::Usage(
            "--verify-key checks a trip (a directory or an archive), not a registry".into(),
        )),
    }
}

/// The tags a trip holds, `REPO:TAG` → digest.
async fn tags_of(place: &Place) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match place {
        Place::Archive(_, roots) => {
            for (r, d) in roots {
                if let Reference::Tag(t) = &r.reference {
                    out.insert(format!("{}:{t}", r.repo), d.digest.to_string());
                }
            }
        }
        Place::Store(s) => {
            let idx = s.index().await?;
            for repo in idx.repos() {
                for t in idx.tags_of(repo) {
                    if let Some(d) = idx.tag(repo, t) {
                        out.insert(format!("{repo}:{t}"), d.digest.to_string());
                    }
                }
            }
        }
        Place::Remote(_) => {}
    }
    Ok(out)
}

/// Check a trip against its signed statement before anything of it is used: the signature, the
/// tags, the set of blobs, and every blob's bytes. Every difference is named.
pub async fn verify(place: &Place, key: &Verifier, jobs: usize) -> Result<Statement> {
    let (st, sig) = read_signed(place).await?;
    let (st, sig) = match (st, sig) {
        (Some(s), Some(g)) => (s, g),
        (None, _) => return Err(trip(format!("unsigned: the trip has no {STATEMENT}"))),
        (Some(_), None) => return Err(trip(format!("unsigned: the trip has no {SIGNATURE}"))),
    };
    let st = key.statement(&st, &sig)?;
    let mut problems = Vec::new();
    let tags = tags_of(place).await?;
    for (name, d) in &tags {
        match st.tags.get(name) {
            None => problems.push(format!("tag {name} is not in the statement")),
            Some(s) if s != d => {
                problems.push(format!("tag {name} names {d}, the statement says {s}"))
            }
            Some(_) => {}
        }
    }
    for name in st.tags.keys().filter(|n| !tags.contains_key(*n)) {
        problems.push(format!("tag {name} of the statement is missing"));
    }
    let listed: BTreeMap<String, String> = crate::carry::patch::list::read_list(place)
        .await?
        .into_values()
        .map(|e| (e.target.to_string(), e.patch.to_string()))
        .collect();
    for (t, p) in &listed {
        match st.patches.get(t) {
            None => problems.push(format!("the patch for {t} is not in the statement")),
            Some(s) if s != p => {
                problems.push(format!("the patch for {t} is {p}, the statement says {s}"))
            }
            Some(_) => {}
        }
    }
    for t in st.patches.keys().filter(|t| !listed.contains_key(*t)) {
        problems.push(format!("the patch for {t} of the statement is missing"));
    }
    let held: Vec<Digest> = place.content().await?.unwrap_or_default();
    let held_set: std::collections::BTreeSet<String> = held.iter().map(|d| d.to_string()).collect();
    let said: std::collections::BTreeSet<String> = st.blobs.iter().cloned().collect();
    for d in held_set.difference(&said) {
        problems.push(format!("blob {d} is not in the statement"));
    }
    for d in said.difference(&held_set) {
        problems.push(format!("blob {d} of the statement is missing"));
    }
    // Every byte: a blob swapped under its name is caught here, before any tag is published.
    let bad: Vec<String> =
        futures_util::stream::iter(held.into_iter().filter(|d| said.contains(&d.to_string())))
            .map(|d| async move {
                let r: Result<Digest> = async {
                    let (mut s, _) = place.read_blob("", &d, 0).await?;
                    let mut h = d.algorithm().hasher();
                    while let Some(c) = s.try_next().await? {
                        h.update(&c);
                    }
                    Ok(h.finish())
                }
                .await;
                match r {
                    Ok(actual) if actual == d => None,
                    Ok(actual) => Some(format!(
                        "blob {d} holds other content (it hashes to {actual})"
                    )),
                    Err(e) => Some(format!("blob {d}: {e}")),
                }
            })
            .buffer_unordered(jobs.max(1))
            .filter_map(|x| async move { x })
            .collect()
            .await;
    problems.extend(bad);
    if !problems.is_empty() {
        problems.sort();
        return Err(trip(format!(
            "{} difference(s) from the statement signed by {} on {}: {}",
            problems.len(),
            st.key_id,
            st.created,
            problems.join("; ")
        )));
    }
    Ok(st)
}
