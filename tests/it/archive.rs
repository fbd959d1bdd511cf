//! `oci-archive:` and `docker-archive:` locations, split volumes: skopeo and dockerd read what
//! ferry writes, ferry reads what skopeo writes, a missing or corrupt volume is named and nothing
//! is published, a killed split write resumes, and `--split 4G` volumes fit FAT32.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use ferry::digest::Digest;
use ferry::layout::Store;
use ferry::location::Location;
use ferry::reference::{Reference, RepoName};
use ferry::sync::{sync, Quiet, Summary, SyncOptions};

use crate::common::sync_opts as opts;
use crate::common::*;

async fn try_run(src: &str, dst: &str, o: &SyncOptions) -> ferry::Result<Summary> {
    sync(
        &Location::parse(src).unwrap(),
        &Location::parse(dst).unwrap(),
        o,
        &Quiet,
    )
    .await
}

async fn run(src: &str, dst: &str, o: &SyncOptions) -> Summary {
    let s = try_run(src, dst, o)
        .await
        .unwrap_or_else(|e| panic!("sync {src} -> {dst}: {e}"));
    assert!(s.failed.is_empty(), "{src} -> {dst}: {s}");
    s
}

fn layout(name: &str) -> PathBuf {
    fixtures().join("layouts").join(name)
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// The tags of a directory, `REPO:TAG` → manifest digest.
async fn tags(dir: &Path) -> Vec<(String, String)> {
    let s = Store::open(dir, true).unwrap();
    let idx = s.index().await.unwrap();
    let mut out = Vec::new();
    for repo in idx.repos() {
        for t in idx.tags_of(repo) {
            let d = idx.tag(repo, t).unwrap().digest.to_string();
            out.push((format!("{repo}:{t}"), d));
        }
    }
    out.sort();
    out
}

/// Every blob file of a layout, name → sha256 of its bytes.
fn blobs(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let d = ferry::layout::hash_file(&e.path(), ferry::digest::Algorithm::Sha256).unwrap();
        out.insert(e.file_name().to_string_lossy().into_owned(), d.to_string());
    }
    out
}

