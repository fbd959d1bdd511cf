//! The soak behind `bench/soak.sh`: one `ferry serve` under a mixed workload for a long time
//! while a chaos loop `kill -9`s it (and, on S3, a storage node) at random moments; at the end,
//! everything a client was told exists must still be there, byte for byte.
//!
//! ```text
//! soak --ferry BIN --data DIR|s3://BUCKET/PREFIX --work DIR --duration 3m [--workers 6]
//!      [--garage DIR --garage-script tests/garage.sh] [--seed N]
//! ```
//! Each worker owns two repositories and loops over: pushes of new images (chunked and
//! monolithic, some layers shared with earlier images) and BuildKit caches (the legacy index
//! shape, retention keeps the last 3 per repository), pulls that re-hash every blob, HEADs, tag
//! lists, referrers, deletes, and `ferry sync` out to a directory and back in. The server runs
//! with GC every 30 s (grace 20 s) and the retention rules. A push counts as told once its
//! manifest PUT answered 201; a delete removes the tag from the record before it is sent.
//! Errors while the server is down (refused connections, 5xx) are counted and retried; a told
//! tag that is missing or a blob with the wrong bytes is a **loss**, counted and named.
//!
//! Before the clock starts every worker pushes its steady-state set (24 images, 3 caches), so the
//! store is as large at 10% of the run as at its end. The leak check (median RSS over the last
//! 10% of the run ≤ 1.1× the median over 5–15%, descriptors flat) is judged on runs of 10
//! minutes and more; shorter ones print it. One line per minute (operations, errors, p50/p99
//! latency, RSS, descriptors), then a summary table and a final line that `.ci/run` checks:
//! `soak: PASS …` or `soak: FAIL …`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;

const CACHE_KEEP: usize = 3;
const IMAGE_TAGS_MAX: usize = 24;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

// ---------------------------------------------------------------------------------------------
// Small helpers

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

fn parse_duration(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().expect("a duration like 3m, 60m, 90s");
    match unit {
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("unknown unit in {s}"),
    }
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// The server and the chaos

struct Server {
    ferry: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    url: String,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(&self.ferry)
            .arg("serve")
            .args(&self.args)
            .args(if extra.is_empty() {
                &["--upload-expiry", "10m"][..]
            } else {
                extra
            })
            .env("RUST_LOG", "warn,ferry::server::maintenance=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferry");
        self.child = Some(child);
        let addr: std::net::SocketAddr = self
            .url
            .trim_start_matches("http://")
            .parse()
            .expect("addr");
        for _ in 0..600 {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferry did not come up; see {}", self.log.display());
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            return c.wait().map(|s| s.success()).unwrap_or(false);
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------
// What clients were told, and what happened

#[derive(Clone)]
struct Told {
    repo: String,
    tag: String,
    media_type: String,
    manifest: Vec<u8>,
    digest: String,
    blobs: Vec<(String, u64)>,
    /// A cache tag: retention may retire it once newer ones exist.
    cache: bool,
    seq: u64,
}

#[derive(Default)]
struct Minute {
    ops: u64,
    errors: u64,
    lat: Vec<f64>,
}

#[derive(Default)]
struct Stats {
    minute: Mutex<Minute>,
    ops: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    lost_what: Mutex<Vec<String>>,
    kills: AtomicU64,
    node_kills: AtomicU64,
    pushes: AtomicU64,
    deletes: AtomicU64,
    syncs: AtomicU64,
    slow_told: AtomicU64,
    retired: AtomicU64,
    lat_all: Mutex<Vec<f64>>,
}

impl Stats {
    fn done(&self, started: Instant, r: &Result<(), Fail>) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let mut m = self.minute.lock().unwrap_or_else(|p| p.into_inner());
        m.ops += 1;
        m.lat.push(ms);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.lat_all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ms);
        match r {
            Ok(()) => {}
            Err(Fail::Unavailable(_)) => {
                m.errors += 1;
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(Fail::Lost(what)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                eprintln!("LOST: {what}");
                self.lost_what
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(what.clone());
            }
        }
    }
}

#[derive(Debug)]
enum Fail {
    /// The server (or its store) was down or busy: try again later.
    Unavailable(String),
    /// Something a client was told exists is gone or wrong.
    Lost(String),
}

fn unavailable(e: impl std::fmt::Display) -> Fail {
    Fail::Unavailable(e.to_string())
}

/// A status the workload treats as "the server is restarting or overloaded".
fn transient(s: reqwest::StatusCode) -> bool {
    s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS
}

// ---------------------------------------------------------------------------------------------
// Registry operations

struct Ctx {
    c: reqwest::Client,
    url: String,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    ferry: PathBuf,
    work: PathBuf,
    port: u16,
}

fn absolute(url: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{url}{location}")
    }
}

fn location(r: &reqwest::Response) -> Result<String, Fail> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| unavailable("no Location"))
}

fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={digest}")
}

async fn push_blob(
    ctx: &Ctx,
    rng: &mut Rng,
    repo: &str,
    data: &[u8],
) -> Result<(String, u64), Fail> {
    let digest = sha(data);
    let r = ctx
        .c
        .post(format!("{}/v2/{repo}/blobs/uploads/", ctx.url))
        .send()
        .await
        .map_err(unavailable)?;
    if r.status() != 202 {
        return Err(unavailable(format!("POST upload: {}", r.status())));
    }
    let mut loc = absolute(&ctx.url, &location(&r)?);
    let chunked = rng.below(2) == 0 && data.len() > 1024;
    let last: &[u8] = if chunked {
        // Two to four PATCHes at uneven boundaries, then an empty PUT.
        let parts = 2 + rng.below(3) as usize;
        let mut start = 0;
        for i in 0..parts {
            let end = if i + 1 == parts {
                data.len()
            } else {
                (start + 1 + rng.below((data.len() - start) as u64 / 2 + 1) as usize)
                    .min(data.len())
            };
            if end == start {
                continue;
            }
            let r = ctx
                .c
                .patch(&loc)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{}-{}", start, end - 1))
                .body(data[start..end].to_vec())
                .send()
                .await
                .map_err(unavailable)?;
            if r.status() != 202 {
                return Err(unavailable(format!("PATCH: {}", r.status())));
            }
            loc = absolute(&ctx.url, &location(&r)?);
            start = end;
        }
        &[]
    } else {
        data
    };
    let r = ctx
        .c
        .put(with_digest(&loc, &digest))
        .header("Content-Type", "application/octet-stream")
        .body(last.to_vec())
        .send()
        .await
        .map_err(unavailable)?;
    if r.status() != 201 {
        return Err(unavailable(format!("PUT blob: {}", r.status())));
    }
    Ok((digest, data.len() as u64))
}

