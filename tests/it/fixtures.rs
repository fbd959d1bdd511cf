//! Replay of the real BuildKit exports in `tests/fixtures/buildkit` (a copy of
//! `shared/fixtures/buildkit`): push each graph the way BuildKit does (HEAD blob → POST session →
//! PUT ?digest=; child manifests by digest; the root by tag last), then read everything back and
//! compare bytes and the headers Distribution 2.8.2 served for the same requests.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use crate::common::*;

/// One manifest GET recorded in `<layout>.headers.txt`.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub path: String,
    accept: String,
    content_type: String,
    pub digest: String,
    length: u64,
}

fn parse_headers(file: &Path) -> Vec<Recorded> {
    let text = std::fs::read_to_string(file).expect("headers file");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut cur: Option<Recorded> = None;
        for line in block.lines() {
            if let Some(p) = line.strip_prefix("GET ") {
                cur = Some(Recorded {
                    path: p.trim().to_owned(),
                    accept: String::new(),
                    content_type: String::new(),
                    digest: String::new(),
                    length: 0,
                });
            } else if let Some(c) = cur.as_mut() {
                if let Some((k, v)) = line.split_once(": ") {
                    match k {
                        "Accept" => c.accept = v.to_owned(),
                        "Content-Type" => c.content_type = v.to_owned(),
                        "Docker-Content-Digest" => c.digest = v.to_owned(),
                        "Content-Length" => c.length = v.parse().expect("length"),
                        _ => {}
                    }
                }
            }
        }
        out.extend(cur);
    }
    assert!(!out.is_empty(), "no records in {}", file.display());
    out
}

pub(crate) fn parse_headers_pub(file: &Path) -> Vec<Recorded> {
    parse_headers(file)
}

fn layout(name: &str) -> PathBuf {
    fixtures().join("layouts").join(name)
}

fn blob_file(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    layout.join("blobs").join(alg).join(hex)
}

fn hdr(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// (repo, tag) from a recorded path `/v2/<repo>/manifests/<tag>`.
fn repo_tag(path: &str) -> (String, String) {
    let rest = path.strip_prefix("/v2/").expect("path");
    let (repo, tag) = rest.rsplit_once("/manifests/").expect("manifest path");
    (repo.to_owned(), tag.to_owned())
}

/// Push one blob exactly as BuildKit does.
async fn buildkit_push_blob(url: &str, repo: &str, data: &[u8], digest: &str) {
    let c = http();
    let r = c
        .head(format!("{url}/v2/{repo}/blobs/{digest}"))
        .header("Accept", "application/vnd.oci.image.layer.v1.tar+gzip, */*")
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::OK {
        return; // already there (blobs are shared): BuildKit skips it too
    }
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = hdr(&r, "location");
    // Distribution answers with an absolute URL, ferry with a path.
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "blob {digest}");
}

/// Push a fixture layout into a running registry; returns the recorded manifests (root first).
pub(crate) async fn replay_push(url: &str, name: &str) -> Vec<Recorded> {
    let dir = layout(name);
    let recs = parse_headers(
        &fixtures()
            .join("layouts")
            .join(format!("{name}.headers.txt")),
    );
    let (repo, tag) = repo_tag(&recs[0].path);
    let manifest_digests: Vec<&str> = recs.iter().map(|r| r.digest.as_str()).collect();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let digest = format!("sha256:{}", e.file_name().to_string_lossy());
        if manifest_digests.contains(&digest.as_str()) {
            continue;
        }
        let data = std::fs::read(e.path()).unwrap();
        buildkit_push_blob(url, &repo, &data, &digest).await;
    }
    // Children first (by digest), then the root by tag: a tag never points at missing content.
    for rec in recs.iter().skip(1).chain(recs.iter().take(1)) {
        let reference = if std::ptr::eq(rec, &recs[0]) {
            tag.clone()
        } else {
            rec.digest.clone()
        };
        let r = http()
            .head(format!("{url}/v2/{repo}/manifests/{reference}"))
            .header("Accept", format!("{}, */*", rec.content_type))
            .send()
            .await
            .unwrap();
        if std::ptr::eq(rec, &recs[0]) {
            assert_eq!(
                r.status(),
                StatusCode::NOT_FOUND,
                "{name}: tag exists before its push"
            );
        } else {
            // Content is shared by the whole store, so a child another repository already
            // pushed answers 200 (BuildKit would skip it); PUT it anyway to exercise the path.
            assert!(matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::OK));
        }
        let body = std::fs::read(blob_file(&dir, &rec.digest)).unwrap();
        let r = put_manifest(url, &repo, &reference, &rec.content_type, &body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{name}: PUT {reference}");
        assert_eq!(hdr(&r, "docker-content-digest"), rec.digest);
    }
    recs
}

