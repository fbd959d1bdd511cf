//! The distribution-spec API through reqwest: every endpoint, every error code.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn hdr<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn base_endpoint(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let r = http().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "docker-distribution-api-version"), "registry/2.0");
    let r = http().get(format!("{}/v2", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http().get(format!("{}/nope", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn monolithic_and_session_uploads(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let data = bytes(100_000, 1);
    let d = push_blob(&s.url, "a/b/c", &data).await;

    let r = http()
        .head(format!("{}/v2/a/b/c/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "content-length"), "100000");
    assert_eq!(hdr(&r, "docker-content-digest"), d.to_string());
    let r = http()
        .get(format!("{}/v2/a/b/c/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    // POST a session, then PUT the whole body to its Location.
    let data2 = bytes(5000, 2);
    let d2 = sha256(&data2);
    let r = http()
        .post(format!("{}/v2/x/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = hdr(&r, "location").to_owned();
    assert!(loc.starts_with("/v2/x/blobs/uploads/"), "{loc}");
    assert!(!hdr(&r, "docker-upload-uuid").is_empty());
    assert_eq!(hdr(&r, "range"), "0-0");
    let r = http()
        .put(format!("{}{loc}?digest={d2}", s.url))
        .body(data2.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(hdr(&r, "location"), format!("/v2/x/blobs/{d2}"));
    assert_eq!(hdr(&r, "docker-content-digest"), d2.to_string());
    assert!(s.leftovers().await.is_empty(), "{:?}", s.leftovers().await);
    if b == Backend::Dir {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(s.dir.join("blobs/sha256").join(d2.hex()))
                .unwrap()
                .permissions(),
        );
        assert_eq!(
            mode & 0o044,
            0o044,
            "blobs are readable by others: {mode:o}"
        );
    }
    s.stop().await;
}

async fn chunked_upload_in_order_out_of_order_status_and_resume(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let data = bytes(10_000, 3);
    let d = sha256(&data);
    let r = http()
        .post(format!("{}/v2/chunky/blobs/uploads/", s.url))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    let loc = hdr(&r, "location").to_owned();

    // Out of order first: 416, nothing written.
    let r = http()
        .patch(format!("{}{loc}", s.url))
        .header("Content-Range", "4000-9999")
        .body(data[4000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let r = http()
        .patch(format!("{}{loc}", s.url))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "0-3999")
        .body(data[..4000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(hdr(&r, "range"), "0-3999");
    let loc2 = hdr(&r, "location").to_owned();

    // Retrying the same chunk is out of order now.
    let r = http()
        .patch(format!("{}{loc}", s.url))
        .header("Content-Range", "0-3999")
        .body(data[..4000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");

    // Status.
    let r = http().get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(hdr(&r, "range"), "0-3999");
    assert!(!hdr(&r, "location").is_empty());

    // A chunk without Content-Range (docker's streamed PATCH) appends.
    let r = http()
        .patch(format!("{}{loc2}", s.url))
        .body(data[4000..7000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(hdr(&r, "range"), "0-6999");

    // Final chunk with the closing PUT; the Location already carrying a query is fine.
    let r = http()
        .put(format!("{}{loc2}?foo=bar&digest={d}", s.url))
        .header("Content-Range", "7000-9999")
        .body(data[7000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = http()
        .get(format!("{}/v2/chunky/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[..]);
    // The session is gone.
    let r = http().get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(s.leftovers().await.is_empty());
    s.stop().await;
}

async fn digest_mismatch_stores_nothing(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let data = bytes(1000, 4);
    let wrong = sha256(b"something else");
    let r = http()
        .post(format!("{}/v2/r/blobs/uploads/?digest={wrong}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    for d in [wrong, sha256(&data)] {
        let r = http()
            .head(format!("{}/v2/r/blobs/{d}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // Same through a session.
    let r = http()
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = hdr(&r, "location").to_owned();
    let r = http()
        .put(format!("{}{loc}?digest={}", s.url, sha256(b"x")))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // PUT without digest.
    let r = http()
        .post(format!("{}/v2/r/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = hdr(&r, "location").to_owned();
    let r = http().put(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = http()
        .delete(format!("{}{loc}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(s.leftovers().await.is_empty(), "{:?}", s.leftovers().await);
    assert_eq!(s.blob_hexes("sha256").await, Vec::<String>::new());
    s.stop().await;
}

async fn sha512_blobs(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let data = bytes(70_000, 5);
    let d = ferry::digest::Digest::of(ferry::digest::Algorithm::Sha512, &data);
    let r = http()
        .post(format!("{}/v2/r/blobs/uploads/?digest={d}", s.url))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http()
        .get(format!("{}/v2/r/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    assert_eq!(s.blob_hexes("sha512").await, vec![d.hex().to_owned()]);
    s.stop().await;
}

async fn cross_repo_mount(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let d = push_blob(&s.url, "src/repo", b"mount me").await;
    let r = http()
        .post(format!(
            "{}/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(hdr(&r, "location"), format!("/v2/dst/repo/blobs/{d}"));
    // Automatic cross-mount: no `from`.
    let r = http()
        .post(format!("{}/v2/third/blobs/uploads/?mount={d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Unknown blob: a fresh session instead.
    let r = http()
        .post(format!(
            "{}/v2/dst/repo/blobs/uploads/?mount={}&from=src/repo",
            s.url,
            sha256(b"nope")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(hdr(&r, "location").starts_with("/v2/dst/repo/blobs/uploads/"));
    s.stop().await;
}

async fn ranges(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let data = bytes(1000, 6);
    let d = push_blob(&s.url, "r", &data).await;
    let get = |range: &'static str| {
        let url = format!("{}/v2/r/blobs/{d}", s.url);
        async move { http().get(url).header("Range", range).send().await.unwrap() }
    };
    let r = get("bytes=10-19").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&r, "content-range"), "bytes 10-19/1000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
    let r = get("bytes=990-").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[990..]);
    let r = get("bytes=-5").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[995..]);
    let r = get("bytes=1000-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hdr(&r, "content-range"), "bytes */1000");
    let r = get("bytes=5-2").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = get("bytes=0-99999999999999999999999").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    s.stop().await;
}

async fn manifests_by_tag_and_digest_exact_bytes(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let m = push_image(&s.url, "lib/app", "v1", 7).await;
    let d = sha256(&m);
    for reference in ["v1".to_owned(), d.to_string()] {
        let r = http()
            .get(format!(
                "{}/v2/lib/app/manifests/{reference}?ns=docker.io",
                s.url
            ))
            .header("Accept", "*/*")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(hdr(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(hdr(&r, "docker-content-digest"), d.to_string());
        assert_eq!(hdr(&r, "content-length"), m.len().to_string());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
        let r = http()
            .head(format!("{}/v2/lib/app/manifests/{reference}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(hdr(&r, "content-length"), m.len().to_string());
        assert_eq!(hdr(&r, "docker-content-digest"), d.to_string());
    }
    // Accept naming another type still gets the stored bytes (never converted).
    let r = http()
        .get(format!("{}/v2/lib/app/manifests/v1", s.url))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
    // Re-pushing identical bytes by digest is fine and idempotent.
    let r = put_manifest(&s.url, "lib/app", &d.to_string(), OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(hdr(&r, "location"), format!("/v2/lib/app/manifests/{d}"));
    // Unknown tag and digest.
    let r = http()
        .get(format!("{}/v2/lib/app/manifests/nope", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = http()
        .get(format!(
            "{}/v2/lib/app/manifests/{}",
            s.url,
            sha256(b"none")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn manifest_errors(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let config = b"{}".to_vec();
    let layer = bytes(100, 8);
    push_blob(&s.url, "r", &config).await;
    // Layer not pushed: MANIFEST_BLOB_UNKNOWN, with the digest in the detail.
    let m = image_manifest(&config, &[&layer]);
    let r = put_manifest(&s.url, "r", "t", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        v["errors"][0]["detail"]["digest"],
        sha256(&layer).to_string()
    );
    // An index whose child manifest is missing.
    let idx = json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[
        {"mediaType":OCI_MANIFEST,"digest":sha256(&m).to_string(),"size":m.len()}]});
    let r = put_manifest(&s.url, "r", "i", OCI_INDEX, idx.to_string().as_bytes()).await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    // Wrong size in a descriptor.
    push_blob(&s.url, "r", &layer).await;
    let bad = String::from_utf8(m.clone())
        .unwrap()
        .replace("\"size\":100", "\"size\":101");
    let r = put_manifest(&s.url, "r", "t", OCI_MANIFEST, bad.as_bytes()).await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // Digest reference that does not match the bytes.
    let r = put_manifest(&s.url, "r", &sha256(b"other").to_string(), OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // Garbage, schema1, mismatched mediaType.
    for (body, ct) in [
        (&b"not json"[..], OCI_MANIFEST),
        (
            br#"{"schemaVersion":1,"name":"r","tag":"t","fsLayers":[]}"#,
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        (
            br#"{"schemaVersion":1,"name":"r","tag":"t","fsLayers":[]}"#,
            "application/json",
        ),
        (&m[..], OCI_INDEX),
    ] {
        let r = put_manifest(&s.url, "r", "t", ct, body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{ct}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
        if ct.contains("v1+prettyjws") {
            assert!(v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("schema1"));
        }
    }
    // Over 4 MiB.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = put_manifest(&s.url, "r", "big", OCI_MANIFEST, &big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "SIZE_INVALID");
    // Bad tag.
    let r = put_manifest(&s.url, "r", "-bad", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing of the above was recorded.
    let r = http()
        .get(format!("{}/v2/r/tags/list", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    s.stop().await;
}

async fn names_and_digests_are_validated(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let d = sha256(b"x");
    for path in [
        format!("/v2/UPPER/blobs/{d}"),
        format!("/v2/a//b/blobs/{d}"),
        format!("/v2/{}/blobs/{d}", "a".repeat(256)),
    ] {
        let r = http().get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(r).await, "NAME_INVALID", "{path}");
    }
    // Paths a normalizing client would never send, straight onto the socket.
    for path in [
        format!("/v2/a/../b/blobs/{d}"),
        format!("/v2/../../etc/blobs/{d}"),
        "/v2/a/./b/manifests/latest".to_string(),
        format!("/v2/%2e%2e/blobs/{d}"),
        format!("/v2/a%2f..%2fb/blobs/{d}"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, text) = raw_request(s.addr, req.as_bytes()).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("NAME_INVALID"), "{text}");
    }
    // A string that is not a digest names no blob, and one that is neither a tag nor a digest
    // (the conformance suite's `.INVALID_MANIFEST_NAME`) names no manifest: 404 on every read,
    // as Distribution and the conformance suite expect, not 400 (DIGEST_INVALID is for uploads
    // whose bytes disagree).
    let blob_bads = [
        "sha256:abc".to_string(),
        "md5:00".to_string(),
        "sha256:..%2f..%2fetc%2fpasswd".to_string(),
        format!("sha256:{}", "g".repeat(64)),
        d.to_string().to_uppercase(),
    ];
    let manifest_bads = [
        ".INVALID_MANIFEST_NAME",
        "sha256:totallywrong",
        "-x",
        "a%2Fb",
    ]
    .map(String::from);
    for (kind, bads, code) in [
        ("blobs", &blob_bads[..], "BLOB_UNKNOWN"),
        ("manifests", &manifest_bads[..], "MANIFEST_UNKNOWN"),
    ] {
        for bad in bads {
            for method in [Method::GET, Method::HEAD, Method::DELETE] {
                let r = http()
                    .request(method.clone(), format!("{}/v2/a/{kind}/{bad}", s.url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {kind} {bad}");
                if method != Method::HEAD {
                    assert_eq!(error_code(r).await, code, "{method} {kind} {bad}");
                }
            }
        }
    }
    // A PUT to such a reference is a bad request, not a missing thing.
    let r = http()
        .put(format!("{}/v2/a/manifests/.INVALID_MANIFEST_NAME", s.url))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The referrers API is the exception the spec names: an invalid digest there MUST be 400.
    let r = http()
        .get(format!("{}/v2/a/referrers/sha256:abc", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = http()
        .get(format!("{}/v2/a/blobs/uploads/not-a-uuid", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = http()
        .get(format!("{}/v2/a/blobs/uploads/..%2f..%2fx", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Method not allowed on an endpoint.
    let r = http()
        .post(format!("{}/v2/a/manifests/t", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    s.stop().await;
}

async fn tags_and_catalog_pagination(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let m = push_image(&s.url, "p/one", "base", 9).await;
    for t in ["c", "a", "b", "d"] {
        let r = put_manifest(&s.url, "p/one", t, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    push_image(&s.url, "p/two", "x", 10).await;
    push_image(&s.url, "a", "x", 11).await;

    let r = http()
        .get(format!("{}/v2/p/one/tags/list", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"name":"p/one","tags":["a","b","base","c","d"]}));

    let r = http()
        .get(format!("{}/v2/p/one/tags/list?n=2", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hdr(&r, "link"),
        "</v2/p/one/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let r = http()
        .get(format!("{}/v2/p/one/tags/list?n=2&last=b", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["base", "c"]));
    let r = http()
        .get(format!("{}/v2/p/one/tags/list?n=10&last=c", s.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["d"]));
    let r = http()
        .get(format!("{}/v2/p/one/tags/list?n=0", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!([]));
    let r = http()
        .get(format!("{}/v2/p/one/tags/list?n=-1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "PAGINATION_NUMBER_INVALID");

    let r = http()
        .get(format!("{}/v2/_catalog", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"repositories":["a","p/one","p/two"]}));
    let r = http()
        .get(format!("{}/v2/_catalog?n=1&last=a", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hdr(&r, "link"),
        "</v2/_catalog?n=1&last=p%2Fone>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], json!(["p/one"]));
    s.stop().await;
}

async fn referrers_and_subject(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let subject = push_image(&s.url, "ref/app", "v1", 12).await;
    let sd = sha256(&subject);
    let empty = b"{}";
    push_blob(&s.url, "ref/app", empty).await;
    let sig = b"signature".to_vec();
    push_blob(&s.url, "ref/app", &sig).await;
    let referrer = |artifact: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact,
            "config": {"mediaType":"application/vnd.oci.empty.v1+json","digest":sha256(empty).to_string(),"size":2},
            "layers": [{"mediaType":"application/octet-stream","digest":sha256(&sig).to_string(),"size":sig.len()}],
            "subject": {"mediaType":OCI_MANIFEST,"digest":sd.to_string(),"size":subject.len()},
            "annotations": {"org.example.kind": artifact},
        }))
        .unwrap()
    };
    let a = referrer("application/vnd.example.sig");
    let b = referrer("application/vnd.example.sbom");
    for m in [&a, &b] {
        let r = put_manifest(&s.url, "ref/app", &sha256(m).to_string(), OCI_MANIFEST, m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(hdr(&r, "oci-subject"), sd.to_string());
    }
    let r = http()
        .get(format!("{}/v2/ref/app/referrers/{sd}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "content-type"), OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let sig_desc = list
        .iter()
        .find(|d| d["digest"] == sha256(&a).to_string())
        .unwrap();
    assert_eq!(sig_desc["artifactType"], "application/vnd.example.sig");
    assert_eq!(sig_desc["size"], a.len());
    assert_eq!(
        sig_desc["annotations"]["org.example.kind"],
        "application/vnd.example.sig"
    );

    let r = http()
        .get(format!(
            "{}/v2/ref/app/referrers/{sd}?artifactType=application/vnd.example.sbom",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "oci-filters-applied"), "artifactType");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sha256(&b).to_string());

    // A dangling subject is allowed; referrers of something unknown is an empty index, not 404.
    let r = http()
        .get(format!(
            "{}/v2/ref/app/referrers/{}",
            s.url,
            sha256(b"unknown")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]));
    let r = http()
        .get(format!("{}/v2/ref/app/referrers/sha256:bad", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

async fn deletes(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let m = push_image(&s.url, "del", "t1", 13).await;
    let d = sha256(&m);
    put_manifest(&s.url, "del", "t2", OCI_MANIFEST, &m).await;

    let r = http()
        .delete(format!("{}/v2/del/manifests/t1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http()
        .get(format!("{}/v2/del/manifests/t1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http()
        .get(format!("{}/v2/del/manifests/t2", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http()
        .delete(format!("{}/v2/del/manifests/t1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    let r = http()
        .delete(format!("{}/v2/del/manifests/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for reference in ["t2".to_owned(), d.to_string()] {
        let r = http()
            .get(format!("{}/v2/del/manifests/{reference}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{reference}");
    }
    let r = http()
        .delete(format!("{}/v2/del/manifests/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let bd = push_blob(&s.url, "del", b"blob to delete").await;
    let r = http()
        .delete(format!("{}/v2/del/blobs/{bd}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http()
        .get(format!("{}/v2/del/blobs/{bd}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = http()
        .delete(format!("{}/v2/del/blobs/{bd}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn moving_a_tag_keeps_the_old_manifest_by_digest(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let m1 = push_image(&s.url, "mv", "latest", 14).await;
    let m2 = push_image(&s.url, "mv", "latest", 15).await;
    let r = http()
        .get(format!("{}/v2/mv/manifests/latest", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m2[..]);
    let r = http()
        .get(format!("{}/v2/mv/manifests/{}", s.url, sha256(&m1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn read_only_refuses_every_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = TestServer::start_on(&dir, false).await;
    let m = push_image(&s.url, "ro", "v1", 16).await;
    s.stop().await;
    let before = snapshot(&dir);
    let s = TestServer::start_on(&dir, true).await;
    let d = sha256(b"x");
    let attempts = [
        http().post(format!("{}/v2/ro/blobs/uploads/", s.url)),
        http()
            .post(format!("{}/v2/ro/blobs/uploads/?digest={d}", s.url))
            .body("x"),
        http()
            .put(format!("{}/v2/ro/manifests/v2", s.url))
            .header("Content-Type", OCI_MANIFEST)
            .body(m.clone()),
        http().delete(format!("{}/v2/ro/manifests/v1", s.url)),
        http().delete(format!("{}/v2/ro/blobs/{d}", s.url)),
        http().patch(format!(
            "{}/v2/ro/blobs/uploads/00000000-0000-0000-0000-000000000000",
            s.url
        )),
    ];
    for a in attempts {
        let r = a.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert!(v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("read-only"));
    }
    let r = http()
        .get(format!("{}/v2/ro/manifests/v1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
    assert_eq!(
        snapshot(&dir),
        before,
        "read-only serving changed the directory"
    );
    s.stop().await;
}

#[tokio::test]
async fn tls_client_hello_gets_an_http_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // The start of a TLS 1.2 ClientHello record.
    c.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ])
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .expect("server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.0 400"), "{text}");
    // The server still serves plain HTTP afterwards.
    let r = http().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await;
}

async fn another_writer_on_the_same_directory_is_seen_without_restart(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    push_image(&s.url, "shared", "from-server", 17).await;
    // A second store on the same directory (as `ferry sync` into a served dir would be).
    let other = s.other_store().await;
    let config = b"{\"other\":true}".to_vec();
    let layer = bytes(500, 18);
    let cfg_d = sha256(&config);
    other
        .put_blob(
            futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                config.clone(),
            ))]),
            &cfg_d,
        )
        .await
        .unwrap();
    other
        .put_blob(
            futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
                layer.clone(),
            ))]),
            &sha256(&layer),
        )
        .await
        .unwrap();
    let m = image_manifest(&config, &[&layer]);
    other
        .put_manifest(
            &ferry::reference::RepoName::parse("shared").unwrap(),
            &ferry::reference::Reference::Tag("from-other".into()),
            bytes::Bytes::from(m.clone()),
            Some(OCI_MANIFEST),
        )
        .await
        .unwrap();
    let r = http()
        .get(format!("{}/v2/shared/manifests/from-other", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m[..]);
    let r = http()
        .get(format!("{}/v2/shared/tags/list", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["from-other", "from-server"]));
    s.stop().await;
}

async fn concurrent_pushes_of_one_blob_and_many_tags(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let data = bytes(2_000_000, 19);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = s.url.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(
            async move { push_blob(&url, "conc", &data).await },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = push_image(&s.url, "conc", "base", 20).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = s.url.clone();
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            put_manifest(&url, "conc", &format!("t{i}"), OCI_MANIFEST, &m)
                .await
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    let r = http()
        .get(format!("{}/v2/conc/tags/list", s.url))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"].as_array().unwrap().len(), 21, "no tag lost: {v}");
    assert!(s.leftovers().await.is_empty());
    s.stop().await;
}

async fn health_readiness_and_metrics(b: Backend) {
    let Some(s) = TestServer::start_in(b).await else {
        return;
    };
    let r = http()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http()
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let data = bytes(1000, 900);
    let d = push_blob(&s.url, "m/x", &data).await;
    let r = http()
        .get(format!("{}/v2/m/x/blobs/{d}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    let r = http()
        .get(format!("{}/v2/m/x/blobs/{}", s.url, sha256(b"none")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert!(hdr(&r, "content-type").starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert_eq!(
        value(r#"ferry_http_requests_total{endpoint="blob",method="GET",status="200"}"#),
        1
    );
    assert_eq!(
        value(r#"ferry_http_requests_total{endpoint="blob",method="GET",status="404"}"#),
        1
    );
    assert_eq!(
        value(r#"ferry_http_requests_total{endpoint="upload",method="POST",status="201"}"#),
        1
    );
    assert_eq!(value("ferry_bytes_received_total"), 1000);
    assert!(value("ferry_bytes_sent_total") >= 1000);
    assert_eq!(value("ferry_blobs_stored"), 1);
    assert_eq!(value("ferry_bytes_stored"), 1000);
    assert_eq!(value("ferry_upload_sessions_open"), 0);
    assert_eq!(value("ferry_auth_failures_total"), 0);
    if b == Backend::S3 {
        s.stop().await;
        return;
    }
    // Not ready when the data directory cannot take writes.
    std::fs::remove_dir_all(s.dir.join(".ferry/tmp")).unwrap();
    let r = http()
        .get(format!("{}/readyz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    std::fs::create_dir_all(s.dir.join(".ferry/tmp")).unwrap();
    s.stop().await;
}

/// Read one HTTP/1.1 response from a buffered stream: its status, and its Content-Length body
/// (none for the answer to a HEAD).
async fn read_response(
    r: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    head: bool,
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut status = 0;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).await.unwrap() > 0,
            "connection closed"
        );
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if l.starts_with("HTTP/1.1 ") {
            status = l[9..12].parse().unwrap();
        } else if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; if head { 0 } else { len }];
    r.read_exact(&mut body).await.unwrap();
    (status, body)
}

/// Blob downloads on plain HTTP/1.1 go out with sendfile (server::zerocopy), their bytes standing
/// for file regions queued per connection. Pipelined requests on one keep-alive connection —
/// whole blobs, ranges, a manifest and an error between them — must each get exactly their own
/// bytes, in order, whatever the server had queued when the next request arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_downloads_on_one_connection_get_their_own_bytes() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    let big = bytes(9 << 20, 71); // more than two 4 MiB frames
    let small = bytes(1000, 72);
    let d_big = push_blob(&s.url, "p", &big).await;
    let d_small = push_blob(&s.url, "p", &small).await;
    let m = push_image(&s.url, "p", "t", 73).await;
    let missing = sha256(b"not here");
    let reqs = [
        (format!("GET /v2/p/blobs/{d_big}"), None, 200, big.clone()),
        (
            format!("GET /v2/p/blobs/{d_small}"),
            None,
            200,
            small.clone(),
        ),
        ("GET /v2/p/manifests/t".to_string(), None, 200, m.clone()),
        (format!("GET /v2/p/blobs/{missing}"), None, 404, vec![]),
        (
            format!("GET /v2/p/blobs/{d_big}"),
            Some("bytes=4194000-8389000"),
            206,
            big[4194000..=8389000].to_vec(),
        ),
        (format!("HEAD /v2/p/blobs/{d_big}"), None, 200, vec![]),
        (
            format!("GET /v2/p/blobs/{d_small}"),
            Some("bytes=-10"),
            206,
            small[990..].to_vec(),
        ),
        (format!("GET /v2/p/blobs/{d_big}"), None, 200, big.clone()),
    ];
    let mut wire = String::new();
    for (line, range, _, _) in &reqs {
        wire.push_str(&format!("{line} HTTP/1.1\r\nHost: x\r\n"));
        if let Some(r) = range {
            wire.push_str(&format!("Range: {r}\r\n"));
        }
        wire.push_str("\r\n");
    }
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(wire.as_bytes()).await.unwrap(); // all at once: pipelined
    let mut r = tokio::io::BufReader::new(c);
    for (line, range, status, want) in &reqs {
        let (st, body) = read_response(&mut r, line.starts_with("HEAD")).await;
        assert_eq!(st, *status, "{line} {range:?}");
        if *status != 404 {
            assert!(
                body == *want,
                "{line} {range:?}: wrong bytes ({} bytes)",
                body.len()
            );
        }
    }
    drop(r);
    s.stop().await;
}

// Every test above, on a directory and on a bucket of a real Garage cluster, with the same
// expectations.
on_both_backends!(
    base_endpoint,
    monolithic_and_session_uploads,
    chunked_upload_in_order_out_of_order_status_and_resume,
    digest_mismatch_stores_nothing,
    sha512_blobs,
    cross_repo_mount,
    ranges,
    manifests_by_tag_and_digest_exact_bytes,
    manifest_errors,
    names_and_digests_are_validated,
    tags_and_catalog_pagination,
    referrers_and_subject,
    deletes,
    moving_a_tag_keeps_the_old_manifest_by_digest,
    another_writer_on_the_same_directory_is_seen_without_restart,
    concurrent_pushes_of_one_blob_and_many_tags,
    health_readiness_and_metrics,
);
