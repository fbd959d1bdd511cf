//! Issue #28: `--platform` narrows a multi-platform image without changing a digest: the index
//! travels byte for byte, only the chosen platforms' manifests (and BuildKit's attestations of
//! them) travel, and every reader — the mirror, verify, check, a later sync, skopeo, docker —
//! treats the index as complete for those platforms.

use ferry::digest::Digest;
use ferry::location::Location;
use ferry::sync::SyncOptions;
use serde_json::{json, Value};

use crate::common::sync_run as run;
use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The real buildx capture: its linux/amd64 image and BuildKit's provenance attestation of it.
const REAL_AMD64: (&str, usize) = (
    "sha256:9b1e1d811b925db36eb99df1883069692e59ea5c4aeaf001181bfb8ddea3f0fd",
    855,
);
const REAL_ATTESTATION: (&str, usize) = (
    "sha256:743cdbc8e1c3ff59034911d2a419c949a710428f8f8ce9148235edfc422d65f8",
    835,
);

fn opts(platforms: &str) -> SyncOptions {
    SyncOptions {
        jobs: 4,
        platforms: platforms
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap())
            .collect(),
        ..Default::default()
    }
}

/// A one-layer image for a platform (a tar holding one file naming it), pushed; its
/// descriptor for an index.
async fn push_platform_image(
    url: &str,
    repo: &str,
    os: &str,
    arch: &str,
    variant: Option<&str>,
) -> Value {
    let name = format!(
        "{os}/{arch}{}",
        variant.map(|v| format!("/{v}")).unwrap_or_default()
    );
    let mut tar = tar::Builder::new(Vec::new());
    let content = format!("built for {name}\n");
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "platform.txt", content.as_bytes())
        .unwrap();
    let layer = tar.into_inner().unwrap();
    let mut config = json!({
        "architecture": arch, "os": os,
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer).to_string()]},
        "config": {"Cmd": ["/platform.txt"]},
    });
    if let Some(v) = variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config).unwrap();
    push_blob(url, repo, &layer).await;
    push_blob(url, repo, &config).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer).to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let d = sha256(&m);
    let r = put_manifest(url, repo, &d.to_string(), OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    let mut platform = json!({"architecture": arch, "os": os});
    if let Some(v) = variant {
        platform["variant"] = v.into();
    }
    json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": m.len(), "platform": platform})
}

/// A BuildKit-style attestation manifest of `of` (unknown/unknown, keyed by digest).
async fn push_attestation(url: &str, repo: &str, of: &str) -> Value {
    let empty = b"{}";
    let statement = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2","subject":[{{"name":"x","digest":{{"sha256":"{}"}}}}],"predicate":{{}}}}"#,
        of.trim_start_matches("sha256:")
    );
    push_blob(url, repo, empty).await;
    push_blob(url, repo, statement.as_bytes()).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(empty).to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": sha256(statement.as_bytes()).to_string(), "size": statement.len(),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    }))
    .unwrap();
    let d = sha256(&m);
    let r = put_manifest(url, repo, &d.to_string(), OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": m.len(),
           "annotations": {"vnd.docker.reference.digest": of, "vnd.docker.reference.type": "attestation-manifest"},
           "platform": {"architecture": "unknown", "os": "unknown"}})
}

