//! The users' real job, end to end with real Docker: build online, carry image and cache across,
//! rebuild offline from the cache, then carry only what changed.
//!
//! Online: dockerd + a ferry registry. Offline: a *fresh* dockerd with empty state that knows only
//! an offline ferry serving what was carried. The project has a step that burns ~15 s of CPU and one
//! that writes files; the offline rebuild must show every step `CACHED`. Then one source file
//! changes online, a delta (`ferry inventory` → `ferry sync --have` → apply) carries only the new
//! blobs, and the offline rebuild of that change is all `CACHED` (the delta brought the changed
//! step's result); an edit made only offline re-runs just the changed step. Times and sizes are
//! printed (`cargo test trip -- --nocapture`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::*;
use crate::interop_docker::{build_steps, import_busybox, write, Dockerd};

fn ferry(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

pub(crate) const DOCKERFILE: &str = "ARG BASE\nFROM ${BASE}\n\
RUN busybox sh -c 'i=0; while [ $i -lt 15000000 ]; do i=$((i+1)); done; echo $i > /burned'\n\
RUN busybox mkdir -p /data && busybox dd if=/dev/urandom of=/data/blob bs=1024 count=1024 2>/dev/null\n\
COPY src/lib.txt /src/lib.txt\n\
COPY src/app.txt /src/app.txt\n";

pub(crate) fn build(
    d: &Dockerd,
    ctx: &Path,
    base: &str,
    tag: &str,
    cache_from: Option<&str>,
) -> (String, f64) {
    let start = Instant::now();
    let mut args = vec![
        "build",
        "--network=host",
        "--progress=plain",
        "--build-arg",
        "BUILDKIT_INLINE_CACHE=1",
        "--build-arg",
    ];
    let base_arg = format!("BASE={base}");
    args.push(&base_arg);
    if let Some(c) = cache_from {
        args.push("--cache-from");
        args.push(c);
    }
    args.extend(["-t", tag, "."]);
    let log = d.ok(Some(ctx), &args);
    (log, start.elapsed().as_secs_f64())
}

fn layer_sizes(manifest: &serde_json::Value) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    v.push((
        manifest["config"]["digest"].as_str().unwrap().to_owned(),
        manifest["config"]["size"].as_u64().unwrap(),
    ));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_trip_cache_hits_and_delta() {
    let online = TestServer::start().await;
    let on = online.host();
    let tmp = tempfile::tempdir().unwrap();
    let usb = tmp.path().join("usb");
    let mirror = tmp.path().join("mirror");
    let ctx = tmp.path().join("project");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    write(&ctx, "Dockerfile", DOCKERFILE.as_bytes());
    write(&ctx.join("src"), "app.txt", b"version 1\n");
    write(&ctx.join("src"), "lib.txt", b"unchanged\n");

    let extra = vec!["--insecure-registry".to_owned(), on.clone()];
    let Some(d1) = tokio::task::spawn_blocking(move || Dockerd::start(&extra))
        .await
        .unwrap()
    else {
        return;
    };
    // 1. Online: base image, cold build with the inline cache, push.
    let (d1, cold, ctx) = tokio::task::spawn_blocking({
        let on = on.clone();
        move || {
            let base = format!("{on}/base/busybox:1");
            import_busybox(&d1, &base);
            d1.ok(None, &["push", &base]);
            let (_, cold) = build(&d1, &ctx, &base, &format!("{on}/app:1"), None);
            d1.ok(None, &["push", &format!("{on}/app:1")]);
            (d1, cold, ctx)
        }
    })
    .await
    .unwrap();

    // 2. Carry: registry -> USB directory -> the offline mirror's own directory.
    let usb_s = usb.display().to_string();
    ferry(&["sync", "--json", &format!("docker://{on}"), &usb_s]);
    ferry(&["sync", "--json", &usb_s, &mirror.display().to_string()]);
    let report = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", &mirror.display().to_string()])
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
    let offline = TestServer::start_on(&mirror, false).await;
    let off = offline.host();

    // 3. Offline: a fresh dockerd with empty state that knows only the offline ferry.
    let extra = vec!["--insecure-registry".to_owned(), off.clone()];
    let d2 = tokio::task::spawn_blocking(move || Dockerd::start(&extra))
        .await
        .unwrap()
        .expect("dockerd");
    let (d2, ctx, cached_secs) = tokio::task::spawn_blocking({
        let off = off.clone();
        move || {
            let images = d2.ok(None, &["images", "-q"]);
            assert!(
                images.trim().is_empty(),
                "the offline dockerd starts empty: {images}"
            );
            let (log, secs) = build(
                &d2,
                &ctx,
                &format!("{off}/base/busybox:1"),
                "app:offline",
                Some(&format!("{off}/app:1")),
            );
            let steps = build_steps(&log);
            assert_eq!(steps.len(), 4, "{steps:?}\n{log}");
            assert!(
                steps.iter().all(|(_, c)| *c),
                "every step CACHED offline: {steps:?}\n{log}"
            );
            (d2, ctx, secs)
        }
    })
    .await
    .unwrap();

    // 4. One source file changes; the online side rebuilds and pushes app:2.
    write(&ctx.join("src"), "app.txt", b"version 2\n");
    let ctx = tokio::task::spawn_blocking({
        let on = on.clone();
        move || {
            let (log, _) = build(
                &d1,
                &ctx,
                &format!("{on}/base/busybox:1"),
                &format!("{on}/app:2"),
                None,
            );
            assert!(
                build_steps(&log).iter().filter(|(_, c)| *c).count() >= 2,
                "{log}"
            );
            d1.ok(None, &["push", &format!("{on}/app:2")]);
            ctx
        }
    })
    .await
    .unwrap();

    // 5. Delta trip: the offline side's inventory, a delta with only the rest, applied.
    let have = tmp.path().join("have.txt");
    ferry(&[
        "inventory",
        &mirror.display().to_string(),
        "-o",
        &have.display().to_string(),
    ]);
    let delta = tmp.path().join("delta");
    let carried = ferry(&[
        "sync",
        "--json",
        "--have",
        &have.display().to_string(),
        &format!("docker://{on}/app:2"),
        &delta.display().to_string(),
    ]);
    let applied = ferry(&[
        "sync",
        "--json",
        &delta.display().to_string(),
        &format!("docker://{off}"),
    ]);
    assert!(
        applied["failed"].as_array().unwrap().is_empty(),
        "{applied}"
    );
    let m1: serde_json::Value = http().get(format!("{}/v2/app/manifests/1", online.url))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
        .send().await.unwrap().json().await.unwrap();
    let m2: serde_json::Value = http().get(format!("{}/v2/app/manifests/2", online.url))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
        .send().await.unwrap().json().await.unwrap();
    let old: Vec<String> = layer_sizes(&m1).into_iter().map(|(d, _)| d).collect();
    let new_bytes: u64 = layer_sizes(&m2)
        .into_iter()
        .filter(|(d, _)| !old.contains(d))
        .map(|(_, s)| s)
        .sum();
    let total2: u64 = layer_sizes(&m2).into_iter().map(|(_, s)| s).sum();
    let delta_bytes = carried["bytes_copied"].as_u64().unwrap();
    assert_eq!(
        delta_bytes, new_bytes,
        "the delta carries exactly the new layers and config: {carried}"
    );
    assert!(
        delta_bytes < total2 / 2,
        "the delta is a fraction of the image ({delta_bytes} of {total2})"
    );

    // 6. Offline rebuild from the registry only (local build cache pruned): the online change
    //    arrived with the delta, so every step is CACHED.
    let (d2, ctx, after_delta) = tokio::task::spawn_blocking({
        let off = off.clone();
        move || {
            d2.forget_everything();
            let (log, secs) = build(
                &d2,
                &ctx,
                &format!("{off}/base/busybox:1"),
                "app:offline2",
                Some(&format!("{off}/app:2")),
            );
            let steps = build_steps(&log);
            assert_eq!(steps.len(), 4, "{log}");
            assert!(
                steps.iter().all(|(_, c)| *c),
                "the delta brought the changed step: {steps:?}\n{log}"
            );
            (d2, ctx, secs)
        }
    })
    .await
    .unwrap();

    // 7. An edit made only offline: just the changed step runs again.
    write(&ctx.join("src"), "app.txt", b"version 3, offline fix\n");
    let (local_edit, steps) = tokio::task::spawn_blocking({
        let off = off.clone();
        move || {
            d2.forget_everything();
            let (log, secs) = build(
                &d2,
                &ctx,
                &format!("{off}/base/busybox:1"),
                "app:offline3",
                Some(&format!("{off}/app:2")),
            );
            (secs, build_steps(&log))
        }
    })
    .await
    .unwrap();
    let mut by_step: Vec<(String, bool)> = steps;
    by_step.sort();
    let cached: Vec<bool> = by_step.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        cached,
        vec![true, true, true, false],
        "only the changed step re-runs: {by_step:?}"
    );
    println!(
        "TRIP: cold online build {cold:.1} s; offline rebuild from the carried cache {cached_secs:.1} s (all 4 steps CACHED); \
         one-file change online: delta {delta_bytes} bytes = new layers+config {new_bytes} bytes (image {total2} bytes), \
         offline rebuild {after_delta:.1} s (all CACHED); offline-only edit: rebuild {local_edit:.1} s (1 of 4 steps run)"
    );
    offline.stop().await;
    online.stop().await;
}
