//! Hostile media (issue #10): a layout from a USB disk may hold anything under a blob's name. A
//! FIFO, a socket, a directory or a symlink leaving the layout is never opened for reading (a
//! FIFO would block the reader forever), is served as absent and named by every command; a
//! symlink that stays inside the layout is followed. Index entries that name no tag are named,
//! and a location with a scheme ferry does not know is refused, never created as a directory.
//! Every command is run with a deadline, so a hang fails the test instead of stalling it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

/// Run `ferry ARGS` in `cwd`; fail the test if it has not finished within a minute.
fn ferry_bounded(args: &[&str], cwd: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "ferry {args:?} hung (killed after 60 s); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches no memory of ours.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {p:?}"
    );
}

fn blob_file(dir: &Path, d: &ferry::digest::Digest) -> PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

/// What each hostile entry is, by digest.
struct Hostile {
    dir: PathBuf,
    fifo: ferry::digest::Digest,
    outside: ferry::digest::Digest,
    directory: ferry::digest::Digest,
    socket: ferry::digest::Digest,
    inside: ferry::digest::Digest,
    inside_bytes: Vec<u8>,
    _socket: std::os::unix::net::UnixListener,
}

/// A layout with app:v1 (its layer a FIFO), app:v2 (its config a symlink to an identical file
/// outside the layout), app:v3 (its layer a symlink to a file inside the layout: fine), a
/// directory and a socket under blob names, and two index entries that name no tag.
async fn hostile_layout(tmp: &Path) -> Hostile {
    let dir = tmp.join("usb");
    let s = TestServer::start_on(&dir, false).await;
    let v1 = push_image(&s.url, "app", "v1", 11).await;
    let v2 = push_image(&s.url, "app", "v2", 12).await;
    let v3 = push_image(&s.url, "app", "v3", 13).await;
    s.stop().await;
    let m = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let digest = |v: &serde_json::Value| v["digest"].as_str().unwrap().parse().unwrap();
    let fifo: ferry::digest::Digest = digest(&m(&v1)["layers"][0]);
    let outside: ferry::digest::Digest = digest(&m(&v2)["config"]);
    let inside: ferry::digest::Digest = digest(&m(&v3)["layers"][0]);

    std::fs::remove_file(blob_file(&dir, &fifo)).unwrap();
    mkfifo(&blob_file(&dir, &fifo));

    // The same bytes, outside the layout: they would even verify. Still not served.
    let secret = tmp.join("outside-secret");
    std::fs::rename(blob_file(&dir, &outside), &secret).unwrap();
    std::os::unix::fs::symlink(&secret, blob_file(&dir, &outside)).unwrap();

    let inside_bytes = std::fs::read(blob_file(&dir, &inside)).unwrap();
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    std::fs::rename(blob_file(&dir, &inside), dir.join("elsewhere/layer")).unwrap();
    std::os::unix::fs::symlink("../../elsewhere/layer", blob_file(&dir, &inside)).unwrap();

    let directory = sha256(b"a directory");
    std::fs::create_dir(blob_file(&dir, &directory)).unwrap();
    let socket = sha256(b"a socket");
    // Bound under a short path (a socket path is limited to 108 bytes, and a long TMPDIR would
    // exceed it), then renamed into place: the name is what matters.
    let short = tempfile::Builder::new()
        .prefix("fs")
        .tempdir_in("/tmp")
        .unwrap();
    let listener = std::os::unix::net::UnixListener::bind(short.path().join("s")).unwrap();
    std::fs::rename(short.path().join("s"), blob_file(&dir, &socket)).unwrap();

    let index_path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let first = index["manifests"][0].clone();
    let mut bad1 = first.clone();
    bad1["annotations"] = json!({"org.opencontainers.image.ref.name": "not a ref"});
    let mut bad2 = first.clone();
    bad2["annotations"] = json!({"org.opencontainers.image.ref.name": "App:-v9"});
    index["manifests"].as_array_mut().unwrap().push(bad1);
    index["manifests"].as_array_mut().unwrap().push(bad2);
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    Hostile {
        dir,
        fifo,
        outside,
        directory,
        socket,
        inside,
        inside_bytes,
        _socket: listener,
    }
}