async fn put_manifest(
    ctx: &Ctx,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Result<(), Fail> {
    let r = ctx
        .c
        .put(format!("{}/v2/{repo}/manifests/{reference}", ctx.url))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .map_err(unavailable)?;
    if r.status() != 201 {
        let s = r.status();
        let text = r.text().await.unwrap_or_default();
        return Err(unavailable(format!("PUT manifest: {s} {text}")));
    }
    Ok(())
}

/// A layer size: mostly small, sometimes a few MiB (multi-chunk uploads, sendfile reads).
fn layer_size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => 1 << 20 | rng.below(3 << 20) as usize,
        1..=3 => 64 << 10 | rng.below(192 << 10) as usize,
        _ => 512 + rng.below(16 << 10) as usize,
    }
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

async fn push_image(
    ctx: &Ctx,
    rng: &mut Rng,
    worker: usize,
    seq: u64,
    shared: &[(String, u64)],
) -> Result<Told, Fail> {
    let repo = format!("soak/w{worker}");
    let mut layers = Vec::new();
    if !shared.is_empty() && rng.below(3) == 0 {
        // A layer an earlier (still tagged) image has: GC must keep it for both.
        layers.push(shared[rng.below(shared.len() as u64) as usize].clone());
    }
    for _ in 0..1 + rng.below(2) {
        let n = layer_size(rng);
        let data = rng.bytes(n);
        layers.push(push_blob(ctx, rng, &repo, &data).await?);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"soak": format!("{worker}-{seq}-{}", rng.next())}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .map_err(unavailable)?;
    let cfg = push_blob(ctx, rng, &repo, &config).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &cfg.0, cfg.1),
        "layers": layers.iter().map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar", d, *s)).collect::<Vec<_>>(),
    }))
    .map_err(unavailable)?;
    let tag = format!("t{seq}");
    put_manifest(ctx, &repo, &tag, OCI_MANIFEST, &manifest).await?;
    let mut blobs = layers;
    blobs.push(cfg);
    Ok(Told {
        digest: sha(&manifest),
        repo,
        tag,
        media_type: OCI_MANIFEST.into(),
        manifest,
        blobs,
        cache: false,
        seq,
    })
}

/// A BuildKit cache in the legacy shape: an index whose children are layer blobs and a
/// cacheconfig blob.
async fn push_cache(ctx: &Ctx, rng: &mut Rng, worker: usize, seq: u64) -> Result<Told, Fail> {
    let repo = format!("soak/w{worker}-cache");
    let mut blobs = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let n = layer_size(rng);
        let data = rng.bytes(n);
        blobs.push(push_blob(ctx, rng, &repo, &data).await?);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "layers": blobs.iter().map(|(d, _)| serde_json::json!({"blob": d, "parent": -1})).collect::<Vec<_>>(),
        "records": [{"digest": format!("sha256:{:064x}", rng.next())}],
    }))
    .map_err(unavailable)?;
    let cfg = push_blob(ctx, rng, &repo, &config).await?;
    let mut children: Vec<_> = blobs
        .iter()
        .map(|(d, s)| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, *s))
        .collect();
    children.push(descriptor(
        "application/vnd.buildkit.cacheconfig.v0",
        &cfg.0,
        cfg.1,
    ));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .map_err(unavailable)?;
    let tag = format!("c{seq}");
    put_manifest(ctx, &repo, &tag, OCI_INDEX, &index).await?;
    blobs.push(cfg);
    Ok(Told {
        digest: sha(&index),
        repo,
        tag,
        media_type: OCI_INDEX.into(),
        manifest: index,
        blobs,
        cache: true,
        seq,
    })
}

/// What a read of a told tag found.
enum Read {
    Intact,
    /// The tag answers 404 (for a cache tag retention may have retired).
    TagGone,
}

/// GET the manifest by tag and every blob; bytes must match what was pushed.
async fn check_told(ctx: &Ctx, t: &Told, all_blobs: bool) -> Result<Read, Fail> {
    let r = ctx
        .c
        .get(format!("{}/v2/{}/manifests/{}", ctx.url, t.repo, t.tag))
        .header("Accept", &t.media_type)
        .send()
        .await
        .map_err(unavailable)?;
    if r.status() == 404 {
        return Ok(Read::TagGone);
    }
    if r.status() != 200 {
        return Err(unavailable(format!("GET manifest: {}", r.status())));
    }
    let body = r.bytes().await.map_err(unavailable)?;
    if body.as_ref() != t.manifest.as_slice() {
        return Err(Fail::Lost(format!(
            "{}:{} serves other bytes ({}) than pushed ({})",
            t.repo,
            t.tag,
            sha(&body),
            t.digest
        )));
    }
    let n = if all_blobs { t.blobs.len() } else { 1 };
    for (d, size) in t.blobs.iter().take(n) {
        let r = ctx
            .c
            .get(format!("{}/v2/{}/blobs/{d}", ctx.url, t.repo))
            .send()
            .await
            .map_err(unavailable)?;
        if r.status() == 404 {
            return Err(Fail::Lost(format!(
                "{}:{}: blob {d} answers 404",
                t.repo, t.tag
            )));
        }
        if r.status() != 200 {
            return Err(unavailable(format!("GET blob: {}", r.status())));
        }
        let b = r.bytes().await.map_err(unavailable)?;
        if b.len() as u64 != *size || sha(&b) != *d {
            return Err(Fail::Lost(format!(
                "{}:{}: blob {d} has other bytes ({} of {size})",
                t.repo,
                t.tag,
                b.len()
            )));
        }
    }
    Ok(Read::Intact)
}

// ---------------------------------------------------------------------------------------------
// A worker