fn tool_out(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A layout with one image of `layers` (pseudo-random, of these sizes) under `repo:tag`.
async fn image_dir(dir: &Path, repo: &str, tag: &str, sizes: &[usize], seed: u64) -> Digest {
    let s = Store::open(dir, false).unwrap();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layers: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| bytes(*n, seed * 100 + i as u64))
        .collect();
    for b in std::iter::once(&config).chain(layers.iter()) {
        let body = futures_util::stream::iter(
            b.chunks(1 << 20)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        s.put_blob(body, &sha256(b)).await.unwrap();
    }
    let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
    let m = image_manifest(&config, &refs);
    s.put_manifest(
        &RepoName::parse(repo).unwrap(),
        &Reference::Tag(tag.into()),
        Bytes::from(m.clone()),
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await
    .unwrap();
    sha256(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_archive_with_skopeo_both_ways_and_caches_through_ferry() {
    let skopeo = tool("skopeo", &["/usr/bin/skopeo"]);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // A dir holding an image, a multi-arch index and a legacy BuildKit cache.
    let src = t.join("src");
    for (name, tag) in [
        ("app-image", "app/image:1"),
        ("app-buildx", "app/buildx:1"),
        ("cache-legacy-oci", "cache/legacy-oci:cache"),
    ] {
        let from = format!("oci:{}", p(&layout(name)));
        let o = SyncOptions {
            refs: vec![tag.into()],
            ..opts()
        };
        run(&from, &p(&src), &o).await;
    }
    let want_tags = tags(&src).await;
    assert_eq!(want_tags.len(), 3, "{want_tags:?}");

    // ferry → archive → ferry: every tag and blob byte-identical (the cache included).
    let ar = t.join("trip.tar");
    let s = run(&p(&src), &format!("oci-archive:{}", p(&ar)), &opts()).await;
    assert_eq!(s.tags_published, 3, "{s}");
    assert!(ar.is_file() && !t.join("trip.tar.partial").exists());
    let back = t.join("back");
    run(&format!("oci-archive:{}", p(&ar)), &p(&back), &opts()).await;
    assert_eq!(tags(&back).await, want_tags);
    assert_eq!(blobs(&back), blobs(&src));
    // A finished archive is never overwritten.
    let e = try_run(&p(&src), &format!("oci-archive:{}", p(&ar)), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");

    let Some(skopeo) = skopeo else {
        return;
    };
    // skopeo reads ferry's archive: the image and the index, digests preserved.
    for (refname, want) in [
        ("app/image:1", "app/image:1"),
        ("app/buildx:1", "app/buildx:1"),
    ] {
        let raw = tool_out(
            &skopeo,
            &[
                "inspect",
                "--raw",
                &format!("oci-archive:{}:{refname}", p(&ar)),
            ],
        );
        let digest = sha256(raw.as_bytes()).to_string();
        let expected = &want_tags.iter().find(|(n, _)| n == want).unwrap().1;
        assert_eq!(&digest, expected, "{refname}");
    }
    let sk_dir = t.join("skopeo-dir");
    tool_out(
        &skopeo,
        &[
            "copy",
            "--all",
            "--preserve-digests",
            &format!("oci-archive:{}:app/buildx:1", p(&ar)),
            &format!("oci:{}:x", p(&sk_dir)),
        ],
    );
    // ferry reads skopeo's archive (a bare tag: carried under the archive's name).
    let sk_ar = t.join("from-skopeo.tar");
    tool_out(
        &skopeo,
        &[
            "copy",
            "--all",
            "--preserve-digests",
            &format!("oci:{}:app/buildx:1", p(&layout("app-buildx"))),
            &format!("oci-archive:{}:v1", p(&sk_ar)),
        ],
    );
    let in_dir = t.join("from-skopeo");
    run(&format!("oci-archive:{}", p(&sk_ar)), &p(&in_dir), &opts()).await;
    let got = tags(&in_dir).await;
    let want = &want_tags
        .iter()
        .find(|(n, _)| n == "app/buildx:1")
        .unwrap()
        .1;
    assert_eq!(got, vec![("from-skopeo:v1".to_owned(), want.clone())]);
    // And into a named repository of a registry.
    let srv = TestServer::start().await;
    run(
        &format!("oci-archive:{}", p(&sk_ar)),
        &format!("docker://{}/multi/app", srv.host()),
        &opts(),
    )
    .await;
    let r = http()
        .head(format!("{}/v2/multi/app/manifests/v1", srv.url))
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        want.as_str()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_archive_carries_only_new_blobs_and_is_checked_before_applying() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    image_dir(&src, "app", "1", &[100_000, 200_000], 1).await;
    let offline = t.join("offline");
    run(&p(&src), &p(&offline), &opts()).await;
    let have = ferry::sync::parse_digest_list(&ferry::sync::format_inventory(
        &Location::parse(&p(&offline)).unwrap(),
        &ferry::layout::Store::open(&offline, true)
            .unwrap()
            .list_content()
            .await
            .unwrap(),
    ))
    .unwrap();
    image_dir(&src, "app", "2", &[300_000], 2).await;
    let ar = t.join("delta.tar");
    let o = SyncOptions {
        have: Some(have),
        ..opts()
    };
    let s = run(&p(&src), &format!("oci-archive:{}", p(&ar)), &o).await;
    assert_eq!(s.blobs_copied, 2, "only app:2's config and layer: {s}");
    assert!(std::fs::metadata(&ar).unwrap().len() < 400_000);
    // Applied to a place without the base: refused before anything is written.
    let empty = t.join("empty");
    let e = try_run(&format!("oci-archive:{}", p(&ar)), &p(&empty), &opts())
        .await
        .unwrap_err();
    assert!(matches!(e, ferry::Error::MissingBlobs(_)), "{e}");
    assert!(tags(&empty).await.is_empty());
    // Applied to the offline side: complete.
    run(&format!("oci-archive:{}", p(&ar)), &p(&offline), &opts()).await;
    assert_eq!(tags(&offline).await, tags(&src).await);
}

fn volumes(base: &Path) -> Vec<PathBuf> {
    (0..)
        .map(|i| ferry::archive::volume_name(base, i))
        .take_while(|v| v.exists())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_volumes_missing_or_corrupt_are_named_and_a_killed_write_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    // ~210 MiB; layers larger than a volume, so members span volumes.
    let mib = 1 << 20;
    image_dir(&src, "big/app", "1", &[90 * mib, 70 * mib, 50 * mib], 7).await;
    let want = tags(&src).await;
    let base = t.join("trip.tar");
    let o = SyncOptions {
        split: Some(64 << 20),
        ..opts()
    };
    let s = run(&p(&src), &format!("oci-archive:{}", p(&base)), &o).await;
    let vols = volumes(&base);
    assert_eq!(vols.len(), 4, "{s}");
    for v in &vols {
        assert!(
            std::fs::metadata(v).unwrap().len() < 64 << 20,
            "{}",
            v.display()
        );
    }
    let index = ferry::archive::index_name(&base);
    assert!(index.is_file() && !t.join("trip.tar.index.partial").exists());
    // The index checks with sha256sum as it is.
    let st = Command::new("sha256sum")
        .current_dir(t)
        .args(["--quiet", "-c", "trip.tar.index"])
        .status()
        .unwrap();
    assert!(st.success());

    // All present: byte-identical, from the first volume or from the index.
    for from in [&vols[0], &index] {
        let out = t.join(format!(
            "out-{}",
            from.extension().unwrap().to_string_lossy()
        ));
        run(&format!("oci-archive:{}", p(from)), &p(&out), &opts()).await;
        assert_eq!(tags(&out).await, want);
        assert_eq!(blobs(&out), blobs(&src));
    }

    // One volume corrupt: named, nothing published.
    let v1 = std::fs::read(&vols[1]).unwrap();
    let mut bad = v1.clone();
    bad[12345] ^= 1;
    std::fs::write(&vols[1], &bad).unwrap();
    let dst = t.join("dst");
    let e = try_run(&format!("oci-archive:{}", p(&vols[0])), &p(&dst), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("volume trip.tar.001 is corrupt"), "{e}");
    assert!(!dst.join("index.json").exists());
    std::fs::write(&vols[1], &v1).unwrap();
    // One volume missing: named, nothing published.
    std::fs::rename(&vols[2], t.join("away")).unwrap();
    let e = try_run(&format!("oci-archive:{}", p(&index)), &p(&dst), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("volume trip.tar.002 is missing"), "{e}");
    assert!(!dst.join("index.json").exists());
    // Without the index as well: the tar ends early, said so, nothing published.
    std::fs::rename(&index, t.join("index-away")).unwrap();
    let e = try_run(&format!("oci-archive:{}", p(&vols[0])), &p(&dst), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("volume missing"), "{e}");
    assert!(!dst.join("index.json").exists());
    std::fs::rename(t.join("away"), &vols[2]).unwrap();
    std::fs::rename(t.join("index-away"), &index).unwrap();

    // kill -9 during a split write (the source throttled to ~64 MiB/s so the kill lands
    // mid-write), then the same command resumes after the finished volumes.
    let srv = TestServer::start().await;
    run(
        &p(&src),
        &format!("docker://{}/big/app", srv.host()),
        &opts(),
    )
    .await;
    let proxy = crate::sync::throttling_proxy(srv.addr, 64 * 1024 * 1024).await;
    let base2 = t.join("again.tar");
    let args = [
        "sync".to_owned(),
        "--json".to_owned(),
        "--split".to_owned(),
        "64M".to_owned(),
        format!("docker://{proxy}/big/app:1"),
        format!("oci-archive:{}", p(&base2)),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ferry::archive::volume_name(&base2, 1).exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the write finished before it could be killed"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ferry::archive::index_name(&base2).exists());
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resumed = v["archive"]["resumed_bytes"].as_u64().unwrap();
    // `.001` under its final name means volume 0 was finished and recorded before it: at least
    // that much is resumed, however soon after the kill landed (volume 1 may or may not have
    // been recorded too).
    assert!(resumed >= (64 << 20) - 512, "{v}");
    // The resumed archive is byte for byte the one written in one go.
    for (a, b) in volumes(&base2).iter().zip(volumes(&base).iter()) {
        assert_eq!(
            ferry::layout::hash_file(a, ferry::digest::Algorithm::Sha256).unwrap(),
            ferry::layout::hash_file(b, ferry::digest::Algorithm::Sha256).unwrap(),
            "{}",
            a.display()
        );
    }
    assert_eq!(volumes(&base2).len(), 4);
    assert!(leftovers(t).is_empty(), "{:?}", leftovers(t));
    srv.stop().await;
}

/// No loop-mounted FAT32 here (the kernel has no vfat), so: a trip over 4 GiB written with
/// `--split 4G` has every file below FAT32's 4 GiB − 1 limit, and reads back whole. The layer
/// is a sparse file of zeros (cheap to create; every byte is still hashed and written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_4g_volumes_fit_fat32() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    let s = Store::open(&src, false).unwrap();
    let big = (4u64 << 30) + (3 << 20);
    let sparse = t.join("zeros");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(big)
        .unwrap();
    let d = ferry::layout::hash_file(&sparse, ferry::digest::Algorithm::Sha256).unwrap();
    std::fs::rename(&sparse, src.join("blobs/sha256").join(d.hex())).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    s.put_blob(
        futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(config.clone()))]),
        &sha256(&config),
    )
    .await
    .unwrap();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": big}],
    }))
    .unwrap();
    s.put_manifest(
        &RepoName::parse("big").unwrap(),
        &Reference::Tag("1".into()),
        Bytes::from(m),
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await
    .unwrap();
    drop(s);
    let base = t.join("fat32.tar");
    let o = SyncOptions {
        split: Some(ferry::retention::parse_size("4G").unwrap()),
        ..opts()
    };
    run(&p(&src), &format!("oci-archive:{}", p(&base)), &o).await;
    let vols = volumes(&base);
    assert_eq!(vols.len(), 2);
    for v in &vols {
        let n = std::fs::metadata(v).unwrap().len();
        assert!(n < 4 << 30, "{}: {n} bytes", v.display());
    }
    let summary = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", &format!("oci-archive:{}", p(&vols[0]))])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(
        summary.status.success() && text.contains("all present and intact"),
        "{text}"
    );
}

