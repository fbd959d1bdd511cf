//! Pull-through (`serve --upstream`): one upstream fetch per blob however many clients ask,
//! streamed to them as it arrives; wrong or short upstream bodies stored never; names as
//! mirrors send them; what was used and what was missed, recorded.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use ferry::digest::Digest;

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    /// Same length, one byte changed.
    WrongBytes,
    /// The announced length, then the connection dropped half-way.
    Truncated,
    /// Every request answered 503 (down for maintenance, or a proxy with no way through).
    Down,
}

/// A registry that serves one image (`library/big:1`): its layer in two halves, the second
/// only once the test opens the gate. Counts every request per path.
struct Upstream {
    addr: std::net::SocketAddr,
    gets: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    gate: Arc<tokio::sync::Semaphore>,
    fault: Arc<Mutex<Fault>>,
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(layer_len: usize) -> Upstream {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer = bytes(layer_len, 77);
        let manifest = image_manifest(&config, &[&layer]);
        let gets: Arc<Mutex<std::collections::HashMap<String, usize>>> = Default::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fault = Arc::new(Mutex::new(Fault::None));
        let (g2, gate2, f2) = (gets.clone(), gate.clone(), fault.clone());
        let (c2, l2, m2) = (
            Bytes::from(config.clone()),
            Bytes::from(layer.clone()),
            Bytes::from(manifest.clone()),
        );
        let (cd, ld, md) = (sha256(&c2), sha256(&l2), sha256(&m2));
        let app = axum::Router::new().fallback(move |req: Request| {
            let (gets, gate, fault) = (g2.clone(), gate2.clone(), f2.clone());
            let (c, l, m) = (c2.clone(), l2.clone(), m2.clone());
            let (cd, ld, md) = (cd.clone(), ld.clone(), md.clone());
            async move {
                let path = req.uri().path().to_owned();
                *gets
                    .lock()
                    .unwrap()
                    .entry(format!("{} {path}", req.method()))
                    .or_default() += 1;
                let head = req.method() == axum::http::Method::HEAD;
                let ok = |ct: &str, body: Bytes, d: &Digest| {
                    Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, ct)
                        .header(header::CONTENT_LENGTH, body.len())
                        .header("Docker-Content-Digest", d.to_string())
                        .body(if head {
                            Body::empty()
                        } else {
                            Body::from(body)
                        })
                        .unwrap()
                };
                if *fault.lock().unwrap() == Fault::Down {
                    return Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Body::empty())
                        .unwrap();
                }
                if path == "/v2/" {
                    return ok("application/json", Bytes::from_static(b"{}"), &md);
                }
                if path == "/v2/library/big/manifests/1"
                    || path == format!("/v2/library/big/manifests/{md}")
                {
                    return ok(OCI_MANIFEST, m, &md);
                }
                if path == format!("/v2/library/big/blobs/{cd}") {
                    return ok("application/octet-stream", c, &cd);
                }
                if path == format!("/v2/library/big/blobs/{ld}") {
                    let f = *fault.lock().unwrap();
                    let half = l.len() / 2;
                    let first = l.slice(..half);
                    let mut second = l.slice(half..).to_vec();
                    if f == Fault::WrongBytes {
                        second[10] ^= 0xff;
                    }
                    let len = l.len();
                    let body = futures_util::stream::unfold(0u8, move |step| {
                        let (gate, first, second) = (gate.clone(), first.clone(), second.clone());
                        async move {
                            match step {
                                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                                1 => {
                                    // Hold the rest until the test says so.
                                    gate.acquire().await.unwrap().forget();
                                    if f == Fault::Truncated {
                                        Some((Err(std::io::Error::other("upstream dropped")), 2))
                                    } else {
                                        Some((Ok(Bytes::from(second)), 2))
                                    }
                                }
                                _ => None,
                            }
                        }
                    });
                    return Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(header::CONTENT_LENGTH, len)
                        .body(Body::from_stream(body))
                        .unwrap();
                }
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
                    ))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream {
            addr,
            gets,
            gate,
            fault,
            config,
            layer,
            manifest,
            _task: task,
        }
    }

    fn count(&self, method_path: &str) -> usize {
        self.gets
            .lock()
            .unwrap()
            .get(method_path)
            .copied()
            .unwrap_or(0)
    }

    fn layer_digest(&self) -> Digest {
        sha256(&self.layer)
    }
}

