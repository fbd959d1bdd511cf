//! What the adversarial review found (issue "Nothing lost, nothing wrong, nothing stuck"), one
//! test per finding, each staged step by step where it is a race: GC held between its mark and
//! its sweep, or a manifest PUT held between its promises and its record
//! (`Store::set_pause_hook`), so the interleaving that lost data is the one that runs, every time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;
use ferry::layout::Store;

/// A point where one operation is held until the test lets it go.
struct Stage {
    reached: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

impl Stage {
    /// Hold `store` the first time it reaches `point`.
    fn at(store: &Store, point: &'static str) -> Stage {
        let (reached_tx, reached) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let (reached_tx, go_rx) = (Mutex::new(reached_tx), Mutex::new(go_rx));
        let fired = AtomicBool::new(false);
        store.set_pause_hook(Arc::new(move |p| {
            if p != point || fired.swap(true, Ordering::SeqCst) {
                return;
            }
            let _ = reached_tx.lock().unwrap().send(());
            // A test that fails elsewhere must not leave the operation held for ever.
            let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(120));
        }));
        Stage { reached, go }
    }

    /// Wait (off the runtime's threads) until the operation is held there.
    async fn reached(self, what: &str) -> mpsc::Sender<()> {
        let Stage { reached, go } = self;
        let what = what.to_owned();
        tokio::task::spawn_blocking(move || {
            reached
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{what} never reached its stage"));
        })
        .await
        .unwrap();
        go
    }
}

async fn status(url: String) -> StatusCode {
    http().get(url).send().await.unwrap().status()
}

/// Push a config and a layer and HEAD both (the client is now told they are stored); returns
/// the manifest that references them.
async fn push_parts(url: &str, repo: &str, seed: u64) -> Vec<u8> {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes(40_000, seed);
    for b in [&config, &layer] {
        let d = push_blob(url, repo, b).await;
        let r = http()
            .head(format!("{url}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    image_manifest(&config, &[&layer])
}

fn refs_of(manifest: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![v["config"]["digest"].as_str().unwrap().to_owned()];
    for l in v["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_owned());
    }
    out
}

/// Every blob the tag's manifest names answers 200, and the store verifies clean.
async fn intact(srv: &TestServer, repo: &str, tag: &str, manifest: &[u8]) {
    let r = http()
        .get(format!("{}/v2/{repo}/manifests/{tag}", srv.url))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{repo}:{tag} does not resolve");
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest);
    for d in refs_of(manifest) {
        let s = status(format!("{}/v2/{repo}/blobs/{d}", srv.url)).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{repo}:{tag} was acknowledged, and {d} is gone"
        );
    }
    let store = srv.other_store().await;
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false).unwrap())
        .await
        .unwrap();
    assert!(v.ok(), "verify after the race: {v}");
}

/// Longer than a promise lasts for a GC with `GRACE` (a bucket's Last-Modified has one-second
/// resolution: a second of slack). Waiting only ever makes a blob older, so it cannot make the
/// test pass by luck.
const GRACE: Duration = Duration::from_secs(1);
const PAST_GRACE: Duration = Duration::from_millis(2600);

fn start_gc(store: Store) -> tokio::task::JoinHandle<ferry::gc::GcReport> {
    tokio::task::spawn_blocking(move || ferry::gc::gc(&store, GRACE, false).unwrap())
}

/// Item 1, first half: blobs pushed and HEADed, the client waits past the grace period, and
/// PUTs the manifest while GC runs — between GC's mark (which saw no manifest) and its sweep.
/// The PUT is answered 201 only if the blobs stay (they do now), never 201 with the layer gone.
async fn manifest_put_between_mark_and_sweep(backend: Backend) {
    let Some(srv) = TestServer::start_in(backend).await else {
        return;
    };
    let repo = "race/app";
    let manifest = push_parts(&srv.url, repo, 7).await;
    tokio::time::sleep(PAST_GRACE).await;
    let gc_store = srv.other_store().await;
    let stage = Stage::at(&gc_store, "gc:marked");
    let gc = start_gc(gc_store);
    let go = stage.reached("GC").await;
    let r = put_manifest_status(&srv.url, repo, "1", &manifest).await;
    assert_eq!(r, StatusCode::CREATED);
    go.send(()).unwrap();
    let report = gc.await.unwrap();
    assert_eq!(
        report.swept, 0,
        "GC swept what the PUT referenced: {report}"
    );
    intact(&srv, repo, "1", &manifest).await;
    srv.stop().await;
}