struct Worker {
    id: usize,
    rng: Rng,
    seq: u64,
    images: Vec<Told>,
    caches: Vec<Told>,
    /// Tags whose fate a failed request left unknown (a DELETE cut by a kill): not checked.
    uncertain: u64,
    /// Those tags, deleted again later (202 or 404 ends it), so the store does not grow with
    /// every cut request over a long run.
    pending: Vec<Told>,
    /// Round trips through this worker's trip directory since it was last emptied.
    trips: u32,
}

impl Worker {
    fn shared_layers(&self) -> Vec<(String, u64)> {
        self.images
            .iter()
            .flat_map(|t| t.blobs[..t.blobs.len() - 1].iter().cloned())
            .collect()
    }

    /// Whether `t` is protected from retention (the newest cache tag told).
    fn newest_cache(&self, t: &Told) -> bool {
        self.caches.iter().map(|c| c.seq).max() == Some(t.seq)
    }

    async fn step(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        let roll = self.rng.below(100);
        self.seq += 1;
        let seq = self.seq;
        let too_many = self.images.len() >= IMAGE_TAGS_MAX;
        match roll {
            0..=17 if !too_many => {
                let shared = self.shared_layers();
                let t = push_image(ctx, &mut self.rng, self.id, seq, &shared).await?;
                ctx.stats.pushes.fetch_add(1, Ordering::Relaxed);
                self.images.push(t);
                Ok(())
            }
            0..=24 => {
                let t = push_cache(ctx, &mut self.rng, self.id, seq).await?;
                ctx.stats.pushes.fetch_add(1, Ordering::Relaxed);
                self.caches.push(t);
                // Retention keeps the last 3 (by push time): older records are only checked
                // while they answer.
                if self.caches.len() > 2 * CACHE_KEEP {
                    self.caches.remove(0);
                }
                Ok(())
            }
            25..=54 => self.pull(ctx).await,
            55..=64 => self.heads(ctx).await,
            65..=72 => self.tag_list(ctx).await,
            73..=78 => self.referrer(ctx).await,
            79..=92 => self.delete(ctx).await,
            _ => self.sync_round_trip(ctx).await,
        }
    }

