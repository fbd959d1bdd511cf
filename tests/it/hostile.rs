//! The hostile-input table (issue #6): requests a careless or malicious client can send, each
//! with the status and OCI code it must get, sent as raw bytes (no client-side normalization).
//! The store is snapshotted (every file's digest) before and after: none of them may change a
//! byte of it.

use serde_json::json;

use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Case {
    what: String,
    request: Vec<u8>,
    status: u16,
    /// The OCI error code in the body (None: the HTTP layer answers, e.g. a malformed head).
    code: Option<&'static str>,
}

fn req(method: &str, path: &[u8], headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(method.as_bytes());
    r.push(b' ');
    r.extend_from_slice(path);
    r.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !has_len {
        r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

fn case(
    what: impl Into<String>,
    request: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        what: what.into(),
        request,
        status,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_the_right_answer_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A store with content: an image, an open upload session with 10 bytes, 10,000 tags.
    {
        let s = TestServer::start_on(&data, false).await;
        push_image(&s.url, "app", "v1", 3).await;
        s.stop().await;
    }
    let index_path = data.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let first = index["manifests"][0].clone();
    let mut many = Vec::new();
    for i in 0..10_000 {
        let mut d = first.clone();
        d["annotations"]["org.opencontainers.image.ref.name"] = json!(format!("many:t{i:05}"));
        d["annotations"]["io.ferry.repository"] = json!("many");
        many.push(d);
    }
    index["manifests"].as_array_mut().unwrap().extend(many);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let s = TestServer::start_on(&data, false).await;
    let r = http()
        .post(format!("{}/v2/app/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let upload = r.headers()["location"].to_str().unwrap().to_owned();
    let r = http()
        .patch(format!("{}{upload}", s.url))
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let layer = bytes(100, 1);
    let config = b"{\"c\":1}".to_vec();
    let d_layer = sha256(&layer);
    let existing = sha256(&image_manifest(b"{}", &[])); // not necessarily stored
    let hex64 = d_layer.hex().to_owned();
    let ct = |t: &str| vec![("Content-Type", t.to_owned())];
    let good_manifest = image_manifest(&config, &[&layer]);
    let mut cases = vec![
        // Names.
        case("`..` in a name", req("GET", b"/v2/../etc/tags/list", &[], b""), 400, Some("NAME_INVALID")),
        case("`%2e%2e` in a name", req("GET", b"/v2/%2e%2e/etc/tags/list", &[], b""), 400, Some("NAME_INVALID")),
        case("`//` in a name", req("GET", b"/v2/a//b/tags/list", &[], b""), 400, Some("NAME_INVALID")),
        case("absolute path as a name", req("GET", b"/v2//etc/passwd/manifests/x", &[], b""), 400, Some("NAME_INVALID")),
        case("encoded absolute path", req("GET", b"/v2/%2Fetc%2Fpasswd/manifests/x", &[], b""), 400, Some("NAME_INVALID")),
        case("upper case", req("GET", b"/v2/App/manifests/v1", &[], b""), 400, Some("NAME_INVALID")),
        case("over-long component", req("GET", format!("/v2/{}/manifests/v1", "a".repeat(300)).as_bytes(), &[], b""), 400, Some("NAME_INVALID")),
        case("over-long name", req("GET", format!("/v2/{}/manifests/v1", ["abcdefghij"; 30].join("/")).as_bytes(), &[], b""), 400, Some("NAME_INVALID")),
        case("encoded NUL", req("GET", b"/v2/a%00b/manifests/v1", &[], b""), 400, Some("NAME_INVALID")),
        case("raw NUL byte", req("GET", b"/v2/a\0b/manifests/v1", &[], b""), 400, None),
        case("non-UTF-8 byte", req("GET", b"/v2/a\xffb/manifests/v1", &[], b""), 400, None),
        case("encoded non-UTF-8", req("GET", b"/v2/a%ffb/manifests/v1", &[], b""), 400, Some("NAME_INVALID")),
        case("push to a `..` name", req("PUT", b"/v2/../x/manifests/t", &ct(OCI_MANIFEST), &good_manifest), 400, Some("NAME_INVALID")),
        case("tag climbing out", req("PUT", b"/v2/app/manifests/..%2F..%2Fetc", &ct(OCI_MANIFEST), &good_manifest), 400, Some("MANIFEST_INVALID")),
        case("upload id climbing out", req("PATCH", b"/v2/app/blobs/uploads/..%2F..%2Findex.json", &[], b"x"), 404, Some("BLOB_UPLOAD_UNKNOWN")),
        // Digests. On a read, a string that is not a digest names no blob (404, as the spec's
        // "not found" and Distribution); on a write it is a bad request.
        case("unknown algorithm", req("GET", format!("/v2/app/blobs/md5:{}", &hex64[..32]).as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("short hex", req("GET", format!("/v2/app/blobs/sha256:{}", &hex64[..63]).as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("long hex", req("GET", format!("/v2/app/blobs/sha256:{hex64}0").as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("sha512 of sha256 length", req("GET", format!("/v2/app/blobs/sha512:{hex64}").as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("upper-case hex", req("GET", format!("/v2/app/blobs/sha256:{}", hex64.to_uppercase()).as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("padded digest", req("GET", format!("/v2/app/blobs/sha256:{hex64}=").as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("space-padded digest", req("GET", format!("/v2/app/blobs/%20sha256:{hex64}").as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("not a reference, GET", req("GET", b"/v2/app/manifests/.INVALID_MANIFEST_NAME", &[], b""), 404, Some("MANIFEST_UNKNOWN")),
        case("not a reference, HEAD", req("HEAD", b"/v2/app/manifests/.INVALID_MANIFEST_NAME", &[], b""), 404, None),
        case("not a reference, DELETE", req("DELETE", b"/v2/app/manifests/.INVALID_MANIFEST_NAME", &[], b""), 404, Some("MANIFEST_UNKNOWN")),
        case("not a digest, DELETE", req("DELETE", format!("/v2/app/blobs/sha256:{}", &hex64[..10]).as_bytes(), &[], b""), 404, Some("BLOB_UNKNOWN")),
        case("bad ?digest= on push", req("POST", b"/v2/app/blobs/uploads/?digest=sha256:abc", &[], &layer), 400, Some("DIGEST_INVALID")),
        case("digest of other bytes on push", req("POST", format!("/v2/app/blobs/uploads/?digest={existing}").as_bytes(), &[], &layer), 400, Some("DIGEST_INVALID")),
        // Lengths and bodies.
        case("Content-Length beyond the body (truncated)", req("POST", format!("/v2/app/blobs/uploads/?digest={d_layer}").as_bytes(), &[("Content-Length", "1000".into())], &layer), 400, Some("BLOB_UPLOAD_INVALID")),
        case("Content-Length short of the body", req("POST", format!("/v2/app/blobs/uploads/?digest={d_layer}").as_bytes(), &[("Content-Length", "50".into())], &layer), 400, Some("DIGEST_INVALID")),
        case("two Content-Lengths", req("POST", format!("/v2/app/blobs/uploads/?digest={d_layer}").as_bytes(), &[("Content-Length", "100".into()), ("Content-Length", "99".into())], &layer), 400, None),
        case("negative Content-Length", req("POST", format!("/v2/app/blobs/uploads/?digest={d_layer}").as_bytes(), &[("Content-Length", "-1".into())], &layer), 400, None),
        case("broken chunked encoding", req("POST", format!("/v2/app/blobs/uploads/?digest={d_layer}").as_bytes(), &[("Transfer-Encoding", "chunked".into())], b"zz\r\nxx\r\n0\r\n\r\n"), 400, None),
        case("truncated manifest", req("PUT", b"/v2/app/manifests/t", &[("Content-Type", OCI_MANIFEST.into()), ("Content-Length", (good_manifest.len() + 10).to_string())], &good_manifest), 400, Some("MANIFEST_INVALID")),
        // JSON.
        case("manifest not JSON", req("PUT", b"/v2/app/manifests/t", &ct(OCI_MANIFEST), b"{not json"), 400, Some("MANIFEST_INVALID")),
        case("deeply nested JSON", req("PUT", b"/v2/app/manifests/t", &ct(OCI_MANIFEST), format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes()), 400, Some("MANIFEST_INVALID")),
        case("deeply nested objects", req("PUT", b"/v2/app/manifests/t", &ct(OCI_MANIFEST), format!("{{\"schemaVersion\":2,\"x\":{}1{}}}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).as_bytes()), 400, Some("MANIFEST_INVALID")),
        case("manifest of a missing layer", req("PUT", b"/v2/app/manifests/t", &ct(OCI_MANIFEST), &good_manifest), 400, Some("MANIFEST_BLOB_UNKNOWN")),
        case("descriptor with an invalid digest", req("PUT", b"/v2/app/manifests/t", &ct(OCI_MANIFEST), json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:../../etc","size":2},"layers":[]}).to_string().as_bytes()), 400, Some("MANIFEST_INVALID")),
        case("descriptor with a negative size", req("PUT", b"/v2/app/manifests/t", &ct(OCI_MANIFEST), json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":d_layer.to_string(),"size":-1},"layers":[]}).to_string().as_bytes()), 400, Some("MANIFEST_INVALID")),
        case("index naming a missing child", req("PUT", b"/v2/app/manifests/i", &ct(OCI_INDEX), json!({"schemaVersion":2,"mediaType":OCI_INDEX,"manifests":[{"mediaType":OCI_MANIFEST,"digest":d_layer.to_string(),"size":100}]}).to_string().as_bytes()), 400, Some("MANIFEST_BLOB_UNKNOWN")),
        case("media type disagreeing with Content-Type", req("PUT", b"/v2/app/manifests/t", &ct(OCI_INDEX), &good_manifest), 400, Some("MANIFEST_INVALID")),
        case("manifest over 4 MiB", req("PUT", b"/v2/app/manifests/big", &ct(OCI_MANIFEST), &vec![b' '; 4 * 1024 * 1024 + 1]), 413, Some("SIZE_INVALID")),
        case("manifest digest not matching its bytes", req("PUT", format!("/v2/app/manifests/{d_layer}").as_bytes(), &ct(OCI_MANIFEST), &good_manifest), 400, Some("DIGEST_INVALID")),
        // Ranges.
        case("Content-Range overflowing u64", req("PATCH", upload.as_bytes(), &[("Content-Range", "10-18446744073709551616".into())], b"x"), 416, Some("BLOB_UPLOAD_INVALID")),
        case("Content-Range overlapping what is there", req("PATCH", upload.as_bytes(), &[("Content-Range", "5-14".into())], &[2u8; 10]), 416, Some("BLOB_UPLOAD_INVALID")),
        case("Content-Range past the end", req("PATCH", upload.as_bytes(), &[("Content-Range", "20-29".into())], &[2u8; 10]), 416, Some("BLOB_UPLOAD_INVALID")),
        case("Content-Range backwards", req("PATCH", upload.as_bytes(), &[("Content-Range", "19-10".into())], &[2u8; 10]), 416, Some("BLOB_UPLOAD_INVALID")),
        // Pagination over 10,000 tags.
        case("n negative", req("GET", b"/v2/many/tags/list?n=-1", &[], b""), 400, Some("PAGINATION_NUMBER_INVALID")),
        case("n not a number", req("GET", b"/v2/many/tags/list?n=lots", &[], b""), 400, Some("PAGINATION_NUMBER_INVALID")),
        case("n overflowing", req("GET", b"/v2/many/tags/list?n=99999999999999999999999", &[], b""), 400, Some("PAGINATION_NUMBER_INVALID")),
        case("catalog n negative", req("GET", b"/v2/_catalog?n=-5", &[], b""), 400, Some("PAGINATION_NUMBER_INVALID")),
        // Methods.
        case("unknown method", req("BREW", b"/v2/app/manifests/v1", &[], b""), 405, Some("UNSUPPORTED")),
    ];
    // Ranges on a download: overflowing and backwards are unsatisfiable; overlapping
    // multi-ranges are answered with the whole blob (RFC 9110 lets a server ignore them).
    let stored = sha256(&{
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let m = std::fs::read(
            data.join("blobs/sha256").join(
                v["manifests"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:"),
            ),
        )
        .unwrap();
        m
    });
    for (range, status) in [
        ("bytes=0-18446744073709551616", 416),
        ("bytes=18446744073709551615-", 416),
        ("bytes=9-3", 416),
        ("bytes=-0", 416),
        ("bytes=0-1,1-2,0-5", 200),
    ] {
        let path = format!("/v2/app/blobs/{stored}");
        cases.push(case(
            format!("Range {range}"),
            req("GET", path.as_bytes(), &[("Range", range.into())], b""),
            status,
            None,
        ));
    }

    let before = snapshot(&data);
    assert!(
        before.contains_key("index.json") && before.len() > 5,
        "{before:?}"
    );
    let mut failures = Vec::new();
    for c in &cases {
        let truncated = c.what.contains("truncated");
        let (status, text) = raw_exchange(s.addr, &c.request, truncated).await;
        let code_ok = c
            .code
            .is_none_or(|code| text.contains(&format!("\"{code}\"")));
        if status != c.status || !code_ok {
            failures.push(format!(
                "{}: got {status}, want {} {:?}\n{}",
                c.what,
                c.status,
                c.code,
                text.chars().take(400).collect::<String>()
            ));
        }
    }
    // The pages of 10,000 tags: capped, linked, complete.
    let r = http()
        .get(format!("{}/v2/many/tags/list?n=1000000", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_owned());
    let v: serde_json::Value = r.json().await.unwrap();
    let page = v["tags"].as_array().unwrap();
    assert_eq!(page.len(), 10_000);
    assert!(link.is_none(), "all 10,000 fit the cap: {link:?}");
    let r = http()
        .get(format!("{}/v2/many/tags/list?n=3&last=t09997", s.url))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], json!(["t09998", "t09999"]));

    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let after = snapshot(&data);
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned())
        .collect();
    assert!(changed.is_empty(), "the store changed: {changed:?}");
    // And the server still works.
    let r = http()
        .get(format!("{}/v2/app/manifests/v1", s.url))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}
