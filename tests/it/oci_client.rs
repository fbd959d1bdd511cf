//! ferry through `oci-client`, the Rust client ferry's own sync will use: chunked and monolithic
//! pushes, pulls, raw manifests of BuildKit caches, tags, mounts and referrers.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::common::*;

fn client(monolithic: bool) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: monolithic,
        ..Default::default()
    })
}

fn reference(s: &TestServer, r: &str) -> Reference {
    format!("{}/{r}", s.host()).parse().expect("reference")
}

#[tokio::test]
async fn push_and_pull_chunked_and_monolithic() {
    let s = TestServer::start().await;
    for (monolithic, repo) in [(false, "oc/chunked:1"), (true, "oc/mono:1")] {
        let c = client(monolithic);
        let layers = vec![
            // Larger than the client's chunk size, so the chunked push PATCHes several times.
            ImageLayer::new(
                bytes(9 * 1024 * 1024 + 17, 40),
                IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
                None,
            ),
            ImageLayer::new(
                bytes(1234, 41),
                IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
                None,
            ),
        ];
        let config = Config::new(
            br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
            IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            None,
        );
        let r = reference(&s, repo);
        c.push(&r, &layers, config.clone(), &RegistryAuth::Anonymous, None)
            .await
            .expect("push");
        let got = c
            .pull(
                &r,
                &RegistryAuth::Anonymous,
                vec![IMAGE_LAYER_GZIP_MEDIA_TYPE],
            )
            .await
            .expect("pull");
        assert_eq!(got.layers.len(), 2);
        let got_digests: Vec<String> = got
            .layers
            .iter()
            .map(|l| format!("{} {}", sha256(&l.data), l.data.len()))
            .collect();
        let want_digests: Vec<String> = layers
            .iter()
            .map(|l| format!("{} {}", sha256(&l.data), l.data.len()))
            .collect();
        // oci-client downloads layers concurrently and returns them in completion order.
        let (mut got_digests, mut want_digests) = (got_digests, want_digests);
        got_digests.sort();
        want_digests.sort();
        assert_eq!(got_digests, want_digests, "{repo}");
        assert_eq!(got.config.data, config.data);
        let digest = c
            .fetch_manifest_digest(&r, &RegistryAuth::Anonymous)
            .await
            .unwrap();
        assert_eq!(Some(digest), got.digest);
    }
    assert!(leftovers(&s.dir).is_empty());
    s.stop().await;
}

#[tokio::test]
async fn raw_cache_manifests_tags_mount_referrers() {
    let s = TestServer::start().await;
    let c = client(false);
    // Push the legacy OCI cache index with plain HTTP, then read it through the client.
    let layout = fixtures().join("layouts/cache-legacy-oci");
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("f99accf0")
        {
            continue;
        }
        push_blob(&s.url, "cache/legacy-oci", &data).await;
    }
    let root = std::fs::read(
        layout
            .join("blobs/sha256/f99accf04758e8e54101fa248a0ebe52d6f14024c74d8328b861bef0db6142e1"),
    )
    .unwrap();
    let r = put_manifest(
        &s.url,
        "cache/legacy-oci",
        "cache",
        "application/vnd.oci.image.index.v1+json",
        &root,
    )
    .await;
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let rf = reference(&s, "cache/legacy-oci:cache");
    let (raw, digest) = c
        .pull_manifest_raw(
            &rf,
            &RegistryAuth::Anonymous,
            &["application/vnd.oci.image.index.v1+json"],
        )
        .await
        .expect("raw manifest");
    assert_eq!(raw.as_ref(), &root[..]);
    assert_eq!(digest, sha256(&root).to_string());

    // Tags with pagination.
    for t in ["b", "a"] {
        put_manifest(
            &s.url,
            "cache/legacy-oci",
            t,
            "application/vnd.oci.image.index.v1+json",
            &root,
        )
        .await;
    }
    let tags = c
        .list_tags(&rf, &RegistryAuth::Anonymous, Some(2), None)
        .await
        .unwrap();
    assert_eq!(tags.tags, vec!["a", "b"]);
    let tags = c
        .list_tags(&rf, &RegistryAuth::Anonymous, None, Some("b"))
        .await
        .unwrap();
    assert_eq!(tags.tags, vec!["cache"]);

    // Mount a blob into another repository.
    let cfg = "sha256:312e079459047e103b8485e2c4b5238ff5423547adcb10dc2d9acbe79f7c975f";
    c.mount_blob(&reference(&s, "other/repo:x"), &rf, cfg)
        .await
        .expect("mount");

    // Referrers (none yet): an empty index, not an error.
    let subject: Reference = format!("{}/cache/legacy-oci@{}", s.host(), sha256(&root))
        .parse()
        .unwrap();
    let idx = c.pull_referrers(&subject, None).await.expect("referrers");
    assert!(idx.manifests.is_empty());
    s.stop().await;
}