fn without_private(s: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    s.iter()
        .filter(|(k, _)| !k.starts_with(".ferry"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_hostile_media_is_absent_and_named_never_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hostile_layout(tmp.path()).await;
    let before = snapshot(&h.dir);
    for read_only in [true, false] {
        let s = TestServer::start_on(&h.dir, read_only).await;
        // A deadline on every request: a server stuck opening a FIFO fails here, not hangs.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for (d, why) in [
            (&h.fifo, "FIFO"),
            (&h.outside, "leaving the layout"),
            (&h.directory, "directory"),
            (&h.socket, "socket"),
        ] {
            let url = format!("{}/v2/app/blobs/{d}", s.url);
            let r = client.get(&url).send().await.expect("GET answered in time");
            assert_eq!(
                r.status(),
                StatusCode::NOT_FOUND,
                "GET {why} ro={read_only}"
            );
            let body = r.text().await.unwrap();
            // What the repository's manifests reference (the FIFO, the symlink) is named; a
            // name no manifest of it references (the directory, the socket) is not the
            // repository's at all, and is answered as unknown without being looked at.
            let referenced = why == "FIFO" || why == "leaving the layout";
            assert!(
                body.contains("BLOB_UNKNOWN") && (body.contains(why) || !referenced),
                "{why}: {body}"
            );
            let r = client
                .head(&url)
                .send()
                .await
                .expect("HEAD answered in time");
            assert_eq!(
                r.status(),
                StatusCode::NOT_FOUND,
                "HEAD {why} ro={read_only}"
            );
        }
        // A symlink that stays inside the layout is an ordinary blob.
        let r = client
            .get(format!("{}/v2/app/blobs/{}", s.url, h.inside))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.bytes().await.unwrap().to_vec(), h.inside_bytes);
        // The manifests themselves are fine; tags still resolve.
        let r = client
            .get(format!("{}/v2/app/manifests/v1", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        if !read_only {
            // A manifest referencing the FIFO's digest references nothing.
            let config = br#"{"c":"hostile"}"#;
            push_blob(&s.url, "x", config).await;
            let mut m: serde_json::Value =
                serde_json::from_slice(&image_manifest(config, &[b"zz"])).unwrap();
            m["layers"][0]["digest"] = json!(h.fifo.to_string());
            let r = put_manifest(
                &s.url,
                "x",
                "t",
                "application/vnd.oci.image.manifest.v1+json",
                m.to_string().as_bytes(),
            )
            .await;
            assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
        }
        drop(client); // its idle connections would hold the graceful stop
        s.stop().await;
        let after = snapshot(&h.dir);
        if read_only {
            assert_eq!(before, after, "a read-only server changed the layout");
        } else {
            // Only the blob pushed above is new.
            let (b, mut a) = (without_private(&before), without_private(&after));
            a.retain(|(k, _)| !k.ends_with(sha256(br#"{"c":"hostile"}"#).hex()));
            assert_eq!(b, a, "a server changed the hostile entries");
        }
    }
}

#[test]
fn every_command_names_hostile_media_and_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(hostile_layout(tmp.path()));
    let before = snapshot(&h.dir);
    let dir = h.dir.to_str().unwrap();
    let cwd = tmp.path();

    // check: each ref's problem by digest and kind; the skipped index entries by number and why.
    let out = ferry_bounded(&["check", dir], cwd);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{so}\n{se}");
    assert!(
        so.contains(&format!("CORRUPT {}: a FIFO, not a regular file", h.fifo)),
        "{so}"
    );
    assert!(
        so.contains(&format!(
            "CORRUPT {}: a symlink leaving the layout",
            h.outside
        )),
        "{so}"
    );
    assert!(
        so.lines()
            .any(|l| l.starts_with("app:v3:") && l.ends_with("all present and intact")),
        "{so}"
    );
    assert!(
        se.contains("entry 3") && se.contains("\"not a ref\" is not REPO:TAG"),
        "{se}"
    );
    assert!(se.contains("entry 4") && se.contains("\"App:-v9\""), "{se}");

    // verify: every hostile name, with what it is.
    let out = ferry_bounded(&["verify", dir], cwd);
    let so = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{so}");
    for (d, why) in [
        (&h.fifo, "a FIFO, not a regular file"),
        (&h.outside, "a symlink leaving the layout"),
        (&h.directory, "a directory"),
        (&h.socket, "a socket"),
    ] {
        assert!(so.contains(&format!("CORRUPT {d}: {why}")), "{why}: {so}");
    }
    assert!(!so.contains(&format!("CORRUPT {}", h.inside)), "{so}");

    // inventory: only what can be read as content.
    let out = ferry_bounded(&["inventory", dir], cwd);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for d in [&h.fifo, &h.outside, &h.directory, &h.socket] {
        assert!(!so.contains(&d.to_string()), "inventory lists {d}: {so}");
    }
    assert!(so.contains(&h.inside.to_string()), "{so}");

    // sync: the FIFO's ref fails, named; the others arrive.
    let dst = tmp.path().join("dst");
    let out = ferry_bounded(&["sync", dir, dst.to_str().unwrap()], cwd);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(
        se.contains(&h.fifo.to_string()) && se.contains("FIFO"),
        "{se}"
    );
    assert!(se.contains("leaving the layout"), "{se}");
    let out = ferry_bounded(&["check", dst.to_str().unwrap()], cwd);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{so}");
    assert!(so.contains("app:v3") && !so.contains("app:v1"), "{so}");

    // gc --dry-run walks it all, names what is no content among the unreferenced names (the
    // directory and the socket: the FIFO and the symlink are referenced), and finishes.
    let out = ferry_bounded(&["gc", "--data", dir, "--dry-run", "--grace", "0s"], cwd);
    let so = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        so.contains(&format!(
            "not content: {}: a directory, left in place",
            h.directory
        )),
        "{so}"
    );
    assert!(
        so.contains(&format!("not content: {}: a socket", h.socket)),
        "{so}"
    );

    assert_eq!(before, snapshot(&h.dir), "a reader changed the layout");

    // A FIFO as index.json or as oci-layout: named at once, not waited on.
    for name in ["index.json", "oci-layout"] {
        let d = tmp.path().join(format!("bad-{name}"));
        std::fs::create_dir_all(d.join("blobs/sha256")).unwrap();
        if name == "index.json" {
            std::fs::write(d.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        }
        mkfifo(&d.join(name));
        for args in [
            vec!["check", d.to_str().unwrap()],
            vec!["sync", d.to_str().unwrap(), dst.to_str().unwrap()],
            vec!["verify", d.to_str().unwrap()],
        ] {
            let out = ferry_bounded(&args, cwd);
            let se = text(&out.stderr);
            assert!(!out.status.success(), "{args:?}");
            assert!(
                se.contains(name) && se.contains("a FIFO, not a regular file"),
                "{args:?}: {se}"
            );
        }
    }
}

#[test]
fn unknown_location_schemes_are_refused_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let src = tmp.path().join("src");
    ferry::layout::Store::open(&src, false).unwrap();
    let src = src.to_str().unwrap();
    for args in [
        vec!["sync", "s4://bucket/prefix", "./out"],
        vec!["sync", src, "s4://bucket"],
        vec!["sync", src, "tar:trip.tar"],
        vec!["sync", "dcoker://localhost:5000/a", "./out"],
        vec!["inventory", "gs://bucket"],
        vec!["check", "zip:trip.zip"],
        vec!["verify", "s4://bucket"],
        vec!["gc", "--data", "s4://bucket"],
        vec!["serve", "--listen", "127.0.0.1:0", "--data", "s4://bucket"],
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "docker://localhost:5000",
        ],
    ] {
        let out = ferry_bounded(&args, &cwd);
        let se = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {se}");
        assert!(
            se.contains("docker://HOST") || se.contains("takes a directory"),
            "{args:?}: {se}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().flatten().collect();
    assert!(left.is_empty(), "created: {left:?}");
}

/// ferry's own state under `.ferry/` in a directory from elsewhere: a FIFO as the index lock, as
/// an upload session or as a partial download is an error naming it, answered at once, never a
/// request or a sync that waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_among_ferrys_own_files_are_named_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let s = TestServer::start_on(&dir, false).await;
    let m = push_image(&s.url, "app", "v1", 21).await;
    s.stop().await;
    let session = "0b7e5f3e-3c1a-4d51-9d7e-2f1c3a4b5c6d";
    mkfifo(&dir.join(".ferry/uploads").join(session));
    std::fs::remove_file(dir.join(".ferry/lock")).ok();
    mkfifo(&dir.join(".ferry/lock"));
    let s = TestServer::start_on(&dir, false).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // The index lock.
    let r = client
        .put(format!("{}/v2/app/manifests/v2", s.url))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await
        .expect("answered in time");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(".ferry/lock") && body.contains("FIFO"),
        "{body}"
    );
    // An upload session.
    let r = client
        .patch(format!("{}/v2/app/blobs/uploads/{session}", s.url))
        .body(vec![1u8; 10])
        .send()
        .await
        .expect("answered in time");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = r.text().await.unwrap();
    assert!(body.contains(session) && body.contains("FIFO"), "{body}");
    // Reads still work.
    let r = client
        .get(format!("{}/v2/app/manifests/v1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(client);
    s.stop().await;

    // A partial download in a sync's destination.
    let src = tmp.path().join("src");
    let s = TestServer::start_on(&src, false).await;
    let m = push_image(&s.url, "app", "v1", 22).await;
    s.stop().await;
    let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let layer: ferry::digest::Digest = v["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
    let dst = tmp.path().join("dst");
    ferry::layout::Store::open(&dst, false).unwrap();
    mkfifo(
        &dst.join(".ferry/partial")
            .join(format!("sha256-{}", layer.hex())),
    );
    let out = ferry_bounded(
        &["sync", src.to_str().unwrap(), dst.to_str().unwrap()],
        tmp.path(),
    );
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains(".ferry/partial") && se.contains("FIFO"), "{se}");
}
