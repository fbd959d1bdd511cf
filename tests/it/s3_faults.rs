//! Faults under the S3 backend: a store that answers 500 or stalls, and a Garage node killed
//! in the middle of pushes and pulls. Clean errors, bounded waits, nothing half-visible, and
//! nothing lost once the store is back.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn status_of(r: reqwest::RequestBuilder) -> StatusCode {
    r.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_stalled_store_gives_clean_errors_and_nothing_half_visible() {
    let Some(g) = garage() else {
        return;
    };
    let proxy = FaultProxy::start(g.endpoint()).await;
    let endpoint = format!("http://{}", proxy.addr);
    let settings = g.settings_with(&[
        ("AWS_ENDPOINT_URL", &endpoint),
        ("FERRY_S3_READ_TIMEOUT", "1s"),
    ]);
    let prefix = fresh_prefix();
    let s = TestServer::start_s3_with(&settings, &prefix, ServerOpts::default()).await;
    let m = push_image(&s.url, "app", "v1", 41).await;

    // An upload under way: one whole part and a tail are in the store.
    let data = bytes(9 << 20, 42);
    let d = sha256(&data);
    let r = http()
        .post(format!("{}/v2/app/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let cut = 6 << 20;
    let r = http()
        .patch(format!("{}{loc}", s.url))
        .header("Content-Range", format!("0-{}", cut - 1))
        .body(data[..cut].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    for mode in [ProxyMode::Fail500, ProxyMode::Stall] {
        proxy.set(mode);
        let t = Instant::now();
        // The end of the upload, a read of what exists, a new manifest: each a 503 with the
        // error body, none a hang.
        let r = http()
            .put(format!("{}{loc}?digest={d}", s.url))
            .header("Content-Range", format!("{cut}-{}", data.len() - 1))
            .body(data[cut..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{mode:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["errors"][0]["message"].is_string(), "{v}");
        assert_eq!(
            status_of(http().get(format!("{}/v2/app/manifests/v1", s.url))).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_of(
                http()
                    .put(format!("{}/v2/app/manifests/v2", s.url))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(m.clone())
            )
            .await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{mode:?}: answered after {:?}",
            t.elapsed()
        );
    }

    proxy.set(ProxyMode::Pass);
    // Nothing of the failed requests is visible: no blob, no tag.
    assert_eq!(
        status_of(http().head(format!("{}/v2/app/blobs/{d}", s.url))).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(http().get(format!("{}/v2/app/manifests/v2", s.url))).await,
        StatusCode::NOT_FOUND
    );
    // The session survived the store's failure: the client finishes it.
    let r = http().get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", cut - 1)
    );
    let r = http()
        .put(format!("{}{loc}?digest={d}", s.url))
        .header("Content-Range", format!("{cut}-{}", data.len() - 1))
        .body(data[cut..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(digest_served(&s.url, "app", &d).await, d);
    let r = http()
        .get(format!("{}/v2/app/manifests/v1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
    let store = open_s3(g, &prefix, true).await;
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false).unwrap())
        .await
        .unwrap();
    assert!(v.ok(), "{v}");
    s.stop().await;
}

/// One of three Garage nodes killed with -9 while clients push and pull: every operation still
/// succeeds (a quorum of two), and after the node is back `ferry verify` finds the store clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garage_node_killed_mid_traffic_loses_nothing() {
    let Some(g) = Garage::private() else {
        return;
    };
    let prefix = fresh_prefix();
    let s = TestServer::start_s3(&g, &prefix, ServerOpts::default()).await;
    let mut pushed = Vec::new();
    for i in 0..12u64 {
        if i == 4 {
            // Node 1 is the endpoint ferry talks to; a storage node behind it goes.
            g.script(&["kill", "3"]);
        }
        if i == 9 {
            g.script(&["restart", "3"]);
        }
        let tag = format!("t{i}");
        let m = push_image(&s.url, "loop", &tag, 600 + i).await;
        pushed.push((tag, m));
        for (tag, m) in &pushed {
            let r = http()
                .get(format!("{}/v2/loop/manifests/{tag}", s.url))
                .header("Accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{tag} after push {i}");
            assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
        }
    }
    s.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", &format!("s3://ferry/{prefix}")])
        .envs(g.envs())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("all blobs intact"), "{text}");
}