/// The source: `app/multi:1`, an index of four platforms — linux/amd64 is the real buildx
/// capture with its real provenance attestation; arm64/v8 (with an attestation), s390x and
/// ppc64le are built here. Returns the index's digest and each child's digest by name.
async fn populate(url: &str) -> (Digest, std::collections::BTreeMap<&'static str, String>) {
    // The real capture's blobs and manifests, into the source registry.
    let fixture = fixtures().join("layouts").join("app-buildx");
    let s = run(
        &fixture.display().to_string(),
        &format!("docker://{}", url.trim_start_matches("http://")),
        &opts(""),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    let arm64 = push_platform_image(url, "app/multi", "linux", "arm64", Some("v8")).await;
    let arm64_att = push_attestation(url, "app/multi", arm64["digest"].as_str().unwrap()).await;
    let s390x = push_platform_image(url, "app/multi", "linux", "s390x", None).await;
    let ppc = push_platform_image(url, "app/multi", "linux", "ppc64le", None).await;
    // The real children are in app/buildx; mount them into app/multi by copying the graph.
    let s = run(
        &format!(
            "docker://{}/app/buildx:1",
            url.trim_start_matches("http://")
        ),
        &format!(
            "docker://{}/app/multi:real",
            url.trim_start_matches("http://")
        ),
        &opts(""),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    let amd64 = json!({"mediaType": OCI_MANIFEST, "digest": REAL_AMD64.0, "size": REAL_AMD64.1,
                       "platform": {"architecture": "amd64", "os": "linux"}});
    let amd64_att = json!({"mediaType": OCI_MANIFEST, "digest": REAL_ATTESTATION.0, "size": REAL_ATTESTATION.1,
                           "annotations": {"vnd.docker.reference.digest": REAL_AMD64.0, "vnd.docker.reference.type": "attestation-manifest"},
                           "platform": {"architecture": "unknown", "os": "unknown"}});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [amd64, arm64.clone(), s390x.clone(), ppc.clone(), amd64_att, arm64_att.clone()],
    }))
    .unwrap();
    let r = put_manifest(url, "app/multi", "1", OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let digest_of = |v: &Value| v["digest"].as_str().unwrap().to_owned();
    let names = [
        ("amd64", REAL_AMD64.0.to_owned()),
        ("amd64-attestation", REAL_ATTESTATION.0.to_owned()),
        ("arm64", digest_of(&arm64)),
        ("arm64-attestation", digest_of(&arm64_att)),
        ("s390x", digest_of(&s390x)),
        ("ppc64le", digest_of(&ppc)),
    ]
    .into_iter()
    .collect();
    (sha256(&index), names)
}

