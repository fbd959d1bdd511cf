//! Layer patches with dockerd's own layers (Debian's docker.io 20.10: Go 1.19's gzip, classic
//! builder and built-in BuildKit): an app image with a ~100 MB layer of generated files, one
//! 50 KB file changed; the delta carries a patch, the offline mirror rebuilds the layer exactly,
//! `docker pull` from it works and a rebuild with `--cache-from` is all `CACHED`.

use std::path::Path;

use ferry::location::Location;
use ferry::sync::SyncOptions;

use crate::common::sync_run as run;
use crate::common::*;
use crate::interop_docker::{assert_all_cached, write, Dockerd};

/// `n` text-like files of `size` bytes under `dir/data/` (file `changed` with other content).
fn generate(dir: &Path, n: usize, size: usize, changed: Option<usize>) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..n {
        let seed = if Some(i) == changed { 900_000 + i } else { i } as u64;
        let text: Vec<u8> = bytes(size, seed)
            .iter()
            .map(|c| b"abcdefgh ijklmnop\n{}=;"[(*c % 22) as usize])
            .collect();
        std::fs::write(data.join(format!("gen{i:05}.js")), text).unwrap();
    }
}

async fn inventory(loc: &str) -> std::collections::HashSet<ferry::digest::Digest> {
    let loc = Location::parse(loc).unwrap();
    let place = ferry::sync::Place::open(&loc, &Default::default(), false)
        .await
        .unwrap();
    place.inventory(&loc).await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_layers_cross_as_patches_and_are_rebuilt_exactly() {
    let online = TestServer::start().await;
    let mirror = TestServer::start().await;
    let (on, mi) = (online.host(), mirror.host());
    let extra = vec![
        "--insecure-registry".to_owned(),
        on.clone(),
        "--insecure-registry".to_owned(),
        mi.clone(),
    ];
    let Some(d) = tokio::task::spawn_blocking(move || Dockerd::start(&extra))
        .await
        .unwrap()
    else {
        return;
    };
    let d = std::sync::Arc::new(d);
    let ctx = std::sync::Arc::new(tempfile::tempdir().unwrap());
    // (builder, files × size): the classic builder with ~100 MB, BuildKit with ~30 MB.
    for (buildkit, n, repo) in [(false, 2000, "classic"), (true, 600, "buildkit")] {
        let (d2, c2, on2) = (d.clone(), ctx.clone(), on.clone());
        let build = move |tag: &str, changed: Option<usize>| {
            let dir = c2.path().join(repo);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            generate(&dir, n, 50_000, changed);
            write(&dir, "small.txt", b"hello\n");
            write(
                &dir,
                "Dockerfile",
                b"FROM scratch\nCOPY data/ /data/\nCOPY small.txt /small.txt\n",
            );
            let image = format!("{on2}/{repo}/app:{tag}");
            let mut args = vec!["build", "-t", &image];
            if buildkit {
                args.extend(["--build-arg", "BUILDKIT_INLINE_CACHE=1"]);
            }
            args.push(".");
            d2.ok_with(Some(&dir), buildkit, &args);
            d2.ok(None, &["push", &image]);
        };
        let b1 = build.clone();
        tokio::task::spawn_blocking(move || b1("v1", None))
            .await
            .unwrap();
        // The first trip: v1 to the offline mirror.
        let src = online.dir.display().to_string();
        let mut o = SyncOptions {
            jobs: 4,
            ..Default::default()
        };
        o.refs = vec![format!("{repo}/app:v1")];
        run(&src, &format!("docker://{mi}"), &o).await;
        let b2 = build.clone();
        tokio::task::spawn_blocking(move || b2("v2", Some(n / 3)))
            .await
            .unwrap();

        // The offline side's inventory; the connected side writes the delta.
        let have = inventory(&format!("docker://{mi}/{repo}/app")).await;
        let tmp = tempfile::tempdir().unwrap();
        let delta = tmp.path().join("delta").display().to_string();
        let mut o = SyncOptions {
            jobs: 4,
            have: Some(have),
            ..Default::default()
        };
        o.refs = vec![format!("{repo}/app:v2")];
        let s = run(&src, &delta, &o).await;
        assert!(s.failed.is_empty(), "{s}");
        assert_eq!(s.patched.len(), 1, "{repo}: {s}");
        let p = &s.patched[0];
        assert!(
            p.patch_size * 100 < p.size,
            "{repo}: the delta's patch is {} bytes for a layer of {}",
            p.patch_size,
            p.size
        );
        // The small layer changes too (the classic builder records the copied file's new
        // mtime); a patch of a 100-byte layer is no smaller, so it crosses whole, and says so.
        assert!(
            s.carried_whole
                .iter()
                .all(|w| w.why.contains("not smaller") && w.size < 4096),
            "{repo}: {s}"
        );

        // The offline side: the layer is rebuilt from v1's and pushed into the mirror.
        let a = run(&delta, &format!("docker://{mi}"), &SyncOptions::default()).await;
        assert!(a.failed.is_empty(), "{a}");
        assert_eq!(a.rebuilt, 1, "{a}");
        let g_on =
            ferry::sync::Place::open(&Location::parse(&src).unwrap(), &Default::default(), false)
                .await
                .unwrap();
        let inv_on = g_on
            .inventory(&Location::parse(&src).unwrap())
            .await
            .unwrap();
        let inv_mi = inventory(&format!("docker://{mi}/{repo}/app")).await;
        assert!(inv_mi.contains(&p.digest));
        // Every blob the mirror serves for v2 hashes as the connected side's.
        for digest in inv_mi.iter() {
            assert!(
                inv_on.contains(digest),
                "{digest} is not the connected side's"
            );
            assert_eq!(
                &digest_served(&mirror.url, &format!("{repo}/app"), digest).await,
                digest
            );
        }

        // Pull from the mirror on a machine that has nothing; with BuildKit, rebuild from the
        // mirror's inline cache: every step CACHED.
        let (d3, c3, mi3) = (d.clone(), ctx.clone(), mi.clone());
        tokio::task::spawn_blocking(move || {
            d3.forget_everything();
            let image = format!("{mi3}/{repo}/app:v2");
            d3.ok(None, &["pull", &image]);
            if !buildkit {
                // The classic builder takes the pulled image as its cache: both COPY steps.
                let out = d3.ok_with(
                    Some(&c3.path().join(repo)),
                    false,
                    &["build", "--cache-from", &image, "-t", "again", "."],
                );
                assert_eq!(out.matches("Using cache").count(), 2, "{out}");
            }
            if buildkit {
                d3.forget_everything();
                let log = d3.ok(
                    Some(&c3.path().join(repo)),
                    &[
                        "build",
                        "--progress=plain",
                        "--cache-from",
                        &image,
                        "-t",
                        "again",
                        ".",
                    ],
                );
                assert_all_cached(&log, 2);
            }
        })
        .await
        .unwrap();
    }
    drop(d);
    online.stop().await;
    mirror.stop().await;
}