    fn pick(&mut self) -> Option<Told> {
        let n = self.images.len() + self.caches.len();
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n as u64) as usize;
        Some(if i < self.images.len() {
            self.images[i].clone()
        } else {
            self.caches[i - self.images.len()].clone()
        })
    }

    async fn pull(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        let Some(t) = self.pick() else {
            return Ok(());
        };
        match check_told(ctx, &t, true).await? {
            Read::Intact => Ok(()),
            Read::TagGone if t.cache && !self.newest_cache(&t) => {
                self.caches.retain(|c| c.seq != t.seq);
                ctx.stats.retired.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Read::TagGone => Err(Fail::Lost(format!("{}:{} answers 404", t.repo, t.tag))),
        }
    }

    async fn heads(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        let Some(t) = self.pick() else {
            return Ok(());
        };
        let r = ctx
            .c
            .head(format!("{}/v2/{}/manifests/{}", ctx.url, t.repo, t.digest))
            .header("Accept", &t.media_type)
            .send()
            .await
            .map_err(unavailable)?;
        if r.status() == 404 && t.cache && !self.newest_cache(&t) {
            return Ok(());
        }
        if transient(r.status()) {
            return Err(unavailable(r.status()));
        }
        let len = r
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if r.status() != 200 || len != Some(t.manifest.len() as u64) {
            return Err(Fail::Lost(format!(
                "HEAD {}@{}: {} (length {len:?})",
                t.repo,
                t.digest,
                r.status()
            )));
        }
        let (d, size) = &t.blobs[0];
        let r = ctx
            .c
            .head(format!("{}/v2/{}/blobs/{d}", ctx.url, t.repo))
            .send()
            .await
            .map_err(unavailable)?;
        if transient(r.status()) {
            return Err(unavailable(r.status()));
        }
        let len = r
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if r.status() == 404 && t.cache && !self.newest_cache(&t) {
            return Ok(());
        }
        if r.status() != 200 || len != Some(*size) {
            return Err(Fail::Lost(format!(
                "HEAD blob {d} of {}:{}: {} (length {len:?})",
                t.repo,
                t.tag,
                r.status()
            )));
        }
        Ok(())
    }

    async fn tag_list(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        let repo = format!("soak/w{}", self.id);
        if self.images.is_empty() {
            return Ok(());
        }
        let r = ctx
            .c
            .get(format!("{}/v2/{repo}/tags/list", ctx.url))
            .send()
            .await
            .map_err(unavailable)?;
        if r.status() != 200 {
            return Err(unavailable(format!("tags/list: {}", r.status())));
        }
        let v: serde_json::Value = r.json().await.map_err(unavailable)?;
        let listed: std::collections::HashSet<&str> = v["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        for t in &self.images {
            if !listed.contains(t.tag.as_str()) {
                return Err(Fail::Lost(format!(
                    "{repo}:{} missing from tags/list",
                    t.tag
                )));
            }
        }
        Ok(())
    }

    /// An artifact with a subject (one of this worker's images), then the referrers list.
    async fn referrer(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        let Some(subject) = self.images.last().cloned() else {
            return Ok(());
        };
        let empty = push_blob(ctx, &mut self.rng, &subject.repo, b"{}").await?;
        let note = format!("note {}", self.rng.next());
        let layer = push_blob(ctx, &mut self.rng, &subject.repo, note.as_bytes()).await?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.ferry.soak.note",
            "config": descriptor("application/vnd.oci.empty.v1+json", &empty.0, empty.1),
            "layers": [descriptor("text/plain", &layer.0, layer.1)],
            "subject": descriptor(OCI_MANIFEST, &subject.digest, subject.manifest.len() as u64),
        }))
        .map_err(unavailable)?;
        let d = sha(&manifest);
        put_manifest(ctx, &subject.repo, &d, OCI_MANIFEST, &manifest).await?;
        let r = ctx
            .c
            .get(format!(
                "{}/v2/{}/referrers/{}",
                ctx.url, subject.repo, subject.digest
            ))
            .send()
            .await
            .map_err(unavailable)?;
        if r.status() != 200 {
            return Err(unavailable(format!("referrers: {}", r.status())));
        }
        let v: serde_json::Value = r.json().await.map_err(unavailable)?;
        let found = v["manifests"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m["digest"] == d.as_str()));
        if !found {
            return Err(Fail::Lost(format!(
                "referrer {d} of {}:{} not listed",
                subject.repo, subject.tag
            )));
        }
        // Deleted again, so the store stays the same size over a long run.
        let r = ctx
            .c
            .delete(format!("{}/v2/{}/manifests/{d}", ctx.url, subject.repo))
            .send()
            .await
            .map_err(unavailable)?;
        if r.status() != 202 {
            return Err(unavailable(format!("DELETE referrer: {}", r.status())));
        }
        Ok(())
    }

    async fn delete(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        if let Some(t) = self.pending.pop() {
            let r = ctx
                .c
                .delete(format!("{}/v2/{}/manifests/{}", ctx.url, t.repo, t.digest))
                .send()
                .await;
            return match r {
                Ok(r) if r.status() == 202 || r.status() == 404 => Ok(()),
                Ok(r) => {
                    let s = r.status();
                    self.pending.push(t);
                    Err(unavailable(format!("DELETE again: {s}")))
                }
                Err(e) => {
                    self.pending.push(t);
                    Err(unavailable(e))
                }
            };
        }
        if self.images.len() < 2 {
            return Ok(());
        }
        let i = self.rng.below(self.images.len() as u64) as usize;
        // Forgotten before the request: whatever happens next, nobody was told it exists.
        let t = self.images.remove(i);
        let r = ctx
            .c
            .delete(format!("{}/v2/{}/manifests/{}", ctx.url, t.repo, t.digest))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => {}
            Ok(r) => {
                self.uncertain += 1;
                let s = r.status();
                self.pending.push(t);
                return Err(unavailable(format!("DELETE: {s}")));
            }
            Err(e) => {
                self.uncertain += 1;
                self.pending.push(t);
                return Err(unavailable(e));
            }
        }
        ctx.stats.deletes.fetch_add(1, Ordering::Relaxed);
        let r = ctx
            .c
            .get(format!("{}/v2/{}/manifests/{}", ctx.url, t.repo, t.tag))
            .header("Accept", &t.media_type)
            .send()
            .await
            .map_err(unavailable)?;
        match r.status().as_u16() {
            404 => Ok(()),
            200 => Err(Fail::Lost(format!(
                "{}:{} still served after its DELETE answered 202",
                t.repo, t.tag
            ))),
            s => Err(unavailable(format!("GET after DELETE: {s}"))),
        }
    }

    /// `ferry sync` out to a directory, the tag deleted on the server, `ferry sync` back in:
    /// the tag is served again with the same bytes.
    async fn sync_round_trip(&mut self, ctx: &Ctx) -> Result<(), Fail> {
        if self.images.len() < 2 {
            return Ok(());
        }
        let i = self.rng.below(self.images.len() as u64) as usize;
        let t = self.images[i].clone();
        let dir = ctx.work.join(format!("trip-w{}", self.id));
        // A trip directory keeps what earlier trips carried (so a sync out copies only what is
        // missing), but not for ever: an hour's trips left 1.4 GB per worker and filled the disk.
        self.trips += 1;
        if self.trips > 20 {
            self.trips = 1;
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        let src = format!("docker://127.0.0.1:{}/{}:{}", ctx.port, t.repo, t.tag);
        sync(ctx, &src, &dir.display().to_string(), &[]).await?;
        self.images.remove(i);
        let r = ctx
            .c
            .delete(format!("{}/v2/{}/manifests/{}", ctx.url, t.repo, t.digest))
            .send()
            .await;
        if !matches!(&r, Ok(r) if r.status() == 202) {
            self.uncertain += 1;
            self.pending.push(t);
            return Err(unavailable("DELETE before sync in"));
        }
        let dst = format!("docker://127.0.0.1:{}", ctx.port);
        let reference = format!("{}:{}", t.repo, t.tag);
        let mut last = None;
        for _ in 0..5 {
            match sync(
                ctx,
                &dir.display().to_string(),
                &dst,
                &["--ref", &reference],
            )
            .await
            {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        if let Some(e) = last {
            self.uncertain += 1;
            self.pending.push(t);
            return Err(e);
        }
        // Synced in: the server answered every PUT, so the tag is told again.
        match check_told(ctx, &t, true).await? {
            Read::Intact => {
                ctx.stats.syncs.fetch_add(1, Ordering::Relaxed);
                self.images.push(t);
                Ok(())
            }
            Read::TagGone => Err(Fail::Lost(format!(
                "{}:{} missing after ferry sync in succeeded",
                t.repo, t.tag
            ))),
        }
    }
}

async fn sync(ctx: &Ctx, src: &str, dst: &str, extra: &[&str]) -> Result<(), Fail> {
    let out = tokio::process::Command::new(&ctx.ferry)
        .args(["sync", src, dst, "--jobs", "2"])
        .args(extra)
        .env("RUST_LOG", "error")
        .output()
        .await
        .map_err(unavailable)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(unavailable(format!(
            "ferry sync {src} {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Main

struct Opts {
    ferry: PathBuf,
    data: String,
    work: PathBuf,
    duration: Duration,
    workers: usize,
    garage: Option<(PathBuf, PathBuf)>,
    seed: u64,
    /// Mean seconds between server kills (uniform over half to one and a half of it); 0: none.
    kill_every: u64,
    /// Seconds between the server's GC runs (each preceded by retention).
    gc_every: u64,
    /// Where to write the RSS and descriptor samples (CSV).
    samples: Option<PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        ferry: PathBuf::from("target/release/ferry"),
        data: String::new(),
        work: PathBuf::new(),
        duration: Duration::from_secs(180),
        workers: 6,
        garage: None,
        kill_every: 40,
        gc_every: 20,
        samples: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
    };
    let mut garage_dir = None;
    let mut garage_script = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--ferry" => o.ferry = v.into(),
            "--data" => o.data = v,
            "--work" => o.work = v.into(),
            "--duration" => o.duration = parse_duration(&v),
            "--workers" => o.workers = v.parse().expect("N"),
            "--garage" => garage_dir = Some(PathBuf::from(v)),
            "--garage-script" => garage_script = Some(PathBuf::from(v)),
            "--samples" => o.samples = Some(v.into()),
            "--gc-every" => o.gc_every = parse_duration(&v).as_secs(),
            "--kill-every" => o.kill_every = parse_duration(&v).as_secs(),
            "--seed" => o.seed = v.parse::<u64>().expect("N") | 1,
            _ => panic!("unknown argument {a}"),
        }
    }
    assert!(!o.data.is_empty(), "--data DIR or s3://…");
    assert!(!o.work.as_os_str().is_empty(), "--work DIR");
    if let (Some(d), Some(s)) = (garage_dir, garage_script) {
        o.garage = Some((d, s));
    }
    o
}

/// A pusher as slow as a person on a bad link: it pushes a config and a layer, asks whether they
/// are there (HEAD: the registry's promise), waits about as long as the GC grace (10 s, so GC
/// runs in between, sometimes past the promise), then PUTs the manifest. A 201 must stay true
/// (checked at the end); a MANIFEST_BLOB_UNKNOWN is the honest answer when GC came first.
async fn slow_pusher(ctx: Ctx, mut rng: Rng, told: Arc<Mutex<Vec<Told>>>, refused: Arc<AtomicU64>) {
    let repo = "soak/slow".to_owned();
    let mut seq = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        seq += 1;
        let n = 512 + rng.below(64 << 10) as usize;
        let layer = rng.bytes(n);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","slow":{seq},"r":{}}}"#,
            rng.next()
        )
        .into_bytes();
        let (Ok(l), Ok(c)) = (
            push_blob(&ctx, &mut rng, &repo, &layer).await,
            push_blob(&ctx, &mut rng, &repo, &config).await,
        ) else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        for (d, _) in [&l, &c] {
            let _ = ctx
                .c
                .head(format!("{}/v2/{repo}/blobs/{d}", ctx.url))
                .send()
                .await;
        }
        let wait = Duration::from_millis(6_000 + rng.below(10_000));
        let until = Instant::now() + wait;
        while Instant::now() < until && !ctx.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &c.0, c.1),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &l.0, l.1)],
        }))
        .expect("json");
        let tag = format!("s{seq}");
        let r = ctx
            .c
            .put(format!("{}/v2/{repo}/manifests/{tag}", ctx.url))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await;
        let t = Instant::now();
        let result = match r {
            Ok(r) if r.status() == 201 => {
                told.lock().unwrap_or_else(|p| p.into_inner()).push(Told {
                    digest: sha(&manifest),
                    repo: repo.clone(),
                    tag,
                    media_type: OCI_MANIFEST.into(),
                    manifest,
                    blobs: vec![l, c],
                    cache: false,
                    seq,
                });
                ctx.stats.pushes.fetch_add(1, Ordering::Relaxed);
                ctx.stats.slow_told.fetch_add(1, Ordering::Relaxed);
                retire_slow(&ctx, &repo, &told).await
            }
            Ok(r) if r.status() == 400 => {
                let text = r.text().await.unwrap_or_default();
                if text.contains("MANIFEST_BLOB_UNKNOWN") {
                    refused.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                } else {
                    Err(Fail::Lost(format!("slow PUT refused: {text}")))
                }
            }
            // Killed mid-request: whether the tag exists is not known, so it is not counted.
            Ok(r) => Err(unavailable(format!("slow PUT: {}", r.status()))),
            Err(e) => Err(unavailable(e)),
        };
        ctx.stats.done(t, &result);
    }
}