async fn mirror(up: &Upstream, ttl: std::time::Duration) -> TestServer {
    mirror_opts(up, ttl, false).await
}

async fn mirror_opts(up: &Upstream, ttl: std::time::Duration, refuse_writes: bool) -> TestServer {
    let tmp = tempfile::tempdir().unwrap().keep();
    let pull = ferry::proxy::PullThrough::new(
        vec![
            ferry::proxy::Upstream::parse(&format!("docker.io=http://{}", up.addr), None, None)
                .unwrap(),
        ],
        ttl,
    )
    .unwrap();
    TestServer::start_opts(
        &tmp.join("data"),
        ServerOpts {
            pull: Some(pull),
            refuse_writes,
            ..Default::default()
        },
    )
    .await
}

/// Fail rather than hang when something never arrives.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after 60 s"))
}

/// A verified blob reaches its clients before it is stored (fsync, rename): wait for that.
async fn stored_soon(path: &std::path::Path) {
    within("the blob to be stored", async {
        while !path.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_one_upstream_fetch_first_bytes_before_the_blob_is_complete() {
    let up = Upstream::start(8 << 20).await;
    // `serve --read-only --upstream …`: pushes refused, pull-through still stores.
    let srv = mirror_opts(&up, std::time::Duration::from_secs(600), true).await;
    let c = http();
    // As dockerd's registry-mirrors asks: no registry in the name.
    let m = c
        .get(format!("{}/v2/library/big/manifests/1", srv.url))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    assert_eq!(
        m.bytes().await.unwrap(),
        up.manifest,
        "manifest bytes as the upstream sent them"
    );
    let ld = up.layer_digest();
    let url = format!("{}/v2/library/big/blobs/{ld}", srv.url);
    let (a, b) = tokio::join!(c.get(&url).send(), c.get(&url).send());
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    assert_eq!(a.content_length(), Some(up.layer.len() as u64));
    // Both get bytes while the upstream still holds back the second half.
    let fa = within("client a's first bytes", a.chunk())
        .await
        .unwrap()
        .unwrap();
    let fb = within("client b's first bytes", b.chunk())
        .await
        .unwrap()
        .unwrap();
    assert!(!fa.is_empty() && !fb.is_empty());
    let stored = srv.dir.join("blobs/sha256").join(ld.hex());
    assert!(!stored.exists(), "stored before it was complete");
    // Client a reads the whole first half but its last byte (the newest byte is held back
    // until the blob is verified); the fetch keeps only the newest 2 MiB of what is on disk in
    // memory, so client c, joining late, starts from the spool file.
    let half = up.layer.len() / 2;
    let mut a_got = fa.to_vec();
    within("client a's first half", async {
        while a_got.len() < half - 1 {
            a_got.extend_from_slice(&a.chunk().await.unwrap().unwrap());
        }
    })
    .await;
    assert_eq!(&a_got[..], &up.layer[..a_got.len()]);
    let late = c.get(&url).send().await.unwrap();
    assert_eq!(late.status(), 200);
    up.gate.add_permits(1);
    let rest = |mut r: reqwest::Response, first: Vec<u8>| async move {
        let mut all = first;
        while let Some(ch) = r.chunk().await.unwrap() {
            all.extend_from_slice(&ch);
        }
        all
    };
    let (ba, bb, bc) = within("all three bodies", async {
        tokio::join!(rest(a, a_got), rest(b, fb.to_vec()), rest(late, Vec::new()))
    })
    .await;
    assert_eq!(sha256(&ba), ld);
    assert_eq!(sha256(&bb), ld);
    assert_eq!(sha256(&bc), ld, "the late client");
    assert_eq!(
        up.count(&format!("GET /v2/library/big/blobs/{ld}")),
        1,
        "one upstream fetch"
    );
    stored_soon(&stored).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o644,
        "readable like every other blob"
    );
    // A third client is served from the store: still one upstream fetch.
    let third = c.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&third), ld);
    assert_eq!(up.count(&format!("GET /v2/library/big/blobs/{ld}")), 1);
    // The config too, by the upstream's name for it.
    let cd = sha256(&up.config);
    let cfg = c
        .get(format!("{}/v2/docker.io/library/big/blobs/{cd}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(cfg.bytes().await.unwrap(), up.config);
    // Its spool file is renamed into place after its client has the bytes: wait for that
    // before looking for leftovers.
    stored_soon(&srv.dir.join("blobs/sha256").join(cd.hex())).await;
    // What was used is recorded under the pull-through name.
    let used = srv.app.record.used_list(&srv.app.store);
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0].repository, "docker.io/library/big");
    assert_eq!(used[0].reference, "1");
    assert_eq!(used[0].upstream.as_deref(), Some("docker.io"));
    assert_eq!(used[0].digest, sha256(&up.manifest));
    assert_eq!(used[0].clients, ["127.0.0.1"]);
    let r = c
        .post(format!("{}/v2/local/app/blobs/uploads/", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        405,
        "a push to a --read-only pull-through mirror"
    );
    assert!(
        srv.leftovers().await.is_empty(),
        "{:?}",
        srv.leftovers().await
    );
    // What an operator sees: two blobs (layer, config) and one manifest fetched, no failure.
    for (name, n) in [
        ("ferry_pull_through_blob_fetches_total", 2),
        ("ferry_pull_through_manifest_fetches_total", 1),
        ("ferry_pull_through_blob_fetch_failures_total", 0),
        ("ferry_pull_through_served_stale_total", 0),
    ] {
        assert_eq!(metric(&srv.url, name).await, n, "{name}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_blob_is_pulled_through_and_stored() {
    // The spool writer starts after the first chunk; an empty body has none.
    let up = Upstream::start(0).await;
    up.gate.add_permits(1);
    let srv = mirror(&up, std::time::Duration::from_secs(600)).await;
    let ld = up.layer_digest();
    let url = format!("{}/v2/docker.io/library/big/blobs/{ld}", srv.url);
    let r = within("the empty blob", http().get(&url).send())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(0));
    assert!(r.bytes().await.unwrap().is_empty());
    let stored = srv.dir.join("blobs/sha256").join(ld.hex());
    stored_soon(&stored).await;
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), 0);
    assert!(
        srv.leftovers().await.is_empty(),
        "{:?}",
        srv.leftovers().await
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_looked_before_a_fetch_ended_is_served_from_the_store() {
    // A request looks in the store, then asks the pull-through. When a fetch ended in between,
    // the store is looked at again instead of fetching a second time; when none did, it is not.
    let up = Upstream::start(1024).await;
    let srv = mirror(&up, std::time::Duration::from_secs(600)).await;
    let pull = srv.app.pull.clone().unwrap();
    let cd = sha256(&up.config);
    let before = pull.ended();
    let url = format!("{}/v2/docker.io/library/big/blobs/{cd}", srv.url);
    let got = http()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got, up.config);
    stored_soon(&srv.dir.join("blobs/sha256").join(cd.hex())).await;
    within("the fetch to end", async {
        while pull.ended() == before {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let answer = pull
        .blob(&srv.app, "docker.io/library/big", &cd, before, 0, None)
        .await
        .unwrap();
    assert!(
        matches!(answer, ferry::proxy::BlobAnswer::Stored),
        "a fetch ended since the look: the store has it"
    );
    let path = format!("GET /v2/library/big/blobs/{cd}");
    assert_eq!(up.count(&path), 1, "no second fetch");
    // With no fetch ended since the look, the caller's "not stored" is taken as it is.
    let answer = pull
        .blob(
            &srv.app,
            "docker.io/library/big",
            &cd,
            pull.ended(),
            0,
            None,
        )
        .await
        .unwrap();
    assert!(matches!(answer, ferry::proxy::BlobAnswer::Streaming(_)));
    assert_eq!(up.count(&path), 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_or_short_upstream_bodies_reach_no_client_whole_and_are_never_stored() {
    for fault in [Fault::WrongBytes, Fault::Truncated] {
        let up = Upstream::start(1 << 20).await;
        *up.fault.lock().unwrap() = fault;
        let srv = mirror(&up, std::time::Duration::from_secs(600)).await;
        let ld = up.layer_digest();
        let url = format!("{}/v2/docker.io/library/big/blobs/{ld}", srv.url);
        let r = http().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        up.gate.add_permits(1);
        let got = within("the body", r.bytes()).await;
        match got {
            Err(_) => {}
            Ok(b) => panic!(
                "{fault:?}: the client got a clean body of {} bytes",
                b.len()
            ),
        }
        let stored = srv.dir.join("blobs/sha256").join(ld.hex());
        assert!(!stored.exists(), "{fault:?}: stored");
        // Counted before the client hears of it.
        assert_eq!(
            metric(&srv.url, "ferry_pull_through_blob_fetch_failures_total").await,
            1,
            "{fault:?}"
        );
        // Nothing half-done is left, and the next request tries the upstream again.
        within("the fetch to end", async {
            while !srv.leftovers().await.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        *up.fault.lock().unwrap() = Fault::None;
        let r = http().get(&url).send().await.unwrap();
        up.gate.add_permits(1);
        let b = within("the retry", r.bytes()).await.unwrap();
        assert_eq!(sha256(&b), ld, "{fault:?}: retry");
        assert_eq!(up.count(&format!("GET /v2/library/big/blobs/{ld}")), 2);
        stored_soon(&stored).await;
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_rechecked_after_the_ttl_and_served_when_the_upstream_is_gone() {
    let up = Upstream::start(1000).await;
    let srv = mirror(&up, std::time::Duration::ZERO).await;
    let c = http();
    let get = || async {
        c.get(format!("{}/v2/docker.io/library/big/manifests/1", srv.url))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(get().await.bytes().await.unwrap(), up.manifest);
    assert_eq!(up.count("GET /v2/library/big/manifests/1"), 1);
    // TTL 0: the next request re-checks with a HEAD (same digest: no new GET).
    assert_eq!(get().await.status(), 200);
    assert_eq!(up.count("HEAD /v2/library/big/manifests/1"), 1);
    assert_eq!(up.count("GET /v2/library/big/manifests/1"), 1);
    // The upstream goes away: the stored manifest is still served.
    *up.fault.lock().unwrap() = Fault::Down;
    let r = get().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), up.manifest);
    assert_eq!(
        up.count("HEAD /v2/library/big/manifests/1"),
        2,
        "the re-check was tried"
    );
    assert_eq!(
        metric(&srv.url, "ferry_pull_through_served_stale_total").await,
        1
    );
    assert_eq!(
        metric(&srv.url, "ferry_pull_through_tag_checks_total").await,
        2
    );
    // A client pushing its own repository asks "do you have it?" with HEADs: they never reach
    // the upstream, and the push works beside pull-through.
    *up.fault.lock().unwrap() = Fault::None;
    let before = up.gets.lock().unwrap().values().sum::<usize>();
    let missing = sha256(b"not here");
    let r = c
        .head(format!("{}/v2/local/app/blobs/{missing}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .head(format!("{}/v2/local/app/manifests/cache", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    push_image(&srv.url, "local/app", "1", 9).await;
    assert_eq!(
        up.gets.lock().unwrap().values().sum::<usize>(),
        before,
        "the upstream was asked"
    );
    // A blob the upstream does not have either: 404 BLOB_UNKNOWN, not a gateway error.
    let r = c
        .get(format!("{}/v2/library/big/blobs/{missing}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    *up.fault.lock().unwrap() = Fault::Down;
    // Something it never had: 404, recorded as a miss under the name asked.
    let r = c
        .get(format!("{}/v2/library/other/manifests/2", srv.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error() || r.status().is_server_error());
    let misses: Vec<(String, String)> = srv
        .app
        .record
        .miss_list(&srv.app.store)
        .into_iter()
        .map(|m| (m.repository, m.reference))
        .collect();
    assert_eq!(
        misses,
        [
            ("docker.io/library/other".to_owned(), "2".to_owned()),
            ("local/app".to_owned(), "cache".to_owned()),
        ],
    );
    srv.stop().await;
}

/// The offline side: no upstream, the mirror serves `docker.io/…` names to requests as dockerd
/// and containerd send them, and records what it lacks; the records outlive a restart and
/// `ferry misses` / `ferry used` print them as refs files `ferry sync` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_names_misses_and_used_survive_a_restart_as_refs_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = TestServer::start_on(&dir, false).await;
    let manifest = push_image(&srv.url, "docker.io/library/alpine", "3.19", 5).await;
    let c = http();
    for (path, ok) in [
        ("/v2/library/alpine/manifests/3.19", true),
        ("/v2/alpine/manifests/3.19?ns=docker.io", true),
        ("/v2/docker.io/library/alpine/manifests/3.19", true),
        ("/v2/library/alpine/manifests/3.20", false),
        ("/v2/org/app/manifests/1?ns=ghcr.io", false),
        ("/v2/org/app/manifests/1?ns=ghcr.io", false),
    ] {
        let r = c.get(format!("{}{path}", srv.url)).send().await.unwrap();
        assert_eq!(r.status().is_success(), ok, "{path}");
        if ok {
            assert_eq!(r.bytes().await.unwrap(), manifest, "{path}");
        }
    }
    srv.stop().await;
    // After a restart, one more miss of the same ref is counted with the old ones.
    let srv = TestServer::start_on(&dir, false).await;
    let _ = c
        .get(format!("{}/v2/org/app/manifests/1?ns=ghcr.io", srv.url))
        .send()
        .await
        .unwrap();
    srv.stop().await;
    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let misses = ferry(&["misses", "--data", &dir.display().to_string()]);
    let refs = ferry::sync::parse_refs_file(&misses);
    assert_eq!(
        refs,
        ["docker.io/library/alpine:3.20", "ghcr.io/org/app:1"],
        "{misses}"
    );
    assert!(misses.contains("asked 3x"), "{misses}");
    let used = ferry(&["used", &dir.display().to_string(), "--since", "1d"]);
    assert_eq!(
        ferry::sync::parse_refs_file(&used),
        ["docker.io/library/alpine:3.19"],
        "{used}"
    );
    assert!(used.contains("used 3x"), "{used}");
}

/// `ferry check --dockerfile` against a directory and a registry: exit 0 when everything the
/// build needs is there and intact, 1 naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_dockerfile_reports_what_a_build_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = TestServer::start_on(&dir, false).await;
    push_image(&srv.url, "docker.io/library/alpine", "3.19", 5).await;
    // Synced without the registry's name, as `ferry sync docker://docker.io/library/golang:1.22`
    // would write it.
    push_image(&srv.url, "library/golang", "1.22", 6).await;
    push_image(&srv.url, "app", "cache", 7).await;
    let df = tmp.path().join("Dockerfile");
    let run = |text: &str, extra: &[&str], loc: &str| {
        std::fs::write(&df, text).unwrap();
        let mut args = vec!["check", "--dockerfile", df.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(loc);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let d = dir.display().to_string();
    let reg = format!("docker://{}", srv.host());
    let good = "ARG V=3.18\nFROM golang:1.22 AS build\nFROM alpine:${V}\nCOPY --from=build /x /x\n";
    for loc in [&d, &reg] {
        let (code, out) = run(good, &["--build-arg", "V=3.19"], loc);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("2 of 2 image(s)"), "{out}");
        let cache = format!("{}/app:cache", srv.host());
        let (code, out) = run(good, &["--build-arg", "V=3.19", "--cache-ref", &cache], loc);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("3 of 3 image(s)"), "{out}");
        // Without the build arg the default 3.18 is needed, and missing.
        let (code, out) = run(good, &[], loc);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("MISSING docker.io/library/alpine:3.18  (FROM (stage 1))"),
            "{out}"
        );
    }
    // A blob gone from the directory: named, exit 1.
    let m: serde_json::Value = serde_json::from_slice(
        &http()
            .get(format!("{}/v2/library/golang/manifests/1.22", srv.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    srv.stop().await;
    std::fs::remove_file(dir.join("blobs/sha256").join(&layer[7..])).unwrap();
    let (code, out) = run(good, &["--build-arg", "V=3.19"], &d);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("MISSING {layer}")), "{out}");
}

fn mirror_with(
    upstream: &str,
    creds: Option<&str>,
    ttl: std::time::Duration,
) -> ferry::proxy::PullThrough {
    ferry::proxy::PullThrough::new(
        vec![ferry::proxy::Upstream::parse(
            &format!("docker.io={upstream}"),
            creds.map(str::to_owned),
            None,
        )
        .unwrap()],
        ttl,
    )
    .unwrap()
}

async fn dockerd(extra: Vec<String>) -> Option<std::sync::Arc<crate::interop_docker::Dockerd>> {
    tokio::task::spawn_blocking(move || crate::interop_docker::Dockerd::start(&extra))
        .await
        .unwrap()
        .map(std::sync::Arc::new)
}

/// Run docker on a blocking thread.
async fn docker(
    d: &std::sync::Arc<crate::interop_docker::Dockerd>,
    cwd: Option<std::path::PathBuf>,
    args: &[&str],
) -> (bool, String) {
    let d = d.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.docker_in(cwd.as_deref(), &a);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

/// Put `busybox:TAG` (busybox-static) into the upstream as `library/busybox:TAG`, as Docker
/// Hub holds it; returns the manifest digest the push reported.
async fn seed_upstream(
    dist: &Distribution,
    login: Option<(&str, &str)>,
    tag: &str,
) -> Option<String> {
    let a = dockerd(vec!["--insecure-registry".into(), dist.host.clone()]).await?;
    let t = tag.to_owned();
    let a2 = a.clone();
    tokio::task::spawn_blocking(move || {
        crate::interop_docker::import_busybox(&a2, &format!("busybox:{t}"))
    })
    .await
    .unwrap();
    if let Some((u, p)) = login {
        let (ok, out) = docker(&a, None, &["login", &dist.host, "-u", u, "-p", p]).await;
        assert!(ok, "{out}");
    }
    let up = format!("{}/library/busybox:{tag}", dist.host);
    let (ok, out) = docker(&a, None, &["tag", &format!("busybox:{tag}"), &up]).await;
    assert!(ok, "{out}");
    let (ok, out) = docker(&a, None, &["push", &up]).await;
    assert!(ok, "{out}");
    let digest = out
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("push names the digest")
        .to_owned();
    Some(digest)
}

/// The issue's first test: a dockerd whose registry-mirrors is ferry pulls an image only the
/// upstream (Distribution with htpasswd) has; it arrives byte-identical, the record names it;
/// with the upstream gone a second dockerd still pulls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_ferry_and_again_with_the_upstream_gone() {
    let Some(dist) = Distribution::start_htpasswd("up", "secret") else {
        assert!(!require_interop(), "docker-registry is required");
        return;
    };
    let Some(pushed) = seed_upstream(&dist, Some(("up", "secret")), "pt").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // TTL 0: every use re-checks the tag, so the second pull meets the upstream gone.
    let srv = TestServer::start_opts(
        &tmp.path().join("data"),
        ServerOpts {
            pull: Some(mirror_with(
                &dist.url,
                Some("up:secret"),
                std::time::Duration::ZERO,
            )),
            ..Default::default()
        },
    )
    .await;
    let mirror = vec!["--registry-mirror".to_owned(), srv.url.clone()];
    let b = dockerd(mirror.clone()).await.expect("dockerd");
    let (ok, out) = docker(&b, None, &["pull", "busybox:pt"]).await;
    assert!(ok, "{out}");
    let (ok, digests) = docker(
        &b,
        None,
        &[
            "image",
            "inspect",
            "-f",
            "{{json .RepoDigests}}",
            "busybox:pt",
        ],
    )
    .await;
    assert!(
        ok && digests.contains(&pushed),
        "pushed {pushed}, pulled {digests}"
    );
    let (ok, out) = docker(
        &b,
        None,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox:pt",
            "busybox",
            "echo",
            "through ferry",
        ],
    )
    .await;
    assert!(ok && out.contains("through ferry"), "{out}");
    let used = srv.app.record.used_list(&srv.app.store);
    let rec = used
        .iter()
        .find(|u| u.repository == "docker.io/library/busybox" && u.reference == "pt")
        .unwrap_or_else(|| panic!("{used:?}"));
    assert_eq!(rec.digest.to_string(), pushed);
    assert_eq!(rec.upstream.as_deref(), Some("docker.io"));
    drop(b);
    drop(dist);
    let c = dockerd(mirror).await.expect("dockerd");
    let (ok, out) = docker(&c, None, &["pull", "busybox:pt"]).await;
    assert!(ok, "with the upstream gone: {out}");
    let (_, digests) = docker(
        &c,
        None,
        &[
            "image",
            "inspect",
            "-f",
            "{{json .RepoDigests}}",
            "busybox:pt",
        ],
    )
    .await;
    assert!(digests.contains(&pushed), "{digests}");
    srv.stop().await;
}

/// The loop: an offline build fails on a missing base image → `ferry misses` lists it → the
/// connected side syncs the list (through its pull-through) → after the trip the same build
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_misses_loop_an_offline_build_fails_the_next_trip_fixes_it() {
    let Some(dist) = Distribution::start() else {
        assert!(!require_interop(), "docker-registry is required");
        return;
    };
    let Some(_) = seed_upstream(&dist, None, "loop").await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let offline_dir = tmp.path().join("offline");
    let offline = TestServer::start_on(&offline_dir, false).await;
    let d = dockerd(vec!["--registry-mirror".to_owned(), offline.url.clone()])
        .await
        .expect("dockerd");
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:loop\nRUN busybox echo built > /built\n",
    )
    .unwrap();
    let build = |d: std::sync::Arc<crate::interop_docker::Dockerd>, ctx: std::path::PathBuf| async move {
        docker(
            &d,
            Some(ctx),
            &[
                "build",
                "--network",
                "none",
                "--progress=plain",
                "-t",
                "app:1",
                ".",
            ],
        )
        .await
    };
    let (ok, out) = build(d.clone(), ctx.clone()).await;
    assert!(!ok, "the build cannot succeed offline yet:\n{out}");
    assert!(
        out.contains("busybox:loop"),
        "it fails on the base image:\n{out}"
    );
    // The mirror keeps serving (no restart on a port someone else could take meanwhile): its
    // record is written out as its periodic flush would, and the trip lands in its directory
    // beside it, as a second writer may.
    {
        let a = offline.app.clone();
        tokio::task::spawn_blocking(move || a.record.flush_sync(&a.store))
            .await
            .unwrap();
    }
    let ferry = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ferry {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .await
        .unwrap()
    };
    let misses = tmp.path().join("misses.txt");
    ferry(vec![
        "misses".into(),
        "--data".into(),
        offline_dir.display().to_string(),
        "-o".into(),
        misses.display().to_string(),
    ])
    .await;
    let text = std::fs::read_to_string(&misses).unwrap();
    assert!(
        ferry::sync::parse_refs_file(&text).contains(&"docker.io/library/busybox:loop".to_owned()),
        "{text}"
    );
    // The connected side: a pull-through mirror of the upstream; the trip takes the list.
    let connected = TestServer::start_opts(
        &tmp.path().join("connected"),
        ServerOpts {
            pull: Some(mirror_with(
                &dist.url,
                None,
                std::time::Duration::from_secs(600),
            )),
            ..Default::default()
        },
    )
    .await;
    let trip = tmp.path().join("usb");
    ferry(vec![
        "sync".into(),
        "--refs-file".into(),
        misses.display().to_string(),
        format!("docker://{}", connected.host()),
        trip.display().to_string(),
    ])
    .await;
    connected.stop().await;
    ferry(vec![
        "sync".into(),
        trip.display().to_string(),
        offline_dir.display().to_string(),
    ])
    .await;
    let (ok, out) = build(d.clone(), ctx.clone()).await;
    assert!(ok, "after the trip the build succeeds:\n{out}");
    offline.stop().await;
    // What the build used is now recorded, not missed.
    let misses_after = ferry(vec![
        "misses".into(),
        "--data".into(),
        offline_dir.display().to_string(),
    ])
    .await;
    assert!(!misses_after.contains("busybox:loop"), "{misses_after}");
}