#[test]
fn docker_archive_loads_in_dockerd_and_runs() {
    use crate::interop_docker::{import_busybox, write, Dockerd};
    let Some(d) = Dockerd::start(&[]) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let srv = rt.block_on(TestServer::start());
    let host = srv.host();
    import_busybox(&d, "busybox:ferry");
    // A multi-layer image and a second one, pushed to ferry by dockerd.
    let ctx = tempfile::tempdir().unwrap();
    d.ok(None, &["tag", "busybox:ferry", &format!("{host}/base:1")]);
    d.ok(None, &["push", &format!("{host}/base:1")]);
    let dockerfile = format!("FROM {host}/base:1\nRUN busybox echo hello > /hello\nCOPY f /f\n");
    write(ctx.path(), "Dockerfile", dockerfile.as_bytes());
    write(ctx.path(), "f", b"from the archive\n");
    let tag = format!("{host}/app:1");
    d.ok(
        Some(ctx.path()),
        &["build", "--network=host", "-t", &tag, "."],
    );
    d.ok(None, &["push", &tag]);
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("app.tar");
    let two = tmp.path().join("two.tar");
    let ferry = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ferry(&[
        "sync",
        &format!("docker://{host}/app:1"),
        &format!("docker-archive:{}", p(&one)),
    ]);
    ferry(&[
        "sync",
        &format!("docker://{host}"),
        &format!("docker-archive:{}", p(&two)),
    ]);
    // A host that never saw these images loads them and runs one.
    d.forget_everything();
    let out = d.ok(None, &["load", "-i", &p(&one)]);
    assert!(out.contains("Loaded image: app:1"), "{out}");
    let out = d.ok(
        None,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "app:1",
            "busybox",
            "cat",
            "/hello",
            "/f",
        ],
    );
    assert_eq!(out, "hello\nfrom the archive\n");
    d.forget_everything();
    let out = d.ok(None, &["load", "-i", &p(&two)]);
    assert!(
        out.contains("Loaded image: app:1") && out.contains("Loaded image: base:1"),
        "{out}"
    );
    let out = d.ok(
        None,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "base:1",
            "busybox",
            "true",
        ],
    );
    assert_eq!(out, "");
    // A cache cannot go there, and says so.
    let cache_dir = tmp.path().join("cache");
    rt.block_on(run(
        &format!("oci:{}", p(&layout("cache-legacy-oci"))),
        &p(&cache_dir),
        &opts(),
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "sync",
            &p(&cache_dir),
            &format!("docker-archive:{}", p(&tmp.path().join("c.tar"))),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("BuildKit cache"),
        "{err}"
    );
    rt.block_on(srv.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_read_only_straight_from_split_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    let m = image_dir(&src, "app", "1", &[3_000_000, 1_500_000], 11).await;
    let base = t.join("usb/trip.tar");
    let o = SyncOptions {
        split: Some(1 << 20),
        ..opts()
    };
    run(&p(&src), &format!("oci-archive:{}", p(&base)), &o).await;
    assert!(volumes(&base).len() >= 4);
    // Served as it is, read-only; a write is refused.
    let loc = Location::parse(&format!("oci-archive:{}", p(&volumes(&base)[0]))).unwrap();
    let e = Store::open_at(&loc, false).await.err().unwrap().to_string();
    assert!(e.contains("read-only"), "{e}");
    let store = Store::open_at(&loc, true).await.unwrap();
    let srv = TestServer::serve_store(
        store,
        t.join("unused"),
        ServerOpts {
            read_only: true,
            ..Default::default()
        },
    )
    .await;
    let c = http();
    let r = c
        .get(format!("{}/v2/app/manifests/1", srv.url))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let manifest = r.bytes().await.unwrap();
    assert_eq!(sha256(&manifest), m);
    let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for l in v["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let want = std::fs::read(src.join("blobs/sha256").join(&d[7..])).unwrap();
        let got = c
            .get(format!("{}/v2/app/blobs/{d}", srv.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha256(&got).to_string(), d);
        // A range across a volume boundary.
        let r = c
            .get(format!("{}/v2/app/blobs/{d}", srv.url))
            .header("range", "bytes=1048000-1049999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::PARTIAL_CONTENT);
        assert_eq!(&r.bytes().await.unwrap()[..], &want[1048000..1050000]);
    }
    let r = c
        .post(format!("{}/v2/app/blobs/uploads/", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    let r = c
        .get(format!("{}/v2/_catalog", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["repositories"],
        serde_json::json!(["app"])
    );
    srv.stop().await;
}

/// Archives come from anywhere: garbage, a tar cut short, two members with one name, a member
/// claiming more bytes than the file holds, a blob whose bytes are not its name, an index.json
/// naming what is absent. Each is named; nothing reaches the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_named_and_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    image_dir(&src, "app", "1", &[50_000], 21).await;
    let good = t.join("good.tar");
    run(&p(&src), &format!("oci-archive:{}", p(&good)), &opts()).await;
    let bytes = std::fs::read(&good).unwrap();
    let layer = v_layer(&src).await;

    let build = |name: &str, members: &[(&str, Vec<u8>)]| -> PathBuf {
        let path = t.join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (n, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_path(n).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        b.finish().unwrap();
        path
    };
    // The good archive's members, to tamper with one at a time.
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    {
        let mut ar = tar::Archive::new(&bytes[..]);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if !e.header().entry_type().is_file() {
                continue;
            }
            let n = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            members.push((n, data));
        }
    }
    let refs = |m: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> { m.to_vec() };
    let mut dup = refs(&members);
    dup.push(("index.json".into(), b"{}".to_vec()));
    let mut swapped = refs(&members);
    for (n, d) in swapped.iter_mut() {
        if n.ends_with(layer.hex()) {
            d[0] ^= 1;
        }
    }
    let mut no_layer = refs(&members);
    no_layer.retain(|(n, _)| !n.ends_with(layer.hex()));
    let garbage = t.join("garbage.tar");
    std::fs::write(&garbage, bytes::Bytes::from(vec![7u8; 4096])).unwrap();
    let cut = t.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (garbage, "archive"),
        (cut, "truncated"),
        (
            build("dup.tar", &as_slices(&dup)),
            "two members are named index.json",
        ),
        (build("swapped.tar", &as_slices(&swapped)), "hash"),
        (build("no-layer.tar", &as_slices(&no_layer)), "missing"),
        (
            build("no-layout.tar", &[("index.json", b"{}".to_vec())]),
            "no oci-layout",
        ),
    ];
    for (path, want) in cases {
        let dst = t.join(format!(
            "dst-{}",
            path.file_name().unwrap().to_string_lossy()
        ));
        let r = try_run(&format!("oci-archive:{}", p(&path)), &p(&dst), &opts()).await;
        let text = match r {
            Err(e) => e.to_string(),
            Ok(s) => s.to_string(),
        };
        assert!(text.contains(want), "{}: {text}", path.display());
        assert!(
            !dst.exists() || tags(&dst).await.is_empty(),
            "{}: published something",
            path.display()
        );
    }
}

fn as_slices(m: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    m.iter().map(|(n, d)| (n.as_str(), d.clone())).collect()
}

/// The first layer's digest of the only image in a layout.
async fn v_layer(dir: &Path) -> Digest {
    let s = Store::open(dir, true).unwrap();
    let idx = s.index().await.unwrap();
    let d = idx.tag("app", "1").unwrap().digest.clone();
    let m: serde_json::Value = serde_json::from_slice(&s.read_manifest(&d).await.unwrap()).unwrap();
    m["layers"][0]["digest"].as_str().unwrap().parse().unwrap()
}