/// Item 1, second half: a manifest whose bytes are stored but that no repository records any
/// more (as after retention dropped its tag) is PUT again under a new tag while GC is between
/// its mark and its sweep: the manifest file itself must not be swept.
async fn stored_manifest_put_again_between_mark_and_sweep(backend: Backend) {
    let Some(srv) = TestServer::start_in(backend).await else {
        return;
    };
    let repo = "race/again";
    let manifest = push_parts(&srv.url, repo, 8).await;
    assert_eq!(
        put_manifest_status(&srv.url, repo, "old", &manifest).await,
        StatusCode::CREATED
    );
    let d = sha256(&manifest);
    // Retention's drop: the record goes, the bytes stay for GC.
    let admin = srv.other_store().await;
    admin
        .update_index(move |f| {
            let n = f.drop_tag("race/again", "old", &[d].into_iter().collect());
            Ok(((), n))
        })
        .await
        .unwrap();
    tokio::time::sleep(PAST_GRACE).await;
    let gc_store = srv.other_store().await;
    let stage = Stage::at(&gc_store, "gc:marked");
    let gc = start_gc(gc_store);
    let go = stage.reached("GC").await;
    assert_eq!(
        put_manifest_status(&srv.url, repo, "new", &manifest).await,
        StatusCode::CREATED
    );
    go.send(()).unwrap();
    let report = gc.await.unwrap();
    assert_eq!(report.swept, 0, "{report}");
    intact(&srv, repo, "new", &manifest).await;
    srv.stop().await;
}

/// Item 1, the slow PUT: held after its first promises for longer than the grace period while
/// a whole GC runs and sweeps what it referenced. The PUT must then end refused
/// (MANIFEST_BLOB_UNKNOWN, as if GC had finished first) with no tag left behind — not 201.
async fn slow_manifest_put_across_a_whole_gc(backend: Backend) {
    let Some(srv) = TestServer::start_in(backend).await else {
        return;
    };
    let repo = "race/slow";
    let manifest = push_parts(&srv.url, repo, 9).await;
    let stage = Stage::at(&srv.app.store, "manifest:promised");
    let put = {
        let (url, m) = (srv.url.clone(), manifest.clone());
        tokio::spawn(async move {
            let r = http()
                .put(format!("{url}/v2/race/slow/manifests/1"))
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .body(m)
                .send()
                .await
                .unwrap();
            let st = r.status();
            let code = if st.is_success() {
                String::new()
            } else {
                error_code(r).await
            };
            (st, code)
        })
    };
    let go = stage.reached("the manifest PUT").await;
    tokio::time::sleep(PAST_GRACE).await;
    let report = start_gc(srv.other_store().await).await.unwrap();
    assert!(
        report.swept >= 2,
        "GC was to sweep the held PUT's blobs: {report}"
    );
    go.send(()).unwrap();
    let (st, code) = put.await.unwrap();
    assert_eq!(
        (st, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
        "a PUT whose blobs were swept must be refused"
    );
    let s = status(format!("{}/v2/{repo}/manifests/1", srv.url)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the refused PUT left its tag");
    let store = srv.other_store().await;
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false).unwrap())
        .await
        .unwrap();
    assert!(v.ok(), "{v}");
    srv.stop().await;
}

