//! `ferry sync` against upstreams that misbehave (wiremock): server errors, short bodies, wrong
//! bytes, and the bearer-token flow with credentials.

use ferry::location::Location;
use ferry::sync::{sync, Quiet, SyncOptions};
use wiremock::matchers::{header, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

fn image() -> Image {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = bytes(300_000, 80);
    let manifest = image_manifest(&config, &[&layer]);
    Image {
        config,
        layer,
        manifest,
    }
}

/// Mount the manifest and the config; the layer is up to each test.
async fn mount_image(server: &MockServer, img: &Image) {
    Mock::given(method("GET"))
        .and(path("/v2/"))
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
    for m in ["GET", "HEAD"] {
        Mock::given(method(m))
            .and(path("/v2/mock/app/manifests/1"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("Content-Type", OCI_MANIFEST)
                    .insert_header(
                        "Docker-Content-Digest",
                        sha256(&img.manifest).to_string().as_str(),
                    )
                    .set_body_bytes(img.manifest.clone()),
            )
            .mount(server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path(format!("/v2/mock/app/blobs/{}", sha256(&img.config))))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(img.config.clone()))
        .mount(server)
        .await;
}

fn opts() -> SyncOptions {
    SyncOptions {
        jobs: 2,
        ..Default::default()
    }
}

async fn run(
    server: &MockServer,
    dst: &std::path::Path,
    o: &SyncOptions,
) -> Result<ferry::sync::Summary, ferry::Error> {
    sync(
        &Location::parse(&format!("docker://{}/mock/app:1", server.address())).unwrap(),
        &Location::parse(&dst.display().to_string()).unwrap(),
        o,
        &Quiet,
    )
    .await
}

fn tag_published(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("index.json")).is_ok_and(|s| s.contains("mock/app:1"))
}

#[tokio::test]
async fn server_errors_fail_the_ref_and_publish_nothing() {
    let server = MockServer::start().await;
    let img = image();
    mount_image(&server, &img).await;
    Mock::given(method("GET"))
        .and(path(format!("/v2/mock/app/blobs/{}", sha256(&img.layer))))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&server)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("d");
    let s = run(&server, &dst, &opts()).await.unwrap();
    assert_eq!(s.failed.len(), 1, "{s}");
    assert!(s.failed[0].contains(&sha256(&img.layer).to_string()), "{s}");
    assert!(!tag_published(&dst));
}

#[tokio::test]
async fn a_short_body_is_kept_and_resumed_with_range() {
    let server = MockServer::start().await;
    let img = image();
    mount_image(&server, &img).await;
    let ld = sha256(&img.layer);
    let half = img.layer.len() / 2;
    let first = Mock::given(method("GET"))
        .and(path(format!("/v2/mock/app/blobs/{ld}")))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(img.layer[..half].to_vec()))
        .mount_as_scoped(&server)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("d");
    let s = run(&server, &dst, &opts()).await.unwrap();
    assert_eq!(s.failed.len(), 1, "{s}");
    assert!(s.failed[0].contains("resume"), "{s}");
    assert!(!tag_published(&dst));
    let partial = dst
        .join(".ferry/partial")
        .join(format!("sha256-{}", ld.hex()));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half as u64);
    drop(first);

    // The upstream recovers and honours ranges: only the rest travels.
    Mock::given(method("GET"))
        .and(path(format!("/v2/mock/app/blobs/{ld}")))
        .and(header("range", format!("bytes={half}-").as_str()))
        .respond_with(
            ResponseTemplate::new(206)
                .insert_header(
                    "Content-Range",
                    format!("bytes {half}-{}/{}", img.layer.len() - 1, img.layer.len()).as_str(),
                )
                .set_body_bytes(img.layer[half..].to_vec()),
        )
        .mount(&server)
        .await;
    let s = run(&server, &dst, &opts()).await.unwrap();
    assert!(s.failed.is_empty(), "{s}");
    assert_eq!(s.bytes_resumed, half as u64);
    assert_eq!(s.bytes_transferred, (img.layer.len() - half) as u64);
    assert!(tag_published(&dst));
    assert_eq!(
        std::fs::read(dst.join("blobs/sha256").join(ld.hex())).unwrap(),
        img.layer
    );
    assert!(!partial.exists());
}

#[tokio::test]
async fn wrong_bytes_are_named_and_not_stored() {
    let server = MockServer::start().await;
    let img = image();
    mount_image(&server, &img).await;
    let ld = sha256(&img.layer);
    let mut wrong = img.layer.clone();
    wrong[1234] ^= 0xff;
    Mock::given(method("GET"))
        .and(path(format!("/v2/mock/app/blobs/{ld}")))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(wrong))
        .mount(&server)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("d");
    let s = run(&server, &dst, &opts()).await.unwrap();
    assert_eq!(s.failed.len(), 1, "{s}");
    assert!(s.failed[0].contains(&ld.to_string()), "{s}");
    assert!(!dst.join("blobs/sha256").join(ld.hex()).exists());
    assert!(!dst
        .join(".ferry/partial")
        .join(format!("sha256-{}", ld.hex()))
        .exists());
    assert!(!tag_published(&dst));

    // A manifest whose bytes do not match the digest the registry claims is refused too.
    let server2 = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server2)
        .await;
    let d = sha256(&img.manifest);
    Mock::given(method("GET"))
        .and(path(format!("/v2/mock/app/manifests/{d}")))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Content-Type", OCI_MANIFEST)
                .insert_header("Docker-Content-Digest", d.to_string().as_str())
                .set_body_bytes(image_manifest(b"{}", &[])),
        )
        .mount(&server2)
        .await;
    let err = sync(
        &Location::parse(&format!("docker://{}/mock/app@{d}", server2.address())).unwrap(),
        &Location::parse(&tmp.path().join("d2").display().to_string()).unwrap(),
        &opts(),
        &Quiet,
    )
    .await;
    let text = match err {
        Ok(s) => s.failed.join(" "),
        Err(e) => e.to_string(),
    };
    assert!(text.contains(&d.to_string()), "{text}");
}