/// The slow pusher's tags kept at once: past this, the oldest is read back in full (it was told
/// 201, so it must be whole) and deleted, so the store stays the size it was at 10% of the run
/// and the leak check compares like with like.
const SLOW_KEEP: usize = 10;

async fn retire_slow(ctx: &Ctx, repo: &str, told: &Mutex<Vec<Told>>) -> Result<(), Fail> {
    let oldest = {
        let mut t = told.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() <= SLOW_KEEP {
            return Ok(());
        }
        t.remove(0)
    };
    let put_back = |t: Told| told.lock().unwrap_or_else(|p| p.into_inner()).insert(0, t);
    match check_told(ctx, &oldest, true).await {
        Ok(Read::Intact) => {}
        Ok(Read::TagGone) => {
            return Err(Fail::Lost(format!(
                "{}:{} answers 404",
                oldest.repo, oldest.tag
            )))
        }
        Err(Fail::Unavailable(e)) => {
            put_back(oldest);
            return Err(Fail::Unavailable(e));
        }
        Err(lost) => return Err(lost),
    }
    let url = format!("{}/v2/{repo}/manifests/{}", ctx.url, oldest.digest);
    match ctx.c.delete(&url).send().await {
        Ok(r) if r.status() == 202 || r.status() == 404 => {
            ctx.stats.deletes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(r) => {
            let s = r.status();
            put_back(oldest);
            Err(unavailable(format!("DELETE slow: {s}")))
        }
        Err(e) => {
            put_back(oldest);
            Err(unavailable(e))
        }
    }
}

/// Deletes under a repository that holds nothing of what it names: every one must be refused
/// (404), and nothing the other repositories hold may go (the end check reads them all). Also a
/// mount into it and a delete of the mount: allowed, and it takes nothing from the source.
async fn intruder(ctx: Ctx, mut rng: Rng, told: Arc<Mutex<Vec<Told>>>) {
    let repo = "soak/intruder";
    while !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
        let pick = {
            let t = told.lock().unwrap_or_else(|p| p.into_inner());
            if t.is_empty() {
                continue;
            }
            t[rng.below(t.len() as u64) as usize].clone()
        };
        let start = Instant::now();
        let (layer, _) = &pick.blobs[0];
        let mut result = Ok(());
        for url in [
            format!("{}/v2/{repo}/blobs/{layer}", ctx.url),
            format!("{}/v2/{repo}/manifests/{}", ctx.url, pick.digest),
        ] {
            match ctx.c.delete(&url).send().await {
                Ok(r) if r.status() == 202 => {
                    result = Err(Fail::Lost(format!(
                        "DELETE {url} was accepted; {repo} holds none of it"
                    )));
                }
                Ok(_) => {}
                Err(e) => result = Err(unavailable(e)),
            }
        }
        // Mounted, then deleted under the intruder: its own copy only.
        let m = ctx
            .c
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?mount={layer}&from={}",
                ctx.url, pick.repo
            ))
            .send()
            .await;
        if matches!(&m, Ok(r) if r.status() == 201) {
            let _ = ctx
                .c
                .delete(format!("{}/v2/{repo}/blobs/{layer}", ctx.url))
                .send()
                .await;
        }
        ctx.stats.deletes.fetch_add(1, Ordering::Relaxed);
        ctx.stats.done(start, &result);
    }
}

