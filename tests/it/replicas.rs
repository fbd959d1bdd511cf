//! Several `ferry serve` replicas on one bucket of a real 3-node Garage cluster: what one
//! publishes the others serve at once, an upload session moves between them, concurrent tags are
//! never lost, and a GC on one never removes what another promised. Plus the one-line errors of
//! a bucket that cannot be used.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Three replicas on one fresh prefix.
async fn three(
    opts: impl Fn() -> ServerOpts,
) -> Option<(&'static Garage, String, Vec<TestServer>)> {
    let g = garage()?;
    let prefix = fresh_prefix();
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(TestServer::start_s3(g, &prefix, opts()).await);
    }
    Some((g, prefix, v))
}

fn no_upload_caps() -> ServerOpts {
    ServerOpts {
        limits: ferry::server::limits::Limits {
            max_uploads_per_client: 1000,
            max_uploads: 1000,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_through_one_replica_is_served_by_the_others_at_once() {
    let Some((_, _, rs)) = three(ServerOpts::default).await else {
        return;
    };
    // Each replica has already answered (and cached what it read) before the push.
    for r in &rs {
        let resp = http()
            .get(format!("{}/v2/app/tags/list", r.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let m = push_image(&rs[0].url, "app", "v1", 31).await;
    for r in &rs[1..] {
        let resp = http()
            .get(format!("{}/v2/app/manifests/v1", r.url))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &m[..]);
        let v: serde_json::Value = http()
            .get(format!("{}/v2/app/tags/list", r.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["tags"], serde_json::json!(["v1"]));
    }
    // Moved through the second replica: the third serves the new manifest.
    let m2 = push_image(&rs[1].url, "app", "v1", 32).await;
    let resp = http()
        .get(format!("{}/v2/app/manifests/v1", rs[2].url))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &m2[..]);
    for r in rs {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_split_across_three_replicas_completes() {
    let Some((g, prefix, rs)) = three(ServerOpts::default).await else {
        return;
    };
    // 13 MiB in chunks that do not fall on the 5 MiB part boundaries: parts are cut on one
    // replica from bytes another one received.
    let data = bytes(13 << 20, 33);
    let d = sha256(&data);
    let cuts = [0usize, 3_300_000, 7_500_000, 12_000_000, data.len()];
    let r = http()
        .post(format!("{}/v2/split/blobs/uploads/", rs[0].url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    for (i, w) in cuts.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let replica = &rs[(i + 1) % 3];
        let last = b == data.len();
        let req = if last {
            http().put(format!("{}{loc}?digest={d}", replica.url))
        } else {
            http().patch(format!("{}{loc}", replica.url))
        };
        let r = req
            .header("Content-Range", format!("{a}-{}", b - 1))
            .header("Content-Type", "application/octet-stream")
            .body(data[a..b].to_vec())
            .send()
            .await
            .unwrap();
        if last {
            assert_eq!(r.status(), StatusCode::CREATED);
        } else {
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            assert_eq!(
                r.headers()["range"].to_str().unwrap(),
                format!("0-{}", b - 1)
            );
            // Status asked of yet another replica.
            let st = http()
                .get(format!("{}{loc}", rs[(i + 2) % 3].url))
                .send()
                .await
                .unwrap();
            assert_eq!(st.status(), StatusCode::NO_CONTENT);
            assert_eq!(
                st.headers()["range"].to_str().unwrap(),
                format!("0-{}", b - 1)
            );
        }
    }
    for r in &rs {
        assert_eq!(digest_served(&r.url, "split", &d).await, d);
    }
    // A range from the middle, across a part boundary.
    let r = http()
        .get(format!("{}/v2/split/blobs/{d}", rs[1].url))
        .header("Range", "bytes=5242000-5243000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &data[5_242_000..=5_243_000]
    );
    assert!(
        g.keys(&format!("{prefix}.ferry/uploads/")).await.is_empty(),
        "session objects left"
    );
    for r in rs {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_published_at_once_through_three_replicas_are_all_kept() {
    let Some((_, _, rs)) = three(no_upload_caps).await else {
        return;
    };
    // One config and layer for all: what races is the publication of 150 tags.
    let config = b"{\"race\":true}".to_vec();
    let layer = bytes(1000, 34);
    push_blob(&rs[0].url, "many", &config).await;
    push_blob(&rs[0].url, "many", &layer).await;
    let m = image_manifest(&config, &[&layer]);
    let mut tasks = Vec::new();
    for i in 0..150usize {
        let url = rs[i % 3].url.clone();
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            put_manifest(&url, "many", &format!("t{i:03}"), OCI_MANIFEST, &m)
                .await
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let want: Vec<String> = (0..150).map(|i| format!("t{i:03}")).collect();
    for r in &rs {
        let v: serde_json::Value = http()
            .get(format!("{}/v2/many/tags/list", r.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut got: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        got.sort();
        assert_eq!(got, want, "tags lost on {}", r.url);
    }
    for r in rs {
        r.stop().await;
    }
}

/// The 40-client race of `storage::pushes_racing_a_gc_loop_never_lose_a_promised_blob`, across
/// three replicas: clients are told "exists" by one, push their manifests through another, while
/// GC runs in a loop through the third. An object's age cannot be set back in S3, so the blobs
/// age for real (a few seconds past a short grace period), and GC's clock is stopped at the
/// moment the promises begin: every promise stays younger than the grace period however long
/// the pushes take on a loaded machine, and every blob nobody was promised is older than it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_gc_on_another_replica_never_lose_a_promised_blob() {
    let Some((g, prefix, rs)) = three(no_upload_caps).await else {
        return;
    };
    let grace = Duration::from_secs(2);
    let shared: Vec<Vec<u8>> = (0..24).map(|i| bytes(20_000, 400 + i)).collect();
    let own: Vec<Vec<u8>> = (0..40).map(|i| bytes(10_000, 500 + i)).collect();
    // Pushed with the others and never asked about: GC must sweep these during the race.
    let strays: Vec<Vec<u8>> = (0..8).map(|i| bytes(5_000, 600 + i)).collect();
    for b in shared.iter().chain(&own).chain(&strays) {
        push_blob(&rs[0].url, "race/app", b).await;
    }
    // Older than the grace period (and its second of Last-Modified rounding) at GC's clock.
    tokio::time::sleep(grace + Duration::from_millis(1500)).await;
    let gc_now = std::time::SystemTime::now();
    let mut plans = Vec::new();
    for i in 0..40usize {
        let mut layers: Vec<Vec<u8>> = (0..3)
            .map(|k| shared[(i * 7 + k * 5) % shared.len()].clone())
            .collect();
        layers.push(own[i].clone());
        for l in &layers {
            let r = http()
                .head(format!("{}/v2/race/app/blobs/{}", rs[0].url, sha256(l)))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        plans.push(layers);
    }
    let stop = StopOnDrop::default();
    let gc_store = open_s3(g, &prefix, false).await;
    let gc_loop = {
        let stop = stop.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut runs = 0;
            let mut swept = 0;
            // At least two runs, the last one after every push.
            while runs < 2 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tally = ferry::progress::Tally::default();
                let r = ferry::gc::gc_as_of(&gc_store, grace, false, &tally, || gc_now);
                swept += r.map_err(|e| format!("GC run {runs}: {e}"))?.swept;
                runs += 1;
            }
            Ok::<_, String>((runs, swept))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut pushes = Vec::new();
    for (i, layers) in plans.into_iter().enumerate() {
        let url = rs[1 + i % 2].url.clone();
        pushes.push(tokio::spawn(async move {
            let config = format!("{{\"push\":{i}}}").into_bytes();
            push_blob(&url, "race/app", &config).await;
            let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
            let m = image_manifest(&config, &refs);
            put_manifest(&url, "race/app", &format!("p{i}"), OCI_MANIFEST, &m)
                .await
                .status()
        }));
    }
    let mut statuses = Vec::new();
    for p in pushes {
        statuses.push(p.await.unwrap());
    }
    // One more sweep after the last manifest: nothing it references may go.
    drop(stop);
    let (runs, swept) = gc_loop.await.unwrap().unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "a manifest push lost a blob it was promised: {statuses:?}"
    );
    assert!(runs >= 2, "GC ran {runs} times during the pushes");
    assert_eq!(swept, strays.len(), "GC was to sweep exactly the strays");
    assert_blobs_gone(
        &rs[1].url,
        "race/app",
        &strays,
        "a stray blob outlived the GC loop",
    )
    .await;
    let store = open_s3(g, &prefix, true).await;
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false).unwrap())
        .await
        .unwrap();
    assert!(v.ok(), "{v}");
    assert_eq!(v.missing, Vec::<String>::new());
    for r in rs {
        r.stop().await;
    }
}

/// `ferry serve --data s3://…` that cannot work stops at once with one line naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_cannot_be_used_is_one_line_naming_why() {
    let Some(g) = garage() else {
        return;
    };
    let run = |data: &str, change: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.args(["serve", "--listen", "127.0.0.1:0", "--data", data]);
        for (k, v) in g.envs() {
            c.env(k, v);
        }
        for (k, v) in change {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (data, change, says) in [
        ("s3://no-such-bucket", vec![], "no such bucket"),
        (
            "s3://ferry",
            vec![(
                "AWS_SECRET_ACCESS_KEY",
                "0000000000000000000000000000000000000000000000000000000000000000",
            )],
            "credentials refused",
        ),
        (
            "s3://ferry",
            vec![("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
            "endpoint unreachable",
        ),
    ] {
        let (code, err) = run(data, &change);
        assert_eq!(code, Some(1), "{data} {change:?}: {err}");
        assert!(err.contains(says), "{data} {change:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// `--redirect`: a blob GET is a 307 to a presigned URL of the store, which serves the bytes and
/// ranges itself; HEAD and unknown blobs are answered by ferry; a directory refuses the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_hands_blob_downloads_to_presigned_urls() {
    let Some(g) = garage() else {
        return;
    };
    let prefix = fresh_prefix();
    let s = TestServer::start_s3(
        g,
        &prefix,
        ServerOpts {
            redirect: true,
            ..Default::default()
        },
    )
    .await;
    let data = bytes(6 << 20, 90);
    let d = push_blob(&s.url, "r", &data).await;
    let r = http()
        .get(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers()["docker-content-digest"], d.to_string().as_str());
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    let endpoint = &g
        .settings
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .unwrap()
        .1;
    assert!(to.starts_with(endpoint.as_str()), "{to}");
    assert!(to.contains("X-Amz-Signature="), "{to}");
    // The client follows it (as docker does) and gets the bytes from the store.
    assert_eq!(digest_served(&s.url, "r", &d).await, d);
    let r = http()
        .get(&to)
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[100..200]);
    let r = http()
        .head(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http()
        .get(format!("{}/v2/r/blobs/{}", s.url, sha256(b"absent")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redirect", "--data"])
        .arg(tmp.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redirect"));
}