/// Read everything back and compare with the recorded bytes and headers.
pub(crate) async fn verify_pull(url: &str, name: &str, recs: &[Recorded]) {
    let dir = layout(name);
    for rec in recs {
        for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
            let r = http()
                .request(method.clone(), format!("{url}{}", rec.path))
                .header("Accept", &rec.accept)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{name}: {method} {}", rec.path);
            assert_eq!(hdr(&r, "content-type"), rec.content_type, "{}", rec.path);
            assert_eq!(hdr(&r, "docker-content-digest"), rec.digest, "{}", rec.path);
            assert_eq!(
                hdr(&r, "content-length"),
                rec.length.to_string(),
                "{}",
                rec.path
            );
            if method == reqwest::Method::GET {
                let expect = std::fs::read(blob_file(&dir, &rec.digest)).unwrap();
                assert_eq!(
                    r.bytes().await.unwrap().as_ref(),
                    &expect[..],
                    "{}",
                    rec.path
                );
            }
        }
    }
    let (repo, _) = repo_tag(&recs[0].path);
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let digest = format!("sha256:{}", e.file_name().to_string_lossy());
        // Manifests were compared above through /manifests/ (Distribution does not serve them
        // through /blobs/).
        if recs.iter().any(|r| r.digest == digest) {
            continue;
        }
        let r = http()
            .get(format!("{url}/v2/{repo}/blobs/{digest}"))
            .header("Accept", "application/vnd.buildkit.cacheconfig.v0, */*")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(hdr(&r, "docker-content-digest"), digest);
        let got = r.bytes().await.unwrap();
        assert_eq!(
            got.as_ref(),
            &std::fs::read(e.path()).unwrap()[..],
            "{digest}"
        );
    }
}

pub(crate) const RECORDED: [&str; 5] = [
    "cache-legacy-oci",
    "cache-legacy-docker",
    "cache-manifest",
    "app-image",
    "app-buildx",
];

async fn every_buildkit_export_round_trips_byte_for_byte(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    for name in RECORDED {
        let recs = replay_push(&s.url, name).await;
        verify_pull(&s.url, name, &recs).await;
    }
    // The store is a layout another tool can read: index.json names each root as REPO:TAG.
    let index = s.index_json().await;
    for name in RECORDED {
        let recs = parse_headers(
            &fixtures()
                .join("layouts")
                .join(format!("{name}.headers.txt")),
        );
        let (repo, tag) = repo_tag(&recs[0].path);
        let want = format!("{repo}:{tag}");
        let found = index["manifests"].as_array().unwrap().iter().any(|d| {
            d["annotations"]["org.opencontainers.image.ref.name"] == want.as_str()
                && d["digest"] == recs[0].digest.as_str()
                && d["mediaType"] == recs[0].content_type.as_str()
        });
        assert!(found, "index.json lacks {want}");
    }
    assert!(s.leftovers().await.is_empty());
    s.stop().await;
}

async fn legacy_cache_index_needs_its_blobs_not_child_manifests(b: Backend) {
    for name in ["cache-legacy-oci", "cache-legacy-docker"] {
        let Some(s) = TestServer::start_in(b).await else {
            return;
        };
        let recs = parse_headers(
            &fixtures()
                .join("layouts")
                .join(format!("{name}.headers.txt")),
        );
        let (repo, tag) = repo_tag(&recs[0].path);
        let body = std::fs::read(blob_file(&layout(name), &recs[0].digest)).unwrap();
        // Before the blobs: refused, naming a missing blob.
        let r = put_manifest(&s.url, &repo, &tag, &recs[0].content_type, &body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
        // After the blobs (no child manifests exist or are needed): accepted.
        let recs = replay_push(&s.url, name).await;
        verify_pull(&s.url, name, &recs).await;
        s.stop().await;
    }
}

async fn import_flow_head_by_tag_then_get_by_digest(b: Backend) {
    // traffic/02, 21, v032-*-import: HEAD the cache tag with the full Accept list, then GET the
    // manifest by digest, then the cache config and layers by digest.
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let recs = replay_push(&s.url, "cache-manifest").await;
    let r = http()
        .head(format!("{}{}", s.url, recs[0].path))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let digest = hdr(&r, "docker-content-digest");
    let (repo, _) = repo_tag(&recs[0].path);
    let r = http()
        .get(format!(
            "{}/v2/{repo}/manifests/{digest}?ns=127.0.0.1",
            s.url
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json, */*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.buildkit.cacheconfig.v0"
    );
    let cfg = m["config"]["digest"].as_str().unwrap();
    let r = http()
        .get(format!("{}/v2/{repo}/blobs/{cfg}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn import_then_push_to_a_new_repository_mounts() {
    // traffic/03: blobs of app/image are mounted into app-copy with ?mount=&from=.
    let s = TestServer::start().await;
    replay_push(&s.url, "app-image").await;
    let dir = layout("app-image");
    let mut mounted = 0;
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let d = format!("sha256:{}", e.unwrap().file_name().to_string_lossy());
        let r = http()
            .post(format!(
                "{}/v2/app-copy/blobs/uploads/?mount={d}&from=app/image",
                s.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(hdr(&r, "location"), format!("/v2/app-copy/blobs/{d}"));
        mounted += 1;
    }
    assert_eq!(mounted, 5);
    let recs = parse_headers(&fixtures().join("layouts/app-image.headers.txt"));
    let body = std::fs::read(blob_file(&dir, &recs[0].digest)).unwrap();
    let r = put_manifest(&s.url, "app-copy", "1", &recs[0].content_type, &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.stop().await;
}

#[test]
fn vendored_fixtures_match_the_shared_originals() {
    let shared = repo_root().join("../shared/fixtures/buildkit");
    if !shared.is_dir() {
        eprintln!("shared/fixtures not next to the repository; comparing nothing");
        return;
    }
    for sub in ["layouts", "traffic"] {
        let a = snapshot(&shared.join(sub));
        let b = snapshot(&fixtures().join(sub));
        assert!(!a.is_empty());
        assert_eq!(a, b, "tests/fixtures/buildkit/{sub} differs from shared/");
    }
}

// The BuildKit replays on a directory and on a bucket of a real Garage cluster.
on_both_backends!(
    every_buildkit_export_round_trips_byte_for_byte,
    legacy_cache_index_needs_its_blobs_not_child_manifests,
    import_flow_head_by_tag_then_get_by_digest,
);
