//! Storage that lives for years: GC (mark through the graph, grace period, racing pushes),
//! verify (corrupt, missing, broken tags, repair), upload expiry.

use std::time::{Duration, SystemTime};

use ferry::layout::Store;
use reqwest::StatusCode;

use crate::common::*;
use crate::fixtures::{replay_push, RECORDED};

fn age(path: &std::path::Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

fn age_all_blobs(dir: &std::path::Path, by: Duration) {
    for e in std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        age(&e.path(), by);
    }
}

#[tokio::test]
async fn gc_keeps_everything_reachable_including_caches_and_sweeps_the_rest() {
    let s = TestServer::start().await;
    for name in RECORDED {
        replay_push(&s.url, name).await;
    }
    let before = std::fs::read_dir(s.dir.join("blobs/sha256"))
        .unwrap()
        .count();
    // An orphan (pushed, never referenced) and a manifest whose tag moved away.
    let orphan = push_blob(&s.url, "junk", &bytes(5000, 100)).await;
    let m1 = push_image(&s.url, "moved", "t", 101).await;
    let m2 = push_image(&s.url, "moved", "t", 102).await;
    let r = http()
        .delete(format!("{}/v2/moved/manifests/{}", s.url, sha256(&m1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    age_all_blobs(&s.dir, Duration::from_secs(7200));

    let store = Store::open(&s.dir, false).unwrap();
    let dry = ferry::gc::gc(&store, Duration::from_secs(3600), true).unwrap();
    assert!(dry.swept >= 3, "{dry}"); // orphan + m1's config and layer
    assert!(
        s.dir.join("blobs/sha256").join(orphan.hex()).exists(),
        "dry run removed something"
    );

    let r = ferry::gc::gc(&store, Duration::from_secs(3600), false).unwrap();
    assert_eq!(r.swept, dry.swept);
    assert!(!s.dir.join("blobs/sha256").join(orphan.hex()).exists());
    // Every fixture (three cache shapes, image, multi-arch index) is still complete.
    for name in RECORDED {
        let recs = crate::fixtures::parse_headers_pub(
            &fixtures()
                .join("layouts")
                .join(format!("{name}.headers.txt")),
        );
        crate::fixtures::verify_pull(&s.url, name, &recs).await;
    }
    let r = http()
        .get(format!("{}/v2/moved/manifests/t", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m2[..]);
    let v = ferry::verify::verify(&store, 2, false).unwrap();
    assert!(v.ok(), "{v}");
    assert!(before > 0);
    s.stop().await;
}

#[tokio::test]
async fn a_blob_promised_by_head_or_mount_survives_gc_for_the_grace_period() {
    let s = TestServer::start().await;
    let layer = bytes(4000, 110);
    let d = push_blob(&s.url, "race", &layer).await;
    let d2 = push_blob(&s.url, "race", &bytes(4000, 111)).await;
    age_all_blobs(&s.dir, Duration::from_secs(7200));
    // A client asks whether the blobs exist (docker does before every layer push) ...
    let r = http()
        .head(format!("{}/v2/race/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http()
        .post(format!(
            "{}/v2/other/blobs/uploads/?mount={d2}&from=race",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // ... GC runs in between ...
    let store = Store::open(&s.dir, false).unwrap();
    let r = ferry::gc::gc(&store, Duration::from_secs(3600), false).unwrap();
    assert_eq!(r.kept_young, 2, "{r}");
    // ... and the manifest that references them is still accepted.
    let config = b"{}".to_vec();
    push_blob(&s.url, "race", &config).await;
    let m = image_manifest(&config, &[&layer, &bytes(4000, 111)]);
    let r = put_manifest(
        &s.url,
        "race",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.stop().await;
}

#[tokio::test]
async fn verify_names_corrupt_and_missing_blobs_and_the_tags_they_break_and_repairs() {
    let s = TestServer::start().await;
    replay_push(&s.url, "cache-legacy-oci").await;
    let m = push_image(&s.url, "img", "1", 120).await;
    let store = Store::open(&s.dir, false).unwrap();
    assert!(ferry::verify::verify(&store, 2, false).unwrap().ok());

    let flipped = "6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc";
    let p = s.dir.join("blobs/sha256").join(flipped);
    let good = std::fs::read(&p).unwrap();
    let mut b = good.clone();
    b[0] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    std::fs::remove_file(
        s.dir
            .join("blobs/sha256")
            .join(layer.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();

    let r = ferry::verify::verify(&store, 2, false).unwrap();
    assert!(!r.ok());
    assert_eq!(r.corrupt, vec![format!("sha256:{flipped}")]);
    assert_eq!(r.missing, vec![layer.clone()]);
    assert_eq!(
        r.broken.get("cache/legacy-oci:cache"),
        Some(&vec![format!("sha256:{flipped}")])
    );
    assert_eq!(r.broken.get("img:1"), Some(&vec![layer.clone()]));

    // The command line: exit 1; --repair quarantines the corrupt blob, a push restores it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", "--data", &s.dir.display().to_string(), "--repair"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("quarantined sha256:{flipped}")),
        "{text}"
    );
    assert!(s
        .dir
        .join(".ferry/quarantine")
        .join(format!("sha256-{flipped}"))
        .exists());
    let r = http()
        .head(format!(
            "{}/v2/cache/legacy-oci/blobs/sha256:{flipped}",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a client will push it again"
    );
    push_blob(&s.url, "cache/legacy-oci", &good).await;
    let r = ferry::verify::verify(&store, 2, false).unwrap();
    assert_eq!(r.corrupt.len(), 0, "{r}");
    assert_eq!(r.missing, vec![layer]);
    s.stop().await;
}

#[tokio::test]
async fn idle_upload_sessions_expire() {
    let s = TestServer::start().await;
    let r = http()
        .post(format!("{}/v2/up/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = http()
        .patch(format!("{}{loc}", s.url))
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r2 = http()
        .post(format!("{}/v2/up/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let fresh = r2.headers()["location"].to_str().unwrap().to_owned();
    let id = loc.rsplit('/').next().unwrap();
    age(
        &s.dir.join(".ferry/uploads").join(id),
        Duration::from_secs(48 * 3600),
    );
    let store = Store::open(&s.dir, false).unwrap();
    assert_eq!(
        store
            .expire_uploads(Duration::from_secs(24 * 3600))
            .await
            .unwrap(),
        1
    );
    // The server's own view is what clients see: that one store handle is the server's in
    // production; here a second handle removed the file, so the session cannot be recovered.
    assert!(!s.dir.join(".ferry/uploads").join(id).exists());
    let r = http()
        .get(format!("{}{fresh}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "a fresh session stays");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_newest_named_and_recently_read_tags_then_fits_a_budget() {
    let s = TestServer::start().await;
    let mut manifests = std::collections::HashMap::new();
    for (i, tag) in ["release-1", "v1", "v2", "v3", "v4", "v5"]
        .iter()
        .enumerate()
    {
        manifests.insert(
            *tag,
            push_image(&s.url, "ret/app", tag, 200 + i as u64).await,
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // distinct publish times
    }
    push_image(&s.url, "other/x", "1", 300).await;
    // Someone pulls v2.
    let r = http()
        .get(format!("{}/v2/ret/app/manifests/v2", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let gc = |extra: &[&str]| {
        let mut args = vec![
            "gc",
            "--data",
            s.dir.to_str().unwrap(),
            "--grace",
            "0s",
            "--json",
            "--repo",
            "^ret/",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let removed = |v: &serde_json::Value| -> Vec<String> {
        let mut t: Vec<String> = v["retention"]["remove"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["tag"].as_str().unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    let rules = [
        "--keep-last",
        "2",
        "--keep-tags",
        "^release-",
        "--keep-read-within",
        "1h",
    ];

    // Dry run: says what would go and how much returns; changes nothing.
    let before = snapshot(&s.dir);
    let mut dry: Vec<&str> = rules.to_vec();
    dry.push("--dry-run");
    let v = gc(&dry);
    assert_eq!(removed(&v), vec!["v1", "v3"], "{v}");
    assert!(
        v["retention"]["bytes_freed"].as_u64().unwrap() > 2 * 3000,
        "{v}"
    );
    let after = snapshot(&s.dir);
    assert_eq!(
        before
            .keys()
            .filter(|k| k.starts_with("blobs"))
            .collect::<Vec<_>>(),
        after
            .keys()
            .filter(|k| k.starts_with("blobs"))
            .collect::<Vec<_>>()
    );
    assert_eq!(before.get("index.json"), after.get("index.json"));

    // For real: the two tags go, their unique blobs are swept, everything else is intact.
    let v = gc(&rules);
    assert_eq!(removed(&v), vec!["v1", "v3"]);
    assert!(v["gc"]["swept"].as_u64().unwrap() >= 4, "{v}"); // 2 manifests + their configs and layers
    for (tag, code) in [
        ("v1", 404),
        ("v3", 404),
        ("v2", 200),
        ("v4", 200),
        ("v5", 200),
        ("release-1", 200),
    ] {
        let r = http()
            .get(format!("{}/v2/ret/app/manifests/{tag}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code, "{tag}");
    }
    let r = http()
        .get(format!("{}/v2/other/x/manifests/1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "--repo limits the rules");
    let store = Store::open(&s.dir, true).unwrap();
    assert!(ferry::verify::verify(&store, 2, false).unwrap().ok());

    // A budget just under the current size: one more tag goes, least recently read first. The
    // checks above read every remaining tag; v2 was read before them (and a marker is refreshed at
    // most hourly), so v2 is now the least recently read.
    let size: u64 = v["retention"]["bytes_before"].as_u64().unwrap()
        - v["retention"]["bytes_freed"].as_u64().unwrap();
    let budget = (size - 1).to_string();
    let v = gc(&["--max-size", &budget]);
    assert_eq!(removed(&v), vec!["v2"], "{v}");
    assert_eq!(
        v["retention"]["remove"][0]["reason"],
        "over the size budget (least recently read)"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_a_gc_loop_never_lose_a_promised_blob() {
    // 40 clients on one address push at once: more than the default per-client upload cap
    // (which would answer some with 429); this test is about GC, so lift the cap.
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_opts(
        &tmp.path().join("data"),
        ServerOpts {
            limits: ferry::server::limits::Limits {
                max_uploads_per_client: 1000,
                max_uploads: 1000,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    // Layers already in the store, old and unreferenced: exactly what a sweep removes. Each push
    // uses three shared ones and one of its own that no other manifest will ever reference.
    let shared: Vec<Vec<u8>> = (0..24).map(|i| bytes(20_000, 400 + i)).collect();
    let own: Vec<Vec<u8>> = (0..40).map(|i| bytes(10_000, 500 + i)).collect();
    // Pushed with the others and never asked about: GC must sweep these during the race.
    let strays: Vec<Vec<u8>> = (0..8).map(|i| bytes(5_000, 600 + i)).collect();
    for b in shared.iter().chain(&own).chain(&strays) {
        push_blob(&s.url, "race/app", b).await;
    }
    age_all_blobs(&s.dir, Duration::from_secs(7200));
    // 1. Clients ask whether the layers exist (as docker does before uploading): all are there.
    let gc_now = std::time::SystemTime::now();
    let mut plans = Vec::new();
    for i in 0..40usize {
        let mut layers: Vec<Vec<u8>> = (0..3)
            .map(|k| shared[(i * 7 + k * 5) % shared.len()].clone())
            .collect();
        layers.push(own[i].clone());
        for l in &layers {
            let r = http()
                .head(format!("{}/v2/race/app/blobs/{}", s.url, sha256(l)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        plans.push(layers);
    }
    // 2. GC runs in a loop while the (slow) clients get on with their pushes; its clock stopped
    //    when the promises began, so they last however long the pushes take ...
    let stop = StopOnDrop::default();
    let gc_loop = {
        let dir = s.dir.clone();
        let stop = stop.0.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&dir, false).unwrap();
            let mut runs = 0;
            // At least two runs, the last one after every push.
            while runs < 2 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tally = ferry::progress::Tally::default();
                ferry::gc::gc_as_of(&store, Duration::from_secs(60), false, &tally, || gc_now)
                    .unwrap();
                runs += 1;
            }
            runs
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 3. ... and reference what they were told exists, without uploading it.
    let mut pushes = Vec::new();
    for (i, layers) in plans.into_iter().enumerate() {
        let url = s.url.clone();
        pushes.push(tokio::spawn(async move {
            let config = format!("{{\"push\":{i}}}").into_bytes();
            push_blob(&url, "race/app", &config).await;
            let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
            let m = image_manifest(&config, &refs);
            put_manifest(
                &url,
                "race/app",
                &format!("p{i}"),
                "application/vnd.oci.image.manifest.v1+json",
                &m,
            )
            .await
            .status()
        }));
    }
    let mut statuses = Vec::new();
    for p in pushes {
        statuses.push(p.await.unwrap());
    }
    drop(stop);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "a manifest push lost a blob it was promised: {statuses:?}"
    );
    let runs = gc_loop.await.unwrap();
    assert!(runs >= 2, "GC ran {runs} times during the pushes");
    assert_blobs_gone(
        &s.url,
        "race/app",
        &strays,
        "a stray blob outlived the GC loop",
    )
    .await;
    let store = Store::open(&s.dir, true).unwrap();
    let v = ferry::verify::verify(&store, 2, false).unwrap();
    assert!(v.ok(), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_and_sync_publishing_into_one_directory_lose_no_tag() {
    // A source registry with 10 images to sync in, while clients push 20 tags to the server
    // that serves the destination directory.
    let src = TestServer::start().await;
    for i in 0..10 {
        push_image(&src.url, "from/sync", &format!("s{i}"), 600 + i).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    let served = TestServer::start_on(&dir, false).await;
    let m = push_image(&served.url, "from/push", "seed", 700).await;
    let sync = {
        let from = format!("docker://{}/from/sync", src.host());
        let to = dir.display().to_string();
        tokio::spawn(async move {
            ferry::sync::sync(
                &ferry::location::Location::parse(&from).unwrap(),
                &ferry::location::Location::parse(&to).unwrap(),
                &ferry::sync::SyncOptions {
                    jobs: 4,
                    ..Default::default()
                },
                &ferry::sync::Quiet,
            )
            .await
        })
    };
    let mut pushes = Vec::new();
    for i in 0..20 {
        let url = served.url.clone();
        let m = m.clone();
        pushes.push(tokio::spawn(async move {
            put_manifest(
                &url,
                "from/push",
                &format!("p{i}"),
                "application/vnd.oci.image.manifest.v1+json",
                &m,
            )
            .await
            .status()
        }));
    }
    for p in pushes {
        assert_eq!(p.await.unwrap(), StatusCode::CREATED);
    }
    let s = sync.await.unwrap().unwrap();
    assert!(s.failed.is_empty(), "{s}");
    for (repo, n) in [("from/push", 21), ("from/sync", 10)] {
        let v: serde_json::Value = http()
            .get(format!("{}/v2/{repo}/tags/list", served.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["tags"].as_array().unwrap().len(), n, "{v}");
    }
    // And `ferry verify` on the directory, and through the registry, agree that all is well.
    for loc in [
        dir.display().to_string(),
        format!("docker://{}", served.host()),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["verify", &loc])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{loc}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    served.stop().await;
    src.stop().await;
}

/// `ferry ARGS`, run to the end.
fn ferry_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .unwrap()
}

/// Tags of `repo` as the registry lists them.
async fn listed_tags(url: &str, repo: &str) -> Vec<String> {
    let r = http()
        .get(format!("{url}/v2/{repo}/tags/list"))
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::NOT_FOUND {
        return vec![];
    }
    let v: serde_json::Value = r.json().await.unwrap();
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

/// Push `tags` of `repo` in order, each published after the one before.
async fn push_tags(url: &str, repo: &str, tags: &[&str], seed: u64) {
    for (i, tag) in tags.iter().enumerate() {
        push_image(url, repo, tag, seed + i as u64).await;
        tokio::time::sleep(Duration::from_millis(5)).await; // distinct publish times
    }
}

const RETENTION_FILE: &str = r#"
# Caches: the newest two. Apps: the newest one, and every release.
[repo."cache/.*"]
keep-last = 2

[repo."app"]
keep-last = 1
keep-tags = "^release-"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_file_per_repository_pattern_with_gc() {
    let s = TestServer::start().await;
    push_tags(&s.url, "cache/a", &["b1", "b2", "b3", "b4"], 400).await;
    push_tags(&s.url, "app", &["release-1", "v1", "v2"], 500).await;
    push_tags(&s.url, "mycache/a", &["x1", "x2", "x3"], 600).await;
    let file = s.dir.parent().unwrap().join("retention.toml");
    std::fs::write(&file, RETENTION_FILE).unwrap();
    let (data, file_s) = (s.dir.to_str().unwrap(), file.to_str().unwrap());
    let out = ferry_cmd(&[
        "gc",
        "--data",
        data,
        "--grace",
        "0s",
        "--json",
        "--retention",
        file_s,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["gc"]["swept"].as_u64().unwrap() >= 6, "{v}");
    assert_eq!(listed_tags(&s.url, "cache/a").await, ["b3", "b4"]);
    assert_eq!(listed_tags(&s.url, "app").await, ["release-1", "v2"]);
    // Patterns match whole names: `cache/.*` does not govern `mycache/a`.
    assert_eq!(listed_tags(&s.url, "mycache/a").await, ["x1", "x2", "x3"]);
    let store = Store::open(&s.dir, true).unwrap();
    assert!(ferry::verify::verify(&store, 2, false).unwrap().ok());

    // The file and the one-off flags are one or the other.
    let out = ferry_cmd(&[
        "gc",
        "--data",
        data,
        "--retention",
        file_s,
        "--keep-last",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A misspelt key is an error naming it, not a rule that keeps nothing.
    std::fs::write(&file, "[repo.\"app\"]\nkeep_last = 1\n").unwrap();
    let out = ferry_cmd(&["gc", "--data", data, "--retention", file_s]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keep_last") && err.contains("retention.toml"),
        "{err}"
    );
    assert_eq!(listed_tags(&s.url, "app").await, ["release-1", "v2"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_schedule_applies_retention_then_gc() {
    // In process, one round of the schedule: deterministic, no waiting on a clock.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = Store::open(&dir, false).unwrap();
    let app = std::sync::Arc::new(ferry::server::App::new(store, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry::server::run(listener, app.clone(), None, async {
        let _ = rx.await;
    }));
    push_tags(&url, "cache/a", &["b1", "b2", "b3"], 700).await;
    push_tags(&url, "app", &["release-1", "v1", "v2"], 800).await;
    let schedule = ferry::server::maintenance::Schedule {
        upload_expiry: Duration::from_secs(86400),
        gc_interval: Some(Duration::from_secs(3600)),
        gc_grace: Duration::ZERO,
        retention: Some(ferry::retention::Policy::from_toml(RETENTION_FILE).unwrap()),
    };
    ferry::server::maintenance::collect(&app, &schedule).await;
    assert_eq!(listed_tags(&url, "cache/a").await, ["b2", "b3"]);
    assert_eq!(listed_tags(&url, "app").await, ["release-1", "v2"]);
    let m = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("ferry_retention_tags_removed_total 2"), "{m}");
    assert!(m.contains("ferry_gc_runs_total 1"), "{m}");
    assert!(ferry::verify::verify(&app.store, 2, false).unwrap().ok());
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_retention_flag_runs_on_the_gc_schedule() {
    // The flags wired up in the real binary: a schedule of one second, and the log says what
    // each round did. Waits for the round that follows the pushes (bounded), not for a time.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("retention.toml");
    std::fs::write(&file, RETENTION_FILE).unwrap();
    let mut p = crate::process::FerryProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--gc-interval",
            "1s",
            // Not 0s: a round may run between a push's blobs and its manifest, and only the
            // grace period keeps such fresh blobs (the promise covers HEAD and mounts).
            "--gc-grace",
            "1h",
            "--retention",
            file.to_str().unwrap(),
        ],
        &[],
    );
    push_tags(&p.url, "cache/a", &["b1", "b2", "b3"], 900).await;
    let rounds = |p: &crate::process::FerryProcess| {
        p.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" gc ") || l.contains("gc r="))
            .count()
    };
    let seen = rounds(&p);
    let start = std::time::Instant::now();
    while rounds(&p) < seen + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no GC round: {:?}",
            p.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed_tags(&p.url, "cache/a").await, ["b2", "b3"]);
    assert!(p
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("retention") && l.contains("tags_removed=1")));
    // Without --gc-interval the file would never apply: refused.
    let out = ferry_cmd(&["serve", "--retention", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    p.signal("TERM");
    p.wait(Duration::from_secs(30));
}

/// Upload sessions a `kill -9` left half-ended in a bucket — a state object that no longer
/// parses, parts whose state is already gone — are removed by expiry like any idle session, not
/// left forever (the soak, bench/soak.sh --s3, found such objects after expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_half_ended_sessions_in_a_bucket() {
    use object_store::ObjectStoreExt;
    let Some(g) = garage() else { return };
    let prefix = fresh_prefix();
    let store = open_s3(g, &prefix, false).await;
    let (broken, orphan) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let c = g.client();
    for (key, body) in [
        (
            format!("{prefix}.ferry/uploads/{broken}/state"),
            &b"{not json"[..],
        ),
        (format!("{prefix}.ferry/uploads/{broken}/tail-3"), b"abc"),
        (
            format!("{prefix}.ferry/uploads/{orphan}/tail-10"),
            b"0123456789",
        ),
    ] {
        c.put(&object_store::path::Path::from(key), body.to_vec().into())
            .await
            .unwrap();
    }
    assert_eq!(g.keys(&format!("{prefix}.ferry/uploads/")).await.len(), 3);
    let n = tokio::task::spawn_blocking(move || store.wait(store.expire_uploads(Duration::ZERO)))
        .await
        .unwrap()
        .unwrap();
    let left = g.keys(&format!("{prefix}.ferry/uploads/")).await;
    assert_eq!(n, 2, "{left:?}");
    assert!(left.is_empty(), "{left:?}");
}