/// A registry that wants a bearer token from its token endpoint, which wants `user:pass`.
async fn bearer_upstream() -> (MockServer, Image) {
    let server = MockServer::start().await;
    let img = image();
    let realm = format!("http://{}/token", server.address());
    let challenge = format!("Bearer realm=\"{realm}\",service=\"mock\"");
    // user:pass
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(header("authorization", "Basic dXNlcjpwYXNz"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "tok"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(10)
        .mount(&server)
        .await;
    let ok = |body: Vec<u8>| ResponseTemplate::new(200).set_body_bytes(body);
    for m in ["GET", "HEAD"] {
        Mock::given(method(m))
            .and(path("/v2/mock/app/manifests/1"))
            .and(header("authorization", "Bearer tok"))
            .respond_with(
                ok(img.manifest.clone())
                    .insert_header("Content-Type", OCI_MANIFEST)
                    .insert_header(
                        "Docker-Content-Digest",
                        sha256(&img.manifest).to_string().as_str(),
                    ),
            )
            .mount(&server)
            .await;
    }
    for b in [&img.config, &img.layer] {
        Mock::given(method("GET"))
            .and(path(format!("/v2/mock/app/blobs/{}", sha256(b))))
            .and(header("authorization", "Bearer tok"))
            .respond_with(ok(b.clone()))
            .mount(&server)
            .await;
    }
    // Anything else with the token: not here (as a registry answers for an unknown manifest,
    // such as the referrers tag schema's `sha256-<hex>` that sync looks for).
    Mock::given(path_regex("^/v2/.+/.+"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(ResponseTemplate::new(404))
        .with_priority(9)
        .mount(&server)
        .await;
    // Anything without the token: the challenge.
    Mock::given(path_regex("^/v2/.*"))
        .respond_with(
            ResponseTemplate::new(401).insert_header("WWW-Authenticate", challenge.as_str()),
        )
        .with_priority(10)
        .mount(&server)
        .await;

    (server, img)
}

#[tokio::test]
async fn bearer_token_flow_with_credentials() {
    let (server, img) = bearer_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("d");
    // Without credentials the token endpoint refuses: a clear failure.
    let r = run(&server, &dst, &opts()).await;
    let text = match r {
        Ok(s) => s.failed.join(" "),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("authentication") || text.contains("401") || text.contains("nauthorized"),
        "{text}"
    );
    assert!(!tag_published(&dst));

    let mut o = opts();
    o.src.creds = Some("user:pass".into());
    let s = run(&server, &dst, &o).await.unwrap();
    assert!(s.failed.is_empty(), "{s}");
    assert!(tag_published(&dst));
    assert_eq!(
        std::fs::read(dst.join("blobs/sha256").join(sha256(&img.layer).hex())).unwrap(),
        img.layer
    );
}

/// Pull-through reuses the sync client's bearer-token flow: with `--upstream-creds` ferry gets a
/// token and serves the image; without, the client is told the upstream refused (502), and
/// nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_runs_the_bearer_token_flow() {
    let (server, img) = bearer_upstream().await;
    let up = format!("mock=http://{}", server.address());
    for creds in [None, Some("user:pass")] {
        let tmp = tempfile::tempdir().unwrap();
        let pull = ferry::proxy::PullThrough::new(
            vec![ferry::proxy::Upstream::parse(&up, creds.map(str::to_owned), None).unwrap()],
            std::time::Duration::from_secs(600),
        )
        .unwrap();
        let srv = TestServer::start_opts(
            &tmp.path().join("data"),
            ServerOpts {
                pull: Some(pull),
                ..Default::default()
            },
        )
        .await;
        let r = http()
            .get(format!("{}/v2/mock/mock/app/manifests/1", srv.url))
            .send()
            .await
            .unwrap();
        if creds.is_none() {
            assert_eq!(r.status(), 502);
            let text = r.text().await.unwrap();
            assert!(
                text.contains("nauthorized")
                    || text.contains("401")
                    || text.contains("authentication"),
                "{text}"
            );
            assert!(srv.index_json().await["manifests"]
                .as_array()
                .unwrap()
                .is_empty());
        } else {
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap(), img.manifest);
            let b = http()
                .get(format!(
                    "{}/v2/mock/mock/app/blobs/{}",
                    srv.url,
                    sha256(&img.layer)
                ))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(b, img.layer);
        }
        srv.stop().await;
    }
}
