//! `ferry sync` and `ferry inventory`: Distribution as the connected registry, directories,
//! a running ferry, deltas, corruption, and a kill -9 in the middle of a large blob.

use std::path::{Path, PathBuf};

use ferry::location::Location;
use ferry::sync::{sync, Quiet};

use crate::common::*;
use crate::common::{sync_opts as opts, sync_run as run};
use crate::fixtures::{replay_push, verify_pull, RECORDED};

fn fixture_bytes(name: &str, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(
        fixtures()
            .join("layouts")
            .join(name)
            .join("blobs/sha256")
            .join(hex),
    )
    .unwrap()
}

fn headers_of(name: &str) -> Vec<crate::fixtures::Recorded> {
    crate::fixtures::parse_headers_pub(
        &fixtures()
            .join("layouts")
            .join(format!("{name}.headers.txt")),
    )
}

/// Every recorded manifest of every fixture is in `dir`, byte for byte, and tagged REPO:TAG.
fn assert_dir_holds_fixtures(dir: &Path) {
    let index = std::fs::read_to_string(dir.join("index.json")).unwrap();
    for name in RECORDED {
        let recs = headers_of(name);
        for r in &recs {
            let got = std::fs::read(
                dir.join("blobs/sha256")
                    .join(r.digest.strip_prefix("sha256:").unwrap()),
            )
            .unwrap_or_else(|_| panic!("{name}: {} missing", r.digest));
            assert!(
                got == fixture_bytes(name, &r.digest),
                "{name}: {} differs",
                r.digest
            );
        }
        let tag = recs[0]
            .path
            .strip_prefix("/v2/")
            .unwrap()
            .replace("/manifests/", ":");
        assert!(
            index.contains(&format!("\"{tag}\"")),
            "index.json lacks {tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_to_dir_to_ferry_to_distribution_byte_for_byte() {
    let Some(d1) = tokio::task::spawn_blocking(Distribution::start)
        .await
        .unwrap()
    else {
        return;
    };
    for name in RECORDED {
        let recs = replay_push(&d1.url, name).await;
        verify_pull(&d1.url, name, &recs).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("usb");
    let dir_s = dir.display().to_string();

    // 1. Registry (whole catalog) -> directory.
    let s = run(&format!("docker://{}", d1.host), &dir_s, &opts()).await;
    assert!(s.failed.is_empty(), "{s}");
    assert_eq!(s.roots, RECORDED.len());
    assert_eq!(s.tags_published, RECORDED.len());
    assert_dir_holds_fixtures(&dir);
    assert!(leftovers(&dir).is_empty());
    // A second run copies nothing and says so.
    let again = run(&format!("docker://{}", d1.host), &dir_s, &opts()).await;
    assert!(again.copied_nothing(), "{again}");
    assert_eq!(again.bytes_transferred, 0);

    // skopeo reads the directory as an OCI layout (image refs).
    if let Some(skopeo) = tool("skopeo", &["/usr/bin/skopeo"]) {
        for (r, digest) in [
            (
                "app/image:1",
                "sha256:9b1e1d811b925db36eb99df1883069692e59ea5c4aeaf001181bfb8ddea3f0fd",
            ),
            (
                "app/buildx:1",
                "sha256:422ea3734cd86fca753c5cdbe1be49894444bdd60f96c410a7223da18ed9f1cb",
            ),
        ] {
            let out = std::process::Command::new(&skopeo)
                .args(["inspect", "--raw", &format!("oci:{dir_s}:{r}")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(sha256(&out.stdout).to_string(), digest);
        }
    }

    // 2. Directory -> a running ferry.
    let srv = TestServer::start().await;
    let s = run(&dir_s, &format!("docker://{}", srv.host()), &opts()).await;
    assert!(s.failed.is_empty(), "{s}");
    for name in RECORDED {
        verify_pull(&srv.url, name, &headers_of(name)).await;
    }
    let again = run(&dir_s, &format!("docker://{}", srv.host()), &opts()).await;
    assert!(again.copied_nothing(), "{again}");

    // 3. ferry -> a second Distribution, registry to registry.
    let Some(d2) = tokio::task::spawn_blocking(Distribution::start)
        .await
        .unwrap()
    else {
        return;
    };
    let s = run(
        &format!("docker://{}", srv.host()),
        &format!("docker://{}", d2.host),
        &opts(),
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    for name in RECORDED {
        verify_pull(&d2.url, name, &headers_of(name)).await;
    }
    srv.stop().await;
}

/// Copy a fixture layout to a writable temp dir.
fn copy_layout(name: &str, to: &Path) {
    std::fs::create_dir_all(to.join("blobs/sha256")).unwrap();
    let from = fixtures().join("layouts").join(name);
    for f in ["oci-layout", "index.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    for e in std::fs::read_dir(from.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let t = to.join("blobs/sha256").join(e.file_name());
        std::fs::copy(e.path(), &t).unwrap();
        let mut p = std::fs::metadata(&t).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o644);
        std::fs::set_permissions(&t, p).unwrap();
    }
}

#[tokio::test]
async fn a_flipped_byte_is_detected_named_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_layout("cache-legacy-oci", &src);
    let bad = "6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc";
    let p = src.join("blobs/sha256").join(bad);
    let mut b = std::fs::read(&p).unwrap();
    b[100] ^= 0x01;
    std::fs::write(&p, b).unwrap();

    // Into a directory.
    let dst = tmp.path().join("dst");
    let s = run(
        &src.display().to_string(),
        &dst.display().to_string(),
        &opts(),
    )
    .await;
    assert_eq!(s.failed.len(), 1, "{s}");
    assert!(
        s.failed[0].contains(bad),
        "the corrupt digest is named: {s}"
    );
    assert!(
        !dst.join("blobs/sha256").join(bad).exists(),
        "corrupt blob written"
    );
    let index = std::fs::read_to_string(dst.join("index.json")).unwrap();
    assert!(
        !index.contains("cache/legacy-oci:cache"),
        "tag published over corrupt content"
    );
    assert!(!dst
        .join(".ferry/partial")
        .join(format!("sha256-{bad}"))
        .exists());

    // Into a registry.
    let srv = TestServer::start().await;
    let s = run(
        &src.display().to_string(),
        &format!("docker://{}", srv.host()),
        &opts(),
    )
    .await;
    assert_eq!(s.failed.len(), 1, "{s}");
    assert!(s.failed[0].contains(bad), "{s}");
    let r = http()
        .head(format!(
            "{}/v2/cache/legacy-oci/blobs/sha256:{bad}",
            srv.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let r = http()
        .get(format!("{}/v2/cache/legacy-oci/manifests/cache", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    srv.stop().await;
}

async fn push_layers(url: &str, repo: &str, tag: &str, config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    push_blob(url, repo, config).await;
    for l in layers {
        push_blob(url, repo, l).await;
    }
    let m = image_manifest(config, layers);
    let r = put_manifest(
        url,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    )
    .await;
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    m
}

fn blob_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn delta_trip_inventory_have_apply() {
    let online = TestServer::start().await;
    let base = bytes(200_000, 60);
    let deps = bytes(300_000, 61);
    push_layers(&online.url, "app", "v1", b"{\"v\":1}", &[&base, &deps]).await;

    let tmp = tempfile::tempdir().unwrap();
    let offline = tmp.path().join("offline");
    let off_s = offline.display().to_string();
    run(&format!("docker://{}/app", online.host()), &off_s, &opts()).await;

    // The offline side says what it has.
    let have = tmp.path().join("have.txt");
    let loc = Location::parse(&off_s).unwrap();
    let place = ferry::sync::Place::open(&loc, &Default::default(), false)
        .await
        .unwrap();
    let digests = place.inventory(&loc).await.unwrap();
    std::fs::write(&have, ferry::sync::format_inventory(&loc, &digests)).unwrap();

    // A new version shares the base layer.
    let app = bytes(50_000, 62);
    let m2 = push_layers(
        &online.url,
        "app",
        "v2",
        b"{\"v\":2}",
        &[&base, &deps, &app],
    )
    .await;

    // Online: write a delta with only what the offline side lacks.
    let delta = tmp.path().join("delta");
    let mut o = opts();
    o.have =
        Some(ferry::sync::parse_digest_list(&std::fs::read_to_string(&have).unwrap()).unwrap());
    let s = run(
        &format!("docker://{}/app", online.host()),
        &delta.display().to_string(),
        &o,
    )
    .await;
    assert!(s.failed.is_empty(), "{s}");
    let files = blob_files(&delta);
    let m1 = image_manifest(b"{\"v\":1}", &[&base, &deps]);
    let expect: Vec<String> = {
        let mut v = vec![
            sha256(b"{\"v\":2}").hex().to_owned(),
            sha256(&app).hex().to_owned(),
            sha256(&m2).hex().to_owned(),
            sha256(&m1).hex().to_owned(),
        ];
        v.sort();
        v
    };
    // The new config and layer, and the manifests (which always travel: the offline side needs
    // them to walk the graph); none of the blobs listed in --have.
    assert_eq!(files, expect);
    assert_eq!(s.bytes_copied, (b"{\"v\":2}".len() + app.len()) as u64);

    // Applying it to a destination that lacks the base fails before any tag changes.
    let wrong = tmp.path().join("wrong");
    let wrong_srv = TestServer::start().await;
    for dst in [
        wrong.display().to_string(),
        format!("docker://{}", wrong_srv.host()),
    ] {
        let err = sync(
            &Location::parse(&delta.display().to_string()).unwrap(),
            &Location::parse(&dst).unwrap(),
            &opts(),
            &Quiet,
        )
        .await
        .expect_err("applying a delta to the wrong destination must fail");
        let msg = err.to_string();
        assert!(
            msg.contains(&sha256(&base).to_string()) && msg.contains(&sha256(&deps).to_string()),
            "{msg}"
        );
    }
    assert!(
        !wrong.join("index.json").exists()
            || !std::fs::read_to_string(wrong.join("index.json"))
                .unwrap()
                .contains("app:v2")
    );
    let r = http()
        .get(format!("{}/v2/app/tags/list", wrong_srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);

    // Applying it to the right one completes it.
    let s = run(&delta.display().to_string(), &off_s, &opts()).await;
    assert!(s.failed.is_empty(), "{s}");
    let got = std::fs::read(offline.join("blobs/sha256").join(sha256(&m2).hex())).unwrap();
    assert_eq!(got, m2);
    let srv = TestServer::start_on(&offline, true).await;
    let r = http()
        .get(format!("{}/v2/app/manifests/v2", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &m2[..]);
    for blob in [&base, &deps, &app] {
        let r = http()
            .get(format!("{}/v2/app/blobs/{}", srv.url, sha256(blob)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
    }
    srv.stop().await;
    wrong_srv.stop().await;
    online.stop().await;
}

/// A TCP proxy that slows the server-to-client direction to about `bytes_per_sec`.
pub(crate) async fn throttling_proxy(
    upstream: std::net::SocketAddr,
    bytes_per_sec: u64,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let micros = n as u64 * 1_000_000 / bytes_per_sec;
                    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    addr
}

fn ferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_blob_then_resume_with_range() {
    let srv = TestServer::start().await;
    let big = bytes(256 * 1024 * 1024, 70);
    let big_d = sha256(&big);
    push_layers(&srv.url, "big/app", "1", b"{\"big\":true}", &[&big]).await;
    drop(big);
    // ~64 MiB/s through the proxy: the 256 MiB layer takes about four seconds.
    let proxy = throttling_proxy(srv.addr, 64 * 1024 * 1024).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dst");
    let src = format!("docker://{proxy}/big/app:1");
    let partial = dir
        .join(".ferry/partial")
        .join(format!("sha256-{}", big_d.hex()));

    let mut child = std::process::Command::new(ferry_bin())
        .args(["sync", "--json", &src, &dir.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if len >= 64 * 1024 * 1024 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "sync finished before it could be killed"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < 256 * 1024 * 1024);
    assert!(
        !dir.join("blobs/sha256").join(big_d.hex()).exists(),
        "an incomplete blob is never visible"
    );

    // The rerun continues from the partial file.
    let out = std::process::Command::new(ferry_bin())
        .args(["sync", "--json", &src, &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let transferred = v["bytes_transferred"].as_u64().unwrap();
    let resumed = v["bytes_resumed"].as_u64().unwrap();
    assert!(resumed >= 64 * 1024 * 1024, "{v}");
    assert!(
        transferred < 256 * 1024 * 1024,
        "rerun transferred {transferred} bytes: {v}"
    );
    let d = ferry::layout::hash_file(
        &dir.join("blobs/sha256").join(big_d.hex()),
        ferry::digest::Algorithm::Sha256,
    )
    .unwrap();
    assert_eq!(d, big_d);
    assert!(!partial.exists());
    srv.stop().await;
}

#[test]
fn bad_arguments_exit_2_and_failures_exit_1() {
    let out = std::process::Command::new(ferry_bin())
        .args(["sync", "docker://", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(ferry_bin())
        .args(["sync", "--jobs", "0", "a", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(ferry_bin())
        .args([
            "sync",
            &tmp.path().join("not-a-layout").display().to_string(),
            &tmp.path().join("d").display().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(ferry_bin())
        .args([
            "sync",
            "docker://127.0.0.1:9/x:1",
            &tmp.path().join("d").display().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn platform_narrows_image_indexes_but_never_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // app/buildx:1 is an index: linux/amd64 image + an unknown/unknown attestation of it.
    copy_layout("app-buildx", &src);
    let dst = tmp.path().join("dst");
    let mut o = opts();
    o.platforms = vec!["linux/amd64".parse().unwrap()];
    let s = run(&src.display().to_string(), &dst.display().to_string(), &o).await;
    assert!(s.failed.is_empty(), "{s}");
    let srv = TestServer::start_on(&dst, true).await;
    let r = http()
        .get(format!("{}/v2/app/buildx/manifests/1", srv.url))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        "sha256:422ea3734cd86fca753c5cdbe1be49894444bdd60f96c410a7223da18ed9f1cb",
        "the tag names the index, as at the source"
    );
    // The amd64 image and BuildKit's attestation of it both travel.
    for d in [
        "sha256:9b1e1d811b925db36eb99df1883069692e59ea5c4aeaf001181bfb8ddea3f0fd",
        "sha256:743cdbc8e1c3ff59034911d2a419c949a710428f8f8ce9148235edfc422d65f8",
    ] {
        let r = http()
            .get(format!("{}/v2/app/buildx/manifests/{d}", srv.url))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{d}");
    }
    srv.stop().await;
    // No such platform: a clear failure, nothing published.
    let dst2 = tmp.path().join("dst2");
    o.platforms = vec!["linux/riscv64".parse().unwrap()];
    let s = run(&src.display().to_string(), &dst2.display().to_string(), &o).await;
    assert_eq!(s.failed.len(), 1);
    assert!(s.failed[0].contains("linux/riscv64"), "{s}");

    // A legacy cache index is copied whole whatever --platform says.
    let csrc = tmp.path().join("csrc");
    copy_layout("cache-legacy-oci", &csrc);
    let cdst = tmp.path().join("cdst");
    o.platforms = vec!["linux/arm64".parse().unwrap()];
    let s = run(&csrc.display().to_string(), &cdst.display().to_string(), &o).await;
    assert!(s.failed.is_empty(), "{s}");
    assert_eq!(s.blobs_copied, 4);
    assert!(cdst
        .join("blobs/sha256/f99accf04758e8e54101fa248a0ebe52d6f14024c74d8328b861bef0db6142e1")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_dry_run_and_plain_output_from_the_command_line() {
    let srv = TestServer::start().await;
    for (repo, tag, seed) in [
        ("sel/a", "1.0", 90),
        ("sel/a", "1.1", 91),
        ("sel/a", "cache", 92),
        ("sel/b", "1.0", 93),
    ] {
        push_image(&srv.url, repo, tag, seed).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(ferry_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tags_in = |dir: &Path| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut t: Vec<String> = v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        t.sort();
        t
    };
    let reg = format!("docker://{}", srv.host());

    // --dry-run: says what it would copy, with sizes, writes nothing.
    let d0 = tmp.path().join("dry");
    let (out, err) = ferry(&[
        "sync",
        "--dry-run",
        "--json",
        &reg,
        &d0.display().to_string(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["blobs_copied"], 8, "{v}");
    assert!(v["bytes_copied"].as_u64().unwrap() > 4 * 3000, "{v}");
    assert!(!d0.exists(), "dry run wrote {}", d0.display());
    assert!(err.is_empty() || !err.contains("error"), "{err}");

    // --tags REGEX over the whole catalog.
    let d1 = tmp.path().join("tags");
    let (_, err) = ferry(&[
        "sync",
        "--tags",
        r"^1\.\d+$",
        &reg,
        &d1.display().to_string(),
    ]);
    assert_eq!(tags_in(&d1), vec!["sel/a:1.0", "sel/a:1.1", "sel/b:1.0"]);
    // Not a terminal: one plain line per blob, then the summary.
    assert!(
        err.lines()
            .filter(|l| l.starts_with("copied sha256:"))
            .count()
            >= 3,
        "{err}"
    );
    assert!(err.contains("3 tag(s) published"), "{err}");

    // --refs-file with comments, plus --ref.
    let d2 = tmp.path().join("refs");
    let refs = tmp.path().join("refs.txt");
    std::fs::write(&refs, "# what to carry\nsel/a:cache\n\n").unwrap();
    ferry(&[
        "sync",
        "--refs-file",
        &refs.display().to_string(),
        "--ref",
        "sel/b",
        &reg,
        &d2.display().to_string(),
    ]);
    assert_eq!(tags_in(&d2), vec!["sel/a:cache", "sel/b:1.0"]);
    // And again: nothing to copy, said plainly.
    let (_, err) = ferry(&[
        "sync",
        "--refs-file",
        &refs.display().to_string(),
        "--ref",
        "sel/b",
        &reg,
        &d2.display().to_string(),
    ]);
    assert!(err.contains("nothing to copy"), "{err}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_caches_and_names_missing_and_corrupt_blobs() {
    // Straight on the (read-only) fixture: nothing may be created in a source.
    let fixture = fixtures().join("layouts/cache-legacy-oci");
    let before = snapshot(&fixture);
    let reports = ferry::check::check(
        &Location::parse(&fixture.display().to_string()).unwrap(),
        &[],
        &[],
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r.ok(), "{r}");
    assert_eq!(
        (r.kind.as_str(), r.cache_records, r.cache_layers, r.blobs),
        ("cache", Some(6), Some(3), 4)
    );
    assert_eq!(snapshot(&fixture), before);
    assert!(
        !fixture.join(".ferry").exists(),
        "check wrote into its source"
    );

    // Through a registry, the image-manifest cache and the multi-arch image.
    let srv = TestServer::start().await;
    for name in ["cache-manifest", "app-buildx"] {
        replay_push(&srv.url, name).await;
    }
    let reports = ferry::check::check(
        &Location::parse(&format!("docker://{}", srv.host())).unwrap(),
        &[],
        &[],
        &Default::default(),
    )
    .await
    .unwrap();
    let kinds: Vec<(&str, bool)> = reports.iter().map(|r| (r.kind.as_str(), r.ok())).collect();
    assert_eq!(kinds, vec![("index", true), ("cache", true)], "{reports:?}");
    srv.stop().await;

    // A damaged copy: one blob flipped, one removed; the command exits 1 and names both.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    copy_layout("cache-manifest", &dir);
    let flipped = "6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc";
    let removed = "93d9cfdc9e95d2bcde9b6e50afcdbfca9e9434d68609a87e5430736aedea6b89";
    let p = dir.join("blobs/sha256").join(flipped);
    let mut b = std::fs::read(&p).unwrap();
    b[7] ^= 0x80;
    std::fs::write(&p, b).unwrap();
    std::fs::remove_file(dir.join("blobs/sha256").join(removed)).unwrap();
    let out = std::process::Command::new(ferry_bin())
        .args([
            "check",
            &dir.display().to_string(),
            "--ref",
            "cache/manifest:cache",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("CORRUPT sha256:{flipped}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("MISSING sha256:{removed}")),
        "{text}"
    );
}

/// `ferry ARGS` with the test cluster's S3 settings; panics with its output unless it exits 0.
fn ferry_s3(g: &Garage, args: &[&str]) -> String {
    let out = std::process::Command::new(ferry_bin())
        .args(args)
        .envs(g.envs())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tag names an index.json records.
fn tag_names(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut t: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_owned)
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usb_dir_to_bucket_to_bucket_to_dir_byte_identical_and_deltas_either_side() {
    let Some(g) = garage() else {
        return;
    };
    // A USB directory with every BuildKit shape and an image with a multi-part layer.
    let tmp = tempfile::tempdir().unwrap();
    let usb_dir = tmp.path().join("usb");
    let online = TestServer::start_on(&usb_dir, false).await;
    for name in RECORDED {
        replay_push(&online.url, name).await;
    }
    let big = bytes(12 << 20, 70);
    push_layers(&online.url, "big", "v1", b"{\"big\":1}", &[&big]).await;
    online.stop().await;
    let usb = usb_dir.display().to_string();
    let (p1, p2) = (fresh_prefix(), fresh_prefix());
    let (b1, b2) = (format!("s3://ferry/{p1}"), format!("s3://ferry/{p2}"));
    let back = tmp.path().join("back");
    let back_s = back.display().to_string();

    ferry_s3(g, &["sync", &usb, &b1]);
    ferry_s3(g, &["sync", &b1, &b2]);
    ferry_s3(g, &["sync", &b2, &back_s]);
    // Every blob byte for byte, every tag.
    let blobs = |d: &Path| {
        let mut m = std::collections::BTreeMap::new();
        for hex in blob_files(d) {
            m.insert(
                hex.clone(),
                std::fs::read(d.join("blobs/sha256").join(&hex)).unwrap(),
            );
        }
        m
    };
    assert_eq!(blobs(&back), blobs(&usb_dir));
    assert_eq!(tag_names(&back), tag_names(&usb_dir));
    // verify, check and inventory take a bucket as they take a directory.
    assert!(ferry_s3(g, &["verify", &b2]).contains("all blobs intact"));
    ferry_s3(g, &["check", &b2]);
    let inv_bucket = ferry_s3(g, &["inventory", &b2]);
    let inv_dir = ferry_s3(g, &["inventory", &back_s]);
    let digests = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(digests(&inv_bucket), digests(&inv_dir));
    assert_eq!(digests(&inv_dir).len(), blob_files(&back).len());

    // Deltas. The connected side (bucket 1) gets a new version; the offline side (bucket 2 and
    // the directory) says what it has.
    let online = TestServer::start_on(&usb_dir, false).await;
    let app = bytes(60_000, 71);
    push_layers(&online.url, "big", "v2", b"{\"big\":2}", &[&big, &app]).await;
    online.stop().await;
    ferry_s3(g, &["sync", &usb, &b1]);
    let have = tmp.path().join("have.txt");
    std::fs::write(&have, &inv_bucket).unwrap();
    // Bucket as the source of a delta: only what the far side lacks travels.
    let delta = tmp.path().join("delta");
    let delta_s = delta.display().to_string();
    ferry_s3(
        g,
        &["sync", &b1, &delta_s, "--have", have.to_str().unwrap()],
    );
    let in_delta = blob_files(&delta);
    assert!(in_delta.contains(&sha256(&app).hex().to_owned()));
    assert!(!in_delta.contains(&sha256(&big).hex().to_owned()));
    // Bucket as the destination a delta is applied to, and the directory too.
    ferry_s3(g, &["sync", &delta_s, &b2]);
    ferry_s3(g, &["sync", &delta_s, &back_s]);
    assert!(ferry_s3(g, &["verify", &b2]).contains("all blobs intact"));
    let names = ferry_s3(g, &["check", &b2]);
    assert!(names.contains("big:v2"), "{names}");
    assert_eq!(blobs(&back), blobs(&usb_dir));
}