async fn status_of(url: &str, repo: &str, reference: &str) -> (u16, Option<String>) {
    let r = http()
        .get(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    let d = r
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platforms_narrowed_keep_the_index_digest_everywhere() {
    let a = TestServer::start().await;
    let (index, child) = populate(&a.url).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trip");
    let dir_s = dir.display().to_string();
    let src = format!("docker://{}/app/multi:1", a.host());

    // 1. Narrowed to two platforms, into a directory.
    let s = run(&src, &dir_s, &opts("linux/amd64,linux/s390x")).await;
    assert!(s.failed.is_empty(), "{s}");
    assert_eq!(
        std::fs::read(dir.join("blobs/sha256").join(index.hex())).unwrap(),
        {
            let r = http()
                .get(format!("{}/v2/app/multi/manifests/1", a.url))
                .header("Accept", OCI_INDEX)
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap().to_vec()
        },
        "the index travels byte for byte"
    );
    for (name, carried) in [
        ("amd64", true),
        ("amd64-attestation", true),
        ("s390x", true),
        ("arm64", false),
        ("arm64-attestation", false),
        ("ppc64le", false),
    ] {
        let hex = child[name].trim_start_matches("sha256:");
        assert_eq!(
            dir.join("blobs/sha256").join(hex).exists(),
            carried,
            "{name} carried: {carried}"
        );
    }

    // 2. The mirror serves the index under the same digest; a platform not carried is a 404.
    let mirror = TestServer::start_on(&dir, true).await;
    assert_eq!(
        status_of(&mirror.url, "app/multi", "1").await,
        (200, Some(index.to_string()))
    );
    assert_eq!(
        status_of(&mirror.url, "app/multi", &index.to_string())
            .await
            .0,
        200
    );
    assert_eq!(
        status_of(&mirror.url, "app/multi", &child["amd64"]).await.0,
        200
    );
    let r = http()
        .get(format!(
            "{}/v2/app/multi/manifests/{}",
            mirror.url, child["arm64"]
        ))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a platform not carried");
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // The mirror's page says how many platforms are here.
    let page = http()
        .get(format!("{}/ui/tag?repo=app/multi&tag=1", mirror.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-carried=\"2\" data-of=\"4\""),
        "the page: {}",
        &page[page.find("tag-platforms").unwrap_or(0)..][..600.min(page.len())]
    );

    // 3. verify: complete for what was carried, the rest named as left out.
    let store = ferry::layout::Store::open(&dir, true).unwrap();
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false))
        .await
        .unwrap()
        .unwrap();
    assert!(v.ok(), "{v}");
    let left = &v.sparse["app/multi:1"];
    assert!(
        left.contains(&"linux/arm64/v8".to_owned()) && left.contains(&"linux/ppc64le".to_owned()),
        "{v}"
    );
    assert!(
        !left
            .iter()
            .any(|p| p.contains("amd64") || p.contains("s390x")),
        "{v}"
    );

    // GC (no grace) sweeps nothing the narrowed index reaches, and verify stays clean.
    let store = ferry::layout::Store::open(&dir, false).unwrap();
    let g = tokio::task::spawn_blocking(move || {
        ferry::gc::gc(&store, std::time::Duration::ZERO, false).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(g.swept, 0, "{g:?}");
    let store = ferry::layout::Store::open(&dir, true).unwrap();
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false))
        .await
        .unwrap()
        .unwrap();
    assert!(v.ok(), "after gc: {v}");

    // 4. check: complete, "2 of 4 platforms carried"; --platform names what must be there.
    let loc = Location::parse(&dir_s).unwrap();
    let reports = ferry::check::check(&loc, &["app/multi:1".into()], &[], &Default::default())
        .await
        .unwrap();
    assert!(reports[0].ok(), "{}", reports[0]);
    let text = reports[0].to_string();
    assert!(text.contains("2 of 4 platforms carried"), "{text}");
    assert!(
        text.contains("linux/arm64/v8") && text.contains("linux/ppc64le"),
        "{text}"
    );
    let wanted: Vec<ferry::sync::Platform> = vec![
        "linux/s390x".parse().unwrap(),
        "linux/arm64".parse().unwrap(),
    ];
    let reports = ferry::check::check(&loc, &["app/multi:1".into()], &wanted, &Default::default())
        .await
        .unwrap();
    assert!(!reports[0].ok(), "{}", reports[0]);
    assert_eq!(
        reports[0].missing,
        vec!["platform linux/arm64: not carried".to_owned()]
    );

    // 5. On from the narrowed directory (no --platform): to another directory and through an
    //    archive, the gap travels as a gap; to a registry, refused with the reason.
    let dir2 = tmp.path().join("again");
    let s = run(&dir_s, &dir2.display().to_string(), &opts("")).await;
    assert!(s.failed.is_empty(), "{s}");
    let ar = tmp.path().join("trip.tar");
    let s = run(
        &src,
        &format!("oci-archive:{}", ar.display()),
        &opts("linux/amd64,linux/s390x"),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    let dir3 = tmp.path().join("from-archive");
    let s = run(
        &format!("oci-archive:{}", ar.display()),
        &dir3.display().to_string(),
        &opts(""),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    // 6. And from the mirror serving the narrowed directory (its 404s are the gaps).
    let dir4 = tmp.path().join("from-mirror");
    let s = run(
        &format!("docker://{}/app/multi:1", mirror.host()),
        &dir4.display().to_string(),
        &opts(""),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    for d in [&dir2, &dir3, &dir4] {
        let store = ferry::layout::Store::open(d, true).unwrap();
        let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false))
            .await
            .unwrap()
            .unwrap();
        assert!(v.ok(), "{}: {v}", d.display());
        assert_eq!(v.sparse["app/multi:1"].len(), 3, "{}: {v}", d.display());
        let idx = std::fs::read_to_string(d.join("index.json")).unwrap();
        assert!(idx.contains(&index.to_string()), "{}", d.display());
    }
    // 6b. Into a ferry registry (the offline mirror): the index under the same digest, the
    //     gap recorded there too; a second run has nothing to do.
    let b = TestServer::start().await;
    let s = run(&dir_s, &format!("docker://{}", b.host()), &opts("")).await;
    assert!(s.failed.is_empty(), "{s}");
    assert_eq!(
        status_of(&b.url, "app/multi", "1").await,
        (200, Some(index.to_string()))
    );
    assert_eq!(status_of(&b.url, "app/multi", &child["s390x"]).await.0, 200);
    assert_eq!(
        status_of(&b.url, "app/multi", &child["ppc64le"]).await.0,
        404
    );
    let store = ferry::layout::Store::open(&b.dir, true).unwrap();
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false))
        .await
        .unwrap()
        .unwrap();
    assert!(v.ok(), "{v}");
    assert_eq!(v.sparse["app/multi:1"].len(), 3, "{v}");
    let again = run(&dir_s, &format!("docker://{}", b.host()), &opts("")).await;
    assert!(again.copied_nothing() && again.failed.is_empty(), "{again}");
    // A client's ordinary push of the same index (no header) is refused: its children are
    // missing there.
    let bytes = std::fs::read(dir.join("blobs/sha256").join(index.hex())).unwrap();
    let r = put_manifest(&b.url, "app/multi", "2", OCI_INDEX, &bytes).await;
    assert_eq!(r.status(), 400);
    // 6c. Into CNCF Distribution 2.8, which takes no index without its children: refused,
    //     saying why.
    if let Some(dist) = tokio::task::spawn_blocking(Distribution::start)
        .await
        .unwrap()
    {
        let s = run(&dir_s, &format!("docker://{}", dist.host), &opts("")).await;
        assert_eq!(s.failed.len(), 1, "{s}");
        assert!(s.failed[0].contains("only a ferry registry"), "{s}");
    }

    // 7. Filling the gap later: every platform, over the narrowed directory.
    let s = run(&src, &dir_s, &opts("")).await;
    assert!(s.failed.is_empty(), "{s}");
    let store = ferry::layout::Store::open(&dir, true).unwrap();
    let v = tokio::task::spawn_blocking(move || ferry::verify::verify(&store, 2, false))
        .await
        .unwrap()
        .unwrap();
    assert!(v.ok() && v.sparse.is_empty(), "{v}");
    mirror.stop().await;
}

