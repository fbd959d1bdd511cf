//! Crash and fault proof: kill -9 at random points during pushes, a full disk, many clients
//! pushing the same blob at once.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;
use crate::process::FerryProcess;

/// Push a blob as docker does (POST, one streamed PATCH, PUT ?digest=) and a manifest + tag.
async fn push_streamed(url: &str, repo: &str, data: bytes::Bytes, tag: &str) -> Result<(), String> {
    let d = sha256(&data);
    let c = http();
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let loc = r
        .headers()
        .get("location")
        .ok_or("no location")?
        .to_str()
        .unwrap()
        .to_owned();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..data.len())
        .step_by(1 << 20)
        .map(|i| Ok(data.slice(i..(i + (1 << 20)).min(data.len()))))
        .collect();
    let r = c
        .patch(format!("{url}{loc}"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::ACCEPTED {
        return Err(format!("PATCH {}", r.status()));
    }
    let r = c
        .put(format!("{url}{loc}?digest={d}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::CREATED {
        return Err(format!("PUT {}", r.status()));
    }
    let config = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    push_blob(url, repo, &config).await;
    let m = image_manifest(&config, &[&data]);
    let r = put_manifest(
        url,
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    )
    .await;
    if r.status() != StatusCode::CREATED {
        return Err(format!("manifest {}", r.status()));
    }
    Ok(())
}

async fn push_owned(
    url: String,
    repo: &'static str,
    data: bytes::Bytes,
    tag: String,
) -> Result<(), String> {
    push_streamed(&url, repo, data, &tag).await
}

fn verify_clean(dir: &std::path::Path) {
    let store = ferry::layout::Store::open(dir, true).unwrap();
    let r = ferry::verify::verify(&store, 2, false).unwrap();
    assert!(r.ok(), "store not valid after kill -9: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pushes_leaves_a_valid_store_and_retries_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let d = dir.display().to_string();
    let data = bytes::Bytes::from(bytes(256 * 1024 * 1024, 130));
    let mut seed = 0x9e3779b97f4a7c15u64;
    for trial in 0..10 {
        let mut p = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", &d], &[]);
        let url = p.url.clone();
        let tag = format!("t{trial}");
        let push = tokio::spawn(push_owned(
            url.clone(),
            "crash/app",
            data.clone(),
            tag.clone(),
        ));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Anywhere from the first bytes to after the tag (a push takes ~0.5–1.5 s here).
        tokio::time::sleep(Duration::from_millis(seed % 1500)).await;
        p.child.kill().unwrap(); // SIGKILL
        p.child.wait().unwrap();
        let _ = push.await;
        verify_clean(&dir);
        // The client tries again against the restarted server, and succeeds.
        let p2 = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", &d], &[]);
        push_streamed(&p2.url, "crash/app", data.clone(), &tag)
            .await
            .expect("retry after restart");
        drop(p2);
        verify_clean(&dir);
    }
    // Nothing of the crashes is left once upload expiry has run.
    let store = ferry::layout::Store::open(&dir, false).unwrap();
    store.expire_uploads(Duration::ZERO).await.unwrap();
    assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        v["manifests"].as_array().unwrap().len(),
        10,
        "every retried tag is there"
    );
}

/// A size-limited tmpfs, unmounted on drop.
struct SmallFs(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fs");
        std::fs::create_dir_all(&p).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &p.display().to_string(),
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            if require_interop() {
                panic!("mounting a tmpfs needs root (FERRY_REQUIRE_INTEROP=1)");
            }
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root)");
            return None;
        }
        Some(SmallFs(p, t))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_a_clear_error_and_leaves_nothing_behind() {
    let Some(fs) = SmallFs::mount("48m") else {
        return;
    };
    let dir = fs.0.join("data");
    let s = TestServer::start_on(&dir, false).await;
    let small = push_blob(&s.url, "full", b"small and fine").await;
    let big = bytes::Bytes::from(bytes(80 * 1024 * 1024, 140));
    let d = sha256(&big);
    let r = http()
        .post(format!("{}/v2/full/blobs/uploads/", s.url))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = http()
        .patch(format!("{}{loc}", s.url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no space"),
        "{v}"
    );
    // No partial blob, the upload rolled back, the space came back.
    assert!(!dir.join("blobs/sha256").join(d.hex()).exists());
    let status = http().get(format!("{}{loc}", s.url)).send().await.unwrap();
    assert_eq!(status.headers()["range"], "0-0");
    let out = Command::new("df")
        .args(["--output=avail", "-B1", &fs.0.display().to_string()])
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(avail > 40 * 1024 * 1024, "space returned: {avail}");
    // The server keeps serving.
    let r = http()
        .get(format!("{}/v2/full/blobs/{small}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    push_blob(&s.url, "full", b"another small one").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_pushing_one_100_mib_blob() {
    let s = TestServer::start().await;
    let data = bytes::Bytes::from(bytes(100 * 1024 * 1024, 150));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let url = s.url.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(push_owned(
            url,
            "same/blob",
            data,
            format!("c{i}"),
        )));
    }
    for t in tasks {
        t.await.unwrap().expect("every client succeeds");
    }
    let files: Vec<_> = std::fs::read_dir(s.dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .collect();
    let big: Vec<_> = files
        .iter()
        .filter(|e| e.metadata().unwrap().len() == data.len() as u64)
        .collect();
    assert_eq!(big.len(), 1, "one file for the blob");
    assert!(leftovers(&s.dir).is_empty(), "{:?}", leftovers(&s.dir));
    let store = ferry::layout::Store::open(&s.dir, true).unwrap();
    assert!(ferry::verify::verify(&store, 2, false).unwrap().ok());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_syncs_into_a_served_directory() {
    let src = TestServer::start().await;
    for i in 0..10u64 {
        let layer = bytes(48 * 1024 * 1024, 160 + i);
        let config = format!("{{\"i\":{i}}}").into_bytes();
        push_blob(&src.url, "sync/app", &config).await;
        push_blob(&src.url, "sync/app", &layer).await;
        let m = image_manifest(&config, &[&layer]);
        let r = put_manifest(
            &src.url,
            "sync/app",
            &format!("v{i}"),
            "application/vnd.oci.image.manifest.v1+json",
            &m,
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // ~96 MiB/s: each 48 MiB layer takes about half a second to arrive.
    let proxy = crate::sync::throttling_proxy(src.addr, 96 * 1024 * 1024).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("served");
    let d = dir.display().to_string();
    let mut seed = 0x2545f4914f6cdd1du64;
    for i in 0..10u64 {
        let mut serve = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", &d], &[]);
        let from = format!("docker://{proxy}/sync/app:v{i}");
        let mut sync = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["sync", "--json", &from, &d])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 900)).await;
        let _ = sync.kill();
        let _ = sync.wait();
        serve.child.kill().unwrap();
        serve.child.wait().unwrap();
        verify_clean(&dir);
        // Run again: the sync completes and a restarted server serves the tag.
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["sync", "--json", &from, &d])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", &d], &[]);
        let r = http()
            .get(format!("{}/v2/sync/app/manifests/v{i}", p.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        drop(p);
        verify_clean(&dir);
    }
    assert!(
        !dir.join(".ferry/partial")
            .read_dir()
            .is_ok_and(|mut r| r.next().is_some()),
        "no partial files left"
    );
    src.stop().await;
}