async fn put_manifest_status(url: &str, repo: &str, tag: &str, m: &[u8]) -> StatusCode {
    http()
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_between_mark_and_sweep_keeps_what_a_manifest_put_references_dir() {
    manifest_put_between_mark_and_sweep(Backend::Dir).await;
    stored_manifest_put_again_between_mark_and_sweep(Backend::Dir).await;
    slow_manifest_put_across_a_whole_gc(Backend::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_between_mark_and_sweep_keeps_what_a_manifest_put_references_s3() {
    manifest_put_between_mark_and_sweep(Backend::S3).await;
    stored_manifest_put_again_between_mark_and_sweep(Backend::S3).await;
    slow_manifest_put_across_a_whole_gc(Backend::S3).await;
}

/// Item 7: GC and verify walk each manifest once. 400 indexes, each holding the one before
/// and each recorded in its repository (as pushing them by digest records them): before, every
/// recorded index re-read its whole subtree (80,000 manifest reads here; 0.86 s, and 7.8 s at
/// 1,200). Counted in reads, not timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_and_verify_read_each_nested_manifest_once() {
    let srv = TestServer::start().await;
    let repo = "nested/deep";
    let manifest = push_image(&srv.url, repo, "base", 11).await;
    let mut child = (
        sha256(&manifest),
        manifest.len(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    const N: usize = 400;
    for i in 0..N {
        let idx = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": child.2, "digest": child.0.to_string(), "size": child.1}],
            "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let d = sha256(&idx);
        let r = http()
            .put(format!("{}/v2/{repo}/manifests/{d}", srv.url))
            .header("Content-Type", "application/vnd.oci.image.index.v1+json")
            .body(idx.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        child = (d, idx.len(), "application/vnd.oci.image.index.v1+json");
    }
    let manifests = N as u64 + 1;
    let store = Store::open(&srv.dir, false).unwrap();
    let (store, report) = tokio::task::spawn_blocking(move || {
        let r = ferry::gc::gc(&store, Duration::from_secs(3600), true).unwrap();
        (store, r)
    })
    .await
    .unwrap();
    assert_eq!(report.reachable as u64, manifests + 2, "{report}");
    // GC marks twice (before and after listing the blobs): each manifest once per mark.
    let gc_reads = store.small_reads();
    assert!(
        gc_reads <= 2 * manifests,
        "GC read {gc_reads} manifests for {manifests}"
    );
    let store = Store::open(&srv.dir, false).unwrap();
    let (store, v) = tokio::task::spawn_blocking(move || {
        let v = ferry::verify::verify(&store, 2, false).unwrap();
        (store, v)
    })
    .await
    .unwrap();
    assert!(v.ok(), "{v}");
    let reads = store.small_reads();
    assert!(
        reads <= manifests,
        "verify read {reads} manifests for {manifests}"
    );
    srv.stop().await;
}

async fn head_status(url: String) -> StatusCode {
    http().head(url).send().await.unwrap().status()
}

async fn delete_status(url: String) -> StatusCode {
    http().delete(url).send().await.unwrap().status()
}

/// Push an index of one image into `repo` (children by digest first, as clients do); returns
/// (index bytes, child manifest bytes).
async fn push_index(url: &str, repo: &str, tag: &str, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let child = push_image(url, repo, &format!("child-{seed}"), seed).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&child).to_string(),
            "size": child.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let r = http()
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    (index, child)
}

/// Item 2: repositories cannot break each other. Each repository answers only for what it holds
/// (pushed, mounted, recorded, or referenced by what it records), and a delete under one takes
/// nothing from another — on a directory and on Garage.
async fn repositories_cannot_break_each_other(backend: Backend) {
    let Some(srv) = TestServer::start_in(backend).await else {
        return;
    };
    let u = srv.url.clone();
    let m = push_image(&u, "a/bb", "1", 21).await;
    let refs = refs_of(&m);
    let layer = refs[1].clone();
    let md = sha256(&m);

    // Reads under a repository that never held it: 404 (before: 200 under any name).
    for url in [
        format!("{u}/v2/never/pushed/blobs/{layer}"),
        format!("{u}/v2/never/pushed/manifests/{md}"),
    ] {
        assert_eq!(
            head_status(url.clone()).await,
            StatusCode::NOT_FOUND,
            "{url}"
        );
        assert_eq!(status(url.clone()).await, StatusCode::NOT_FOUND, "{url}");
    }
    // A delete under it: 404, and a/bb:1 intact (before: 202, and the layer was gone).
    assert_eq!(
        delete_status(format!("{u}/v2/never/pushed/blobs/{layer}")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        delete_status(format!("{u}/v2/never/pushed/manifests/{md}")).await,
        StatusCode::NOT_FOUND
    );
    intact(&srv, "a/bb", "1", &m).await;

    // A manifest naming a blob only another repository holds is refused, as in Distribution.
    let r = http()
        .put(format!("{u}/v2/thief/app/manifests/1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // A mount makes it this repository's: from a repository that holds it...
    let r = http()
        .post(format!(
            "{u}/v2/c/app/blobs/uploads/?mount={layer}&from=a/bb"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        head_status(format!("{u}/v2/c/app/blobs/{layer}")).await,
        StatusCode::OK
    );
    // ...not from one that does not (a new upload session instead, as the spec says).
    let r = http()
        .post(format!(
            "{u}/v2/d/app/blobs/uploads/?mount={layer}&from=never/pushed"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        head_status(format!("{u}/v2/d/app/blobs/{layer}")).await,
        StatusCode::NOT_FOUND
    );
    // A blob delete under c takes it from c only.
    assert_eq!(
        delete_status(format!("{u}/v2/c/app/blobs/{layer}")).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        head_status(format!("{u}/v2/c/app/blobs/{layer}")).await,
        StatusCode::NOT_FOUND
    );
    intact(&srv, "a/bb", "1", &m).await;

    // A pushes an index and its child; the index is copied into B by a sync. B's "is the child
    // there?" is answered for B, so B gets the child recorded; A's delete of the child by
    // digest then leaves B's tag whole (before: B's tag broke).
    let (index, child) = push_index(&u, "a/app", "1", 22).await;
    let s = ferry::sync::sync(
        &ferry::location::Location::parse(&format!("docker://{}/a/app:1", srv.host())).unwrap(),
        &ferry::location::Location::parse(&format!("docker://{}/b/app", srv.host())).unwrap(),
        &ferry::sync::SyncOptions::default(),
        &ferry::sync::Quiet,
    )
    .await
    .unwrap();
    assert!(s.failed.is_empty(), "{s}");
    let cd = sha256(&child);
    assert_eq!(
        delete_status(format!("{u}/v2/a/app/manifests/{cd}")).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        status(format!("{u}/v2/a/app/manifests/{cd}")).await,
        StatusCode::NOT_FOUND,
        "deleted from a/app"
    );
    let r = http()
        .get(format!("{u}/v2/b/app/manifests/1"))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &index[..]);
    let r = http()
        .get(format!("{u}/v2/b/app/manifests/{cd}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "b/app's child went with a/app's delete"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &child[..]);
    for d in refs_of(&child) {
        assert_eq!(
            status(format!("{u}/v2/b/app/blobs/{d}")).await,
            StatusCode::OK
        );
    }
    // And GC, run now with no grace, takes nothing b/app or a/bb still holds.
    let store = srv.other_store().await;
    let report =
        tokio::task::spawn_blocking(move || ferry::gc::gc(&store, Duration::ZERO, false).unwrap())
            .await
            .unwrap();
    assert!(report.reachable > 0, "{report}");
    intact(&srv, "a/bb", "1", &m).await;
    assert_eq!(
        status(format!("{u}/v2/b/app/manifests/{cd}")).await,
        StatusCode::OK
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_cannot_break_each_other_dir() {
    repositories_cannot_break_each_other(Backend::Dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_cannot_break_each_other_s3() {
    repositories_cannot_break_each_other(Backend::S3).await;
}

/// A store ferry did not write (or an older ferry did) has no links: opened writable, each
/// repository is given what its records reach; served read-only (a USB disk), the same is
/// worked out in memory. Either way reads under a repository answer for it, not for others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_links_answers_per_repository_writable_and_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = TestServer::start_on(&dir, false).await;
    let m = push_image(&srv.url, "x/one", "1", 31).await;
    let other = push_image(&srv.url, "x/two", "1", 32).await;
    srv.stop().await;
    std::fs::remove_dir_all(dir.join(".ferry/links")).unwrap();
    std::fs::remove_file(dir.join(".ferry/links.v1")).unwrap();
    let layer = refs_of(&m)[1].clone();
    let other_layer = refs_of(&other)[1].clone();
    for read_only in [true, false] {
        let srv = TestServer::start_on(&dir, read_only).await;
        let u = srv.url.clone();
        assert_eq!(
            status(format!("{u}/v2/x/one/blobs/{layer}")).await,
            StatusCode::OK,
            "read_only={read_only}"
        );
        assert_eq!(
            status(format!("{u}/v2/x/one/blobs/{other_layer}")).await,
            StatusCode::NOT_FOUND,
            "read_only={read_only}"
        );
        assert_eq!(
            status(format!("{u}/v2/x/two/manifests/{}", sha256(&m))).await,
            StatusCode::NOT_FOUND
        );
        srv.stop().await;
        assert_eq!(
            dir.join(".ferry/links.v1").exists(),
            !read_only,
            "a read-only store is never written; a writable one gets its links"
        );
    }
}

/// Item 5: one pusher cannot stop everyone's uploads. 200 sessions opened in a loop by one
/// address: it gets 429 past its own bound, another address still opens sessions, and once the
/// flooder's sessions sit idle, a new one of its own lets its oldest idle one go (before: every
/// new session for every user got 429 until the 24 h expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_opening_sessions_in_a_loop_cannot_take_everyones() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_opts(
        &tmp.path().join("data"),
        ServerOpts {
            limits: ferry::server::limits::Limits {
                max_sessions: 100,
                max_sessions_per_client: 20,
                session_reclaim_after: Duration::from_secs(1),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let start = |c: reqwest::Client| {
        let url = format!("{}/v2/flood/app/blobs/uploads/", srv.url);
        async move { c.post(url).send().await.unwrap() }
    };
    let flooder = http();
    let mut opened = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let r = start(flooder.clone()).await;
        match r.status() {
            StatusCode::ACCEPTED => {
                opened.push(r.headers()["location"].to_str().unwrap().to_owned())
            }
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(opened.len(), 20, "the flooder's own bound");
    assert_eq!(refused, 180);
    // Another client (another loopback address) is not affected.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..5 {
        assert_eq!(start(other.clone()).await.status(), StatusCode::ACCEPTED);
    }
    // Idle past the reclaim time: the flooder's next session lets its oldest idle one go.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = start(flooder.clone()).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let oldest = &opened[0];
    let r = http()
        .get(format!("{}{oldest}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the oldest idle session was let go"
    );
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    srv.stop().await;
}

/// A registry that misbehaves on purpose (item 4): `/v2/` answers 200; a manifest named
/// `endless` is a body that never ends (no Content-Length), `stall` sends a few bytes then
/// nothing; every blob is an endless body without Content-Length. Counts the bytes it sent.
struct Hostile {
    addr: std::net::SocketAddr,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Hostile {
    async fn start() -> Hostile {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let sent = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    if path == "/v2/" || path == "/v2" {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                            .await;
                        return;
                    }
                    let ct = if path.contains("/manifests/") {
                        "application/vnd.oci.image.manifest.v1+json"
                    } else {
                        "application/octet-stream"
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nConnection: close\r\n\r\n"
                    );
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if path.ends_with("/manifests/stall") {
                        let _ = sock.write_all(b"{\"schemaVersion\":").await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    // Endless: until the reader goes away.
                    let chunk = vec![b' '; 64 << 10];
                    while sock.write_all(&chunk).await.is_ok() {
                        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Hostile { addr, sent }
    }
}

/// Item 4: what an upstream or a source registry sends is bounded by what the request knows, in
/// size and in time. An endless manifest body is cut at the 4 MiB limit (before: read whole,
/// 254 MiB and counting); a stalled one ends at the idle timeout (before: waited for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_and_stalled_manifest_bodies_from_a_source_registry_are_cut() {
    let h = Hostile::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let idle = ferry::remote::RemoteOptions {
        idle_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let opts = ferry::sync::SyncOptions {
        src: idle,
        ..Default::default()
    };
    for (tag, why) in [("endless", "limit for a manifest"), ("stall", "")] {
        let started = std::time::Instant::now();
        let src = format!("docker://{}/app:{tag}", h.addr);
        let dst = tmp.path().join(tag).display().to_string();
        let (src, dst) = (
            ferry::location::Location::parse(&src).unwrap(),
            ferry::location::Location::parse(&dst).unwrap(),
        );
        let run = ferry::sync::sync(&src, &dst, &opts, &ferry::sync::Quiet);
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("{tag}: still reading after a minute"));
        let err = match out {
            Err(e) => e.to_string(),
            Ok(s) => s.failed.join("\n"),
        };
        assert!(!err.is_empty(), "{tag}: the sync succeeded");
        eprintln!("{tag}: {err}");
        assert!(err.contains(why), "{tag}: {err}");
        assert!(started.elapsed() < Duration::from_secs(50), "{tag}");
    }
    // What the endless body got out of the socket before ferry stopped reading: the limit and
    // what the kernel's buffers hold, not hundreds of MiB.
    let sent = h.sent.load(Ordering::Relaxed);
    assert!(sent < 32 << 20, "ferry kept reading: {sent} bytes");
}

/// Item 4, pull-through: a blob sent without Content-Length that never ends is cut at
/// `--upstream-max-blob`, nothing is stored, and every client — the first, one that joined it,
/// and a later one — gets an error rather than a wait until a restart; a stalled manifest ends at
/// the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upstream_blob_ends_for_every_client_and_is_not_stored() {
    let h = Hostile::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let up = ferry::proxy::Upstream::parse(&format!("lab.example=http://{}", h.addr), None, None)
        .unwrap()
        .with_idle_timeout(Duration::from_secs(1))
        .unwrap();
    let pull = ferry::proxy::PullThrough::new(vec![up], Duration::from_secs(600))
        .unwrap()
        .with_max_blob(1 << 20);
    let srv = TestServer::start_opts(
        &tmp.path().join("data"),
        ServerOpts {
            pull: Some(pull),
            ..Default::default()
        },
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let d = sha256(b"whatever the upstream calls it");
    let url = format!("{}/v2/lab.example/app/blobs/{d}", srv.url);
    let get = |c: reqwest::Client, url: String| async move {
        match c.get(&url).send().await {
            Err(e) => Err(e.to_string()),
            Ok(r) if !r.status().is_success() => Err(r.status().to_string()),
            Ok(r) => match r.bytes().await {
                Ok(b) => Ok(b.len()),
                Err(e) => Err(e.to_string()),
            },
        }
    };
    let (a, b) = tokio::join!(
        get(client.clone(), url.clone()),
        get(client.clone(), url.clone())
    );
    for (who, r) in [("first", a), ("joined", b)] {
        let e = r.expect_err(&format!("{who}: a whole blob from an endless body"));
        assert!(!e.contains("timed out"), "{who} waited: {e}");
    }
    let later = get(client.clone(), url.clone()).await;
    let e = later.expect_err("later: a whole blob");
    assert!(!e.contains("timed out"), "later waited: {e}");
    // The upstream was asked, and what was read of it is bounded by the limit (plus what the
    // kernel's buffers hold), three fetches of an endless body.
    let sent = h.sent.load(Ordering::Relaxed);
    assert!(sent >= 1 << 20, "the upstream was not reached: {sent}");
    assert!(sent < 3 * (16 << 20), "read on past the limit: {sent}");
    eprintln!("pull-through blob errors: {e}; upstream sent {sent} bytes in all");
    assert!(
        !srv.dir.join("blobs/sha256").join(d.hex()).exists(),
        "stored"
    );
    assert!(
        srv.leftovers().await.is_empty(),
        "{:?}",
        srv.leftovers().await
    );

    // A manifest that stalls: an error after the idle timeout, not a wait.
    let started = std::time::Instant::now();
    let r = client
        .get(format!("{}/v2/lab.example/app/manifests/stall", srv.url))
        .send()
        .await
        .expect("answered, not timed out");
    assert!(
        r.status().is_server_error() || r.status() == StatusCode::NOT_FOUND,
        "{}",
        r.status()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // And an endless manifest is cut at the limit.
    let r = client
        .get(format!("{}/v2/lab.example/app/manifests/endless", srv.url))
        .send()
        .await
        .expect("answered, not timed out");
    assert!(!r.status().is_success(), "{}", r.status());
    srv.stop().await;
}

/// Item 8, the smaller ones on a hostile disk served read-only: a blob whose file does not hash
/// to its name is never sent (before: served whole), a name that is no repository name is not
/// listed in the catalog (before: `../../…` was), and an index.json past the bound is refused
/// and named, not loaded (before: 60 MiB cost ~330 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_disk_served_read_only_sends_no_wrong_bytes_and_lists_no_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("usb");
    let srv = TestServer::start_on(&dir, false).await;
    let m = push_image(&srv.url, "app", "1", 41).await;
    srv.stop().await;
    let layer: ferry::digest::Digest = refs_of(&m)[1].parse().unwrap();
    let path = dir.join("blobs/sha256").join(layer.hex());
    let mut b = std::fs::read(&path).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0xff;
    std::fs::write(&path, &b).unwrap();
    let idx_path = dir.join("index.json");
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    let mut evil = idx["manifests"][0].clone();
    evil["annotations"] = serde_json::json!({
        "io.ferry.repository": "../../etc",
        "org.opencontainers.image.ref.name": "../../etc:passwd",
    });
    idx["manifests"].as_array_mut().unwrap().push(evil);
    std::fs::write(&idx_path, serde_json::to_vec(&idx).unwrap()).unwrap();

    let srv = TestServer::start_on(&dir, true).await;
    let r = http()
        .get(format!("{}/v2/app/blobs/{layer}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = r.text().await.unwrap();
    assert!(body.contains("other content"), "{body}");
    let r = http()
        .get(format!("{}/v2/_catalog", srv.url))
        .send()
        .await
        .unwrap();
    let cat: serde_json::Value = r.json().await.unwrap();
    assert_eq!(cat["repositories"], serde_json::json!(["app"]), "{cat}");
    srv.stop().await;

    // An index.json past the bound: refused, named, never parsed.
    let big = tmp.path().join("big");
    std::fs::create_dir_all(big.join("blobs/sha256")).unwrap();
    std::fs::write(big.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let pad = "a".repeat((ferry::layout::MAX_INDEX_BYTES + 1) as usize);
    std::fs::write(
        big.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[],"pad":"{pad}"}}"#),
    )
    .unwrap();
    let store = Store::open(&big, true).unwrap();
    let err = store.index().await.unwrap_err().to_string();
    assert!(
        err.contains("index.json") && err.contains("more than"),
        "{err}"
    );
}

/// Item 9: the record is not held in memory; a flush merges what changed into the store's
/// file, entry by entry. Counts add up across flushes, a miss answered later leaves the list,
/// and the bound keeps the entries used most recently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_lives_in_the_store_and_flushes_merge_into_it() {
    use ferry::record::{Recorder, MAX_ENTRIES};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = Store::open(&dir, false).unwrap();
    let d = sha256(b"m");
    // A long history already on disk: MAX_ENTRIES entries, the oldest first.
    let old: Vec<serde_json::Value> = (0..MAX_ENTRIES)
        .map(|i| {
            serde_json::json!({"repository": "hist", "reference": format!("t{i}"),
                "digest": d.to_string(), "first": 1000 + i, "last": 1000 + i, "count": 1,
                "clients": []})
        })
        .collect();
    std::fs::write(
        dir.join(".ferry/used.json"),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    let (store, lists) = tokio::task::spawn_blocking(move || {
        let r = Recorder::default();
        r.load_sync(&store);
        r.used(None, "app", "1", &d, Some("10.0.0.1".into()));
        r.used(None, "app", "1", &d, Some("10.0.0.2".into()));
        r.missed("app", "2");
        r.missed("app", "3");
        r.flush_sync(&store);
        // A second round: counts add to what the file holds; a miss answered leaves the list.
        let r = Recorder::default();
        r.used(None, "app", "1", &d, Some("10.0.0.1".into()));
        r.used(None, "app", "2", &d, None);
        r.missed("app", "3");
        r.flush_sync(&store);
        let lists = (r.used_list(&store), r.miss_list(&store));
        (store, lists)
    })
    .await
    .unwrap();
    let (used, misses) = lists;
    assert_eq!(used.len(), MAX_ENTRIES, "bounded");
    let app1 = used
        .iter()
        .find(|u| u.repository == "app" && u.reference == "1")
        .unwrap();
    assert_eq!(app1.count, 3);
    assert_eq!(app1.clients, vec!["10.0.0.1", "10.0.0.2"]);
    assert!(used
        .iter()
        .any(|u| u.reference == "2" && u.repository == "app"));
    // The two entries used longest ago made room for the two new ones.
    for gone in ["t0", "t1"] {
        assert!(!used.iter().any(|u| u.reference == gone), "{gone} kept");
    }
    assert!(used.iter().any(|u| u.reference == "t2"));
    let misses: Vec<(&str, u64)> = misses
        .iter()
        .map(|m| (m.reference.as_str(), m.count))
        .collect();
    assert_eq!(
        misses,
        vec![("3", 2)],
        "app:2 was answered; app:3 missed twice"
    );
    // `ferry used` reads the same file.
    let file = ferry::record::read_used(&store).unwrap();
    assert_eq!(file.len(), MAX_ENTRIES);
}

/// A manifest's read marker goes with it: GC removes the markers of what it sweeps, and the
/// markers of manifests no longer stored (as an older ferry left them), so `.ferry/reads` stays
/// the size of the store. (The 60-minute soak grew it to 71,000 markers for 700 tags, and the
/// page lists them all at every start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_the_read_markers_of_what_it_sweeps() {
    let srv = TestServer::start().await;
    let u = srv.url.clone();
    let gone = push_image(&u, "app", "1", 901).await;
    let kept = push_image(&u, "app", "2", 902).await;
    for tag in ["1", "2"] {
        // The marker is written before the manifest is answered.
        assert_eq!(
            status(format!("{u}/v2/app/manifests/{tag}")).await,
            StatusCode::OK
        );
    }
    let reads = srv.dir.join(".ferry/reads");
    let marker = |m: &[u8]| reads.join(format!("sha256-{}", sha256(m).hex()));
    assert!(marker(&gone).exists() && marker(&kept).exists());
    let stray = reads.join(format!("sha256-{}", "0".repeat(64)));
    std::fs::write(&stray, b"").unwrap();
    let r = http()
        .delete(format!("{u}/v2/app/manifests/{}", sha256(&gone)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let store = srv.other_store().await;
    let report =
        tokio::task::spawn_blocking(move || ferry::gc::gc(&store, Duration::ZERO, false).unwrap())
            .await
            .unwrap();
    assert!(report.swept >= 3, "{report}");
    assert!(
        !marker(&gone).exists(),
        "the swept manifest's marker stayed"
    );
    assert!(
        !stray.exists(),
        "a marker of a manifest never stored stayed"
    );
    assert!(marker(&kept).exists(), "a stored manifest's marker went");
    srv.stop().await;
}