/// A told tag read back in full at the end, again while the server is (re)starting.
async fn read_back(ctx: &Ctx, t: &Told) -> Result<Read, Fail> {
    let mut result = Err(Fail::Unavailable(String::new()));
    for _ in 0..10 {
        result = check_told(ctx, t, true).await;
        if !matches!(result, Err(Fail::Unavailable(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    result
}

fn garage(script: &Path, dir: &Path, verb: &str, node: u64) {
    let st = Command::new("bash")
        .arg(script)
        .args([verb, &dir.display().to_string(), &node.to_string()])
        .stdout(Stdio::null())
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!("garage {verb} {node} failed");
    }
}

#[tokio::main]
async fn main() {
    let o = opts();
    std::fs::create_dir_all(&o.work).expect("work dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("http://127.0.0.1:{port}");
    let retention = o.work.join("retention.toml");
    std::fs::write(
        &retention,
        format!("[repo.\"soak/w[0-9]+-cache\"]\nkeep-last = {CACHE_KEEP}\n"),
    )
    .expect("retention file");
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        &o.data,
        "--gc-interval",
        &format!("{}s", o.gc_every),
        "--gc-grace",
        "10s",
        "--retention",
        &retention.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = Arc::new(Mutex::new(Server {
        ferry: o.ferry.clone(),
        args,
        log: o.work.join("ferry.log"),
        url: url.clone(),
        child: None,
    }));
    server.lock().expect("server").start(&[]);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let ctx_for = |stats: &Arc<Stats>| Ctx {
        c: c.clone(),
        url: url.clone(),
        stats: stats.clone(),
        stop: stop.clone(),
        ferry: o.ferry.clone(),
        work: o.work.clone(),
        port,
    };
    // Warm-up, before the clock and the chaos start: every worker holds as many images and
    // caches as it will in steady state, so the store is the same size at 10% of the run as at
    // its end and the leak check compares like with like.
    let warm_stats = Arc::new(Stats::default());
    let warmed = futures_util::future::join_all((0..o.workers).map(|id| {
        let ctx = ctx_for(&warm_stats);
        let mut w = Worker {
            id,
            rng: Rng(o.seed.wrapping_mul(id as u64 + 7) | 1),
            seq: 0,
            images: Vec::new(),
            caches: Vec::new(),
            uncertain: 0,
            pending: Vec::new(),
            trips: 0,
        };
        async move {
            while w.images.len() < IMAGE_TAGS_MAX || w.caches.len() < CACHE_KEEP {
                w.seq += 1;
                let shared = w.shared_layers();
                let r = if w.images.len() < IMAGE_TAGS_MAX {
                    push_image(&ctx, &mut w.rng, w.id, w.seq, &shared)
                        .await
                        .map(|t| w.images.push(t))
                } else {
                    push_cache(&ctx, &mut w.rng, w.id, w.seq)
                        .await
                        .map(|t| w.caches.push(t))
                };
                if let Err(e) = r {
                    eprintln!("warm-up: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            w
        }
    }))
    .await;
    let started = Instant::now();
    println!(
        "soak: {} for {} s, {} workers, seed {}, data {}",
        url,
        o.duration.as_secs(),
        o.workers,
        o.seed,
        o.data
    );

    // Chaos: kill -9 the server every 20-60 s (--kill-every 40s) and start it again at once; on S3, also a storage
    // node (not the one ferry talks to) for 20-40 s every 60-120 s.
    let chaos = {
        let (server, stats, stop) = (server.clone(), stats.clone(), stop.clone());
        let mut rng = Rng(o.seed ^ 0xC4A05);
        let every = o.kill_every;
        let mut pause = move || Duration::from_secs(every / 2 + rng.below(every + 1));
        let mut rng = Rng(o.seed ^ 0x5EED);
        std::thread::spawn(move || {
            let mut next = Instant::now() + pause();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if every > 0 && Instant::now() >= next {
                    let mut s = server.lock().unwrap_or_else(|p| p.into_inner());
                    s.kill9();
                    stats.kills.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(rng.below(1500)));
                    s.start(&[]);
                    next = Instant::now() + pause();
                }
            }
        })
    };
    let node_chaos = o.garage.clone().map(|(dir, script)| {
        let (stats, stop) = (stats.clone(), stop.clone());
        let mut rng = Rng(o.seed ^ 0x6A4A6E);
        std::thread::spawn(move || {
            let mut down: Option<(u64, Instant)> = None;
            let mut next = Instant::now() + Duration::from_secs(60 + rng.below(60));
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                match down {
                    Some((n, until)) if Instant::now() >= until => {
                        garage(&script, &dir, "restart", n);
                        down = None;
                        next = Instant::now() + Duration::from_secs(60 + rng.below(60));
                    }
                    None if Instant::now() >= next => {
                        let n = 2 + rng.below(2);
                        garage(&script, &dir, "kill", n);
                        stats.node_kills.fetch_add(1, Ordering::Relaxed);
                        down = Some((n, Instant::now() + Duration::from_secs(20 + rng.below(20))));
                    }
                    _ => {}
                }
            }
            if let Some((n, _)) = down {
                garage(&script, &dir, "restart", n);
            }
        })
    });

    // Per-minute lines, and the samples the leak check uses.
    let samples: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let reporter = {
        let (server, stats, stop, samples) =
            (server.clone(), stats.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            let mut minute = 0;
            let mut last_line = Instant::now();
            let (mut rss_max, mut fds_max) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let pid = server.lock().unwrap_or_else(|p| p.into_inner()).pid();
                if let Some(pid) = pid {
                    if let (Some(rss), Some(fds)) = (status_kib(pid, "VmRSS:"), fd_count(pid)) {
                        samples.lock().unwrap_or_else(|p| p.into_inner()).push((
                            started.elapsed().as_secs_f64(),
                            rss,
                            fds,
                        ));
                        rss_max = rss_max.max(rss);
                        fds_max = fds_max.max(fds);
                    }
                }
                if last_line.elapsed() >= Duration::from_secs(60) {
                    last_line = Instant::now();
                    minute += 1;
                    let m = std::mem::take(
                        &mut *stats.minute.lock().unwrap_or_else(|p| p.into_inner()),
                    );
                    let mut lat = m.lat;
                    lat.sort_by(f64::total_cmp);
                    println!(
                        "minute {minute:>3}: {:>6} ops {:>4} errors  p50 {:>7.1} ms  p99 {:>7.1} ms  RSS {:>6.1} MiB  fds {:>4}  kills {:>3}  lost {}",
                        m.ops,
                        m.errors,
                        pct(&lat, 0.5),
                        pct(&lat, 0.99),
                        rss_max as f64 / 1024.0,
                        fds_max,
                        stats.kills.load(Ordering::Relaxed),
                        stats.lost.load(Ordering::Relaxed),
                    );
                    (rss_max, fds_max) = (0, 0);
                }
            }
        })
    };

    let mut handles = Vec::new();
    for mut w in warmed {
        let ctx = ctx_for(&stats);
        handles.push(tokio::spawn(async move {
            while !ctx.stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = w.step(&ctx).await;
                ctx.stats.done(t, &r);
                if matches!(r, Err(Fail::Unavailable(_))) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            w
        }));
    }
    // The slow pusher, the intruder, and `ferry gc` as a process of its own (beside the
    // server's schedule), as the README and the .deb timer run it.
    let slow_told: Arc<Mutex<Vec<Told>>> = Arc::default();
    let slow_refused = Arc::new(AtomicU64::new(0));
    let slow = tokio::spawn(slow_pusher(
        ctx_for(&stats),
        Rng(o.seed ^ 0x510),
        slow_told.clone(),
        slow_refused.clone(),
    ));
    let intruding = tokio::spawn(intruder(
        ctx_for(&stats),
        Rng(o.seed ^ 0x1A7),
        slow_told.clone(),
    ));
    let external_gcs = Arc::new(AtomicU64::new(0));
    let external_gc = {
        let (stop, ferry, data, runs) = (
            stop.clone(),
            o.ferry.clone(),
            o.data.clone(),
            external_gcs.clone(),
        );
        let every = Duration::from_secs(o.gc_every.max(2));
        std::thread::spawn(move || {
            std::thread::sleep(every / 2);
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new(&ferry)
                    .args(["gc", "--data", &data, "--grace", "10s"])
                    .env("RUST_LOG", "warn")
                    .output();
                match out {
                    Ok(o) if o.status.success() => {
                        runs.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(o) => eprintln!("ferry gc: {}", String::from_utf8_lossy(&o.stderr).trim()),
                    Err(e) => eprintln!("ferry gc: {e}"),
                }
                let until = Instant::now() + every;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
    };
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let _ = slow.await;
    let _ = intruding.await;
    let _ = external_gc.join();
    let mut workers = Vec::new();
    for h in handles {
        workers.push(h.await.expect("worker"));
    }
    let _ = chaos.join();
    if let Some(n) = node_chaos {
        let _ = n.join();
    }
    let _ = reporter.await;
    let ran = started.elapsed();

    // The end: the server up (not killed now), every told tag read back in full.
    {
        let mut s = server.lock().unwrap_or_else(|p| p.into_inner());
        if s.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            s.start(&[]);
        }
    }
    let ctx = Ctx {
        c: c.clone(),
        url: url.clone(),
        stats: stats.clone(),
        stop: stop.clone(),
        ferry: o.ferry.clone(),
        work: o.work.clone(),
        port,
    };
    let (mut checked, mut lost_end, mut retired_end, mut uncertain) = (0u64, Vec::new(), 0u64, 0);
    for w in &workers {
        uncertain += w.uncertain;
        for t in w.images.iter().chain(w.caches.iter()) {
            let result = read_back(&ctx, t).await;
            checked += 1;
            match result {
                Ok(Read::Intact) => {}
                Ok(Read::TagGone) if t.cache && !w.newest_cache(t) => retired_end += 1,
                Ok(Read::TagGone) => lost_end.push(format!("{}:{} answers 404", t.repo, t.tag)),
                Err(Fail::Lost(what)) => lost_end.push(what),
                Err(Fail::Unavailable(e)) => {
                    lost_end.push(format!("{}:{} could not be read: {e}", t.repo, t.tag))
                }
            }
        }
    }
    let slow_told = std::mem::take(&mut *slow_told.lock().unwrap_or_else(|p| p.into_inner()));
    for t in &slow_told {
        let result = read_back(&ctx, t).await;
        checked += 1;
        match result {
            Ok(Read::Intact) => {}
            Ok(Read::TagGone) => lost_end.push(format!("{}:{} answers 404", t.repo, t.tag)),
            Err(Fail::Lost(what)) => lost_end.push(what),
            Err(Fail::Unavailable(e)) => {
                lost_end.push(format!("{}:{} could not be read: {e}", t.repo, t.tag))
            }
        }
    }
    println!(
        "slow pushes: {} told ({} kept to the end, the others read back whole and deleted), {} refused (GC came first); external ferry gc runs: {}",
        stats.slow_told.load(Ordering::Relaxed),
        slow_told.len(),
        slow_refused.load(Ordering::Relaxed),
        external_gcs.load(Ordering::Relaxed)
    );
    for l in &lost_end {
        eprintln!("LOST at the end: {l}");
    }
    let clean_stop = server.lock().unwrap_or_else(|p| p.into_inner()).stop();

    // `ferry verify` on the store.
    let verify = Command::new(&o.ferry)
        .args(["verify", "--data", &o.data])
        .env("RUST_LOG", "warn")
        .output()
        .expect("ferry verify");
    let verify_ok = verify.status.success();
    if !verify_ok {
        eprintln!(
            "ferry verify failed:\n{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    // Leftovers after expiry: a start with a 1 s expiry removes sessions the kills cut off,
    // and temp files; nothing may remain.
    std::thread::sleep(Duration::from_secs(2));
    {
        let mut s = server.lock().unwrap_or_else(|p| p.into_inner());
        s.start(&["--upload-expiry", "1s"]);
        s.stop();
    }
    let leftovers = leftovers(&o.data).await;
    for l in &leftovers {
        eprintln!("left over: {l}");
    }

    // Leak check: RSS and descriptors in the last 10% of the run against those at 10%.
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let total = ran.as_secs_f64();
    // Medians over each window: a sample taken just after a kill -9 (a restart re-reading the
    // store while every client reconnects at once) is one sample, not the window's figure.
    let window = |from: f64, to: f64| -> (u64, u64) {
        let mut rss: Vec<u64> = Vec::new();
        let mut fds: Vec<u64> = Vec::new();
        for (t, r, f) in samples.iter() {
            if *t >= from * total && *t <= to * total {
                rss.push(*r);
                fds.push(*f);
            }
        }
        rss.sort_unstable();
        fds.sort_unstable();
        (
            rss.get(rss.len() / 2).copied().unwrap_or(0),
            fds.get(fds.len() / 2).copied().unwrap_or(0),
        )
    };
    if let Some(path) = &o.samples {
        let csv: String = samples
            .iter()
            .map(|(t, r, f)| format!("{t:.1},{r},{f}\n"))
            .collect();
        let _ = std::fs::write(path, format!("seconds,rss_kib,fds\n{csv}"));
    }
    let (rss10, fds10) = window(0.05, 0.15);
    let (rss_end, fds_end) = window(0.90, 1.0);
    let rss_ratio = rss_end as f64 / rss10.max(1) as f64;
    let mut lat = stats
        .lat_all
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    lat.sort_by(f64::total_cmp);
    let lost = stats.lost.load(Ordering::Relaxed) + lost_end.len() as u64;
    let fds_flat = fds_end <= fds10 + fds10 / 4 + 8;
    // A short run cannot tell a leak from warm-up: the allocator keeps up to 16 MiB of freed
    // memory per heap for reuse, and a young process has not reached that yet. The leak check
    // is judged on runs of 10 minutes and more (the 60-minute soak); shorter runs print it.
    let leak_judged = total >= 600.0;

    println!();
    println!("| soak | value |");
    println!("|---|---|");
    println!("| duration | {:.1} min |", total / 60.0);
    println!("| operations | {} |", stats.ops.load(Ordering::Relaxed));
    println!(
        "| pushes / deletes / sync round trips | {} / {} / {} |",
        stats.pushes.load(Ordering::Relaxed),
        stats.deletes.load(Ordering::Relaxed),
        stats.syncs.load(Ordering::Relaxed)
    );
    println!(
        "| errors while the server or a node was down | {} |",
        stats.errors.load(Ordering::Relaxed)
    );
    println!(
        "| latency p50 / p99 (all operations) | {:.1} / {:.1} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    println!(
        "| server kill -9 / storage node kills | {} / {} |",
        stats.kills.load(Ordering::Relaxed),
        stats.node_kills.load(Ordering::Relaxed)
    );
    println!(
        "| told tags checked at the end | {checked} (cache tags retired by retention: {}; fate unknown after a cut DELETE: {uncertain}) |",
        stats.retired.load(Ordering::Relaxed) + retired_end
    );
    println!("| lost tags or wrong bytes | {lost} |");
    println!(
        "| ferry verify | {} |",
        if verify_ok { "clean" } else { "FAILED" }
    );
    println!("| leftovers after expiry | {} |", leftovers.len());
    println!(
        "| RSS at 10% / last 10% (medians) | {:.1} / {:.1} MiB ({rss_ratio:.2}x){} |",
        rss10 as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        if leak_judged {
            ""
        } else {
            "; not judged under 10 minutes"
        }
    );
    println!("| open descriptors at 10% / last 10% (medians) | {fds10} / {fds_end} |");
    println!("| clean stop on SIGTERM | {clean_stop} |");
    let pass = lost == 0
        && verify_ok
        && leftovers.is_empty()
        && (!leak_judged || (rss_ratio <= 1.1 && fds_flat))
        && clean_stop
        && checked > 0;
    println!();
    println!(
        "soak: {} {lost} lost tags, verify {}, {} leftovers, RSS {:.2}x, fds {fds10} -> {fds_end}, {} ops, {} kills",
        if pass { "PASS" } else { "FAIL" },
        if verify_ok { "clean" } else { "FAILED" },
        leftovers.len(),
        rss_ratio,
        stats.ops.load(Ordering::Relaxed),
        stats.kills.load(Ordering::Relaxed),
    );
    std::process::exit(if pass { 0 } else { 1 });
}

/// Upload sessions and temp files left in the store.
async fn leftovers(data: &str) -> Vec<String> {
    if let Some(rest) = data.strip_prefix("s3://") {
        use futures_util::StreamExt;
        use object_store::ObjectStore;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let store = match object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .build()
        {
            Ok(s) => s,
            Err(e) => return vec![format!("cannot list the bucket: {e}")],
        };
        let p = format!(
            "{}.ferry/uploads/",
            prefix.trim_end_matches('/').to_owned() + "/"
        );
        let p = p.trim_start_matches('/').to_owned();
        let path = object_store::path::Path::from(p.as_str());
        let mut out = Vec::new();
        let mut list = store.list(Some(&path));
        while let Some(item) = list.next().await {
            match item {
                Ok(m) => out.push(m.location.to_string()),
                Err(e) => out.push(format!("listing failed: {e}")),
            }
        }
        return out;
    }
    let mut out = Vec::new();
    let dir = data.strip_prefix("oci:").unwrap_or(data);
    for sub in [".ferry/tmp", ".ferry/uploads"] {
        if let Ok(rd) = std::fs::read_dir(Path::new(dir).join(sub)) {
            out.extend(rd.flatten().map(|e| e.path().display().to_string()));
        }
    }
    out
}