/// skopeo and dockerd 20.10 read the narrowed index from the mirror: the carried platform by tag
/// and by the index's digest; a platform not carried fails cleanly (404, never a 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_docker_pull_a_narrowed_index_from_the_mirror() {
    let Some(skopeo) = tool("skopeo", &["/usr/bin/skopeo"]) else {
        return;
    };
    let a = TestServer::start().await;
    let (index, _) = populate(&a.url).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("trip");
    let s = run(
        &format!("docker://{}/app/multi:1", a.host()),
        &dir.display().to_string(),
        &opts("linux/amd64"),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    let mirror = TestServer::start_on(&dir, true).await;
    let host = mirror.host();
    let sk = |args: Vec<String>| {
        let skopeo = skopeo.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(&skopeo).args(&args).output()
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    let out = sk(vec![
        "inspect".into(),
        "--tls-verify=false".into(),
        "--raw".into(),
        format!("docker://{host}/app/multi:1"),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256(&out.stdout),
        index,
        "skopeo reads the index as pushed"
    );
    for r in [
        format!("docker://{host}/app/multi:1"),
        format!("docker://{host}/app/multi@{index}"),
    ] {
        let out = sk(vec![
            "inspect".into(),
            "--tls-verify=false".into(),
            "--override-os=linux".into(),
            "--override-arch=amd64".into(),
            r.clone(),
        ])
        .await;
        assert!(
            out.status.success(),
            "{r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // skopeo names the index's digest and reads the amd64 image under it.
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["Digest"], index.to_string().as_str(), "{r}");
        assert_eq!(v["Architecture"], "amd64", "{r}");
    }
    let out = sk(vec![
        "inspect".into(),
        "--tls-verify=false".into(),
        "--override-os=linux".into(),
        "--override-arch=s390x".into(),
        format!("docker://{host}/app/multi:1"),
    ])
    .await;
    assert!(!out.status.success(), "a platform not carried");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("500"), "{err}");

    let Some(d) = tokio::task::spawn_blocking(|| crate::interop_docker::Dockerd::start(&[]))
        .await
        .unwrap()
    else {
        return;
    };
    let d = std::sync::Arc::new(d);
    let pull = |args: Vec<String>| {
        let d = d.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                d.docker(&a)
            })
            .await
            .unwrap()
        }
    };
    for r in [
        format!("{host}/app/multi:1"),
        format!("{host}/app/multi@{index}"),
    ] {
        let out = pull(vec!["pull".into(), r.clone()]).await;
        assert!(
            out.status.success(),
            "docker pull {r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = pull(vec![
        "pull".into(),
        "--platform".into(),
        "linux/s390x".into(),
        format!("{host}/app/multi:1"),
    ])
    .await;
    assert!(
        !out.status.success(),
        "docker pull of a platform not carried"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("500"), "{err}");
    mirror.stop().await;
}
