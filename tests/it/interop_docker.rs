//! dockerd 20.10 (Debian's docker.io, with its built-in BuildKit) against ferry.
//!
//! The harness starts its own dockerd (own socket, data and exec roots, no bridge, no iptables) with
//! ferry as an insecure registry and as its `--registry-mirror`, then: builds `FROM scratch`,
//! pushes, forgets everything and pulls; builds with the inline cache, pushes, prunes and rebuilds
//! with `--cache-from` asserting every step `CACHED`; does the same on a busybox base image made
//! with `docker import` and `RUN` steps; and pulls a `docker.io/library/...` name through the mirror.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[derive(Debug)]
pub struct Dockerd {
    pub sock: String,
    child: Child,
    docker: PathBuf,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Start a private dockerd. `None` (a visible skip) when dockerd is not installed, unless
    /// `FERRY_REQUIRE_INTEROP=1`, which makes that a failure.
    pub fn start(extra: &[String]) -> Option<Dockerd> {
        let dockerd = tool("dockerd", &["/usr/sbin/dockerd", "/usr/bin/dockerd"])?;
        // Debian's 20.10 client; a newer client elsewhere on PATH may not speak to this daemon.
        let docker = tool("docker", &["/usr/bin/docker"])?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-dockerd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let sock = format!("unix://{}/docker.sock", dir.path().display());
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log");
        let child = Command::new(&dockerd)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "-H",
                &sock,
                "--data-root",
                &dir.path().join("data").display().to_string(),
                "--exec-root",
                &dir.path().join("exec").display().to_string(),
                "--pidfile",
                &dir.path().join("docker.pid").display().to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let d = Dockerd {
            sock,
            child,
            docker,
            dir,
        };
        let start = Instant::now();
        loop {
            if d.docker(&["version"]).status.success() {
                return Some(d);
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("dockerd did not come up:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_in(None, args)
    }

    pub fn docker_in(&self, cwd: Option<&Path>, args: &[&str]) -> Output {
        self.docker_with(cwd, true, args)
    }

    /// `buildkit: false` builds with the classic builder (`DOCKER_BUILDKIT=0`).
    pub fn docker_with(&self, cwd: Option<&Path>, buildkit: bool, args: &[&str]) -> Output {
        let mut c = Command::new(&self.docker);
        c.arg("-H")
            .arg(&self.sock)
            .args(args)
            .env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
            // Each daemon's client keeps its own credentials (`docker login`).
            .env("DOCKER_CONFIG", self.dir.path().join("client"));
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        c.output().expect("run docker")
    }

    /// Run docker and fail the test with its output when it fails; returns stdout+stderr.
    pub fn ok(&self, cwd: Option<&Path>, args: &[&str]) -> String {
        self.ok_with(cwd, true, args)
    }

    /// [`Dockerd::ok`] with the builder chosen ([`Dockerd::docker_with`]).
    pub fn ok_with(&self, cwd: Option<&Path>, buildkit: bool, args: &[&str]) -> String {
        let out = self.docker_with(cwd, buildkit, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "docker {args:?} failed:\n{text}");
        text
    }

    /// Forget every image and all build cache, as a fresh machine would have.
    pub fn forget_everything(&self) {
        // The classic builder leaves parent images: `rmi -f` refuses a parent listed before its
        // child, whatever the order `images -aq` gives, so repeat until none is left.
        for _ in 0..10 {
            let ids = self.ok(None, &["images", "-aq"]);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if ids.is_empty() {
                break;
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(ids);
            let _ = self.docker(&args);
        }
        let left = self.ok(None, &["images", "-aq"]);
        assert!(
            left.trim().is_empty(),
            "images left after forgetting: {left}"
        );
        self.ok(None, &["builder", "prune", "-af"]);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Steps of a `--progress=plain` build (`#N [i/n] ...`) and which of them were `CACHED`.
pub fn build_steps(log: &str) -> Vec<(String, bool)> {
    let mut steps: Vec<(String, String, bool)> = Vec::new();
    for line in log.lines() {
        let mut parts = line.splitn(2, ' ');
        let (Some(id), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !id.starts_with('#') {
            continue;
        }
        if rest.starts_with('[')
            && !rest.starts_with("[internal]")
            && !rest.contains("FROM ")
            && !rest.starts_with("[auth]")
        {
            if !steps.iter().any(|(i, _, _)| i == id) {
                steps.push((id.to_owned(), rest.to_owned(), false));
            }
        } else if rest.trim() == "CACHED" {
            for s in steps.iter_mut().filter(|(i, _, _)| i == id) {
                s.2 = true;
            }
        }
    }
    steps
        .into_iter()
        .map(|(_, name, cached)| (name, cached))
        .collect()
}

pub fn assert_all_cached(log: &str, expected_steps: usize) {
    let steps = build_steps(log);
    assert_eq!(steps.len(), expected_steps, "steps found: {steps:?}\n{log}");
    for (name, cached) in &steps {
        assert!(*cached, "step not CACHED: {name}\n{log}");
    }
}

pub fn write(dir: &Path, name: &str, content: &[u8]) {
    std::fs::write(dir.join(name), content).unwrap();
}

/// A minimal base image from busybox-static (no image can be pulled here).
pub fn import_busybox(d: &Dockerd, tag: &str) {
    let busybox = tool("busybox", &["/bin/busybox", "/usr/bin/busybox"]).expect("busybox-static");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let tar = tmp.path().join("rootfs.tar");
    let st = Command::new("tar")
        .args([
            "-C",
            &root.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    d.ok(None, &["import", &tar.display().to_string(), tag]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_pull_inline_cache_run_steps_and_mirror() {
    let srv = TestServer::start().await;
    let host = srv.host();
    let extra = vec![
        "--insecure-registry".to_owned(),
        host.clone(),
        "--registry-mirror".to_owned(),
        format!("http://{host}"),
    ];
    let Some(d) = tokio::task::spawn_blocking(move || Dockerd::start(&extra))
        .await
        .unwrap()
    else {
        return;
    };
    let d = std::sync::Arc::new(d);
    let run = |f: Box<dyn FnOnce(&Dockerd) + Send>| {
        let d = d.clone();
        async move { tokio::task::spawn_blocking(move || f(&d)).await.unwrap() }
    };

    // 1. FROM scratch: build, push, forget everything, pull.
    let h = host.clone();
    run(Box::new(move |d| {
        let ctx = tempfile::tempdir().unwrap();
        write(ctx.path(), "a.bin", &bytes(5000, 50));
        write(ctx.path(), "b.bin", &bytes(7000, 51));
        write(
            ctx.path(),
            "Dockerfile",
            b"FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n",
        );
        let image = format!("{h}/it/scratch:1");
        d.ok(Some(ctx.path()), &["build", "-t", &image, "."]);
        let id = d.ok(None, &["image", "inspect", "-f", "{{.Id}}", &image]);
        d.ok(None, &["push", &image]);
        d.forget_everything();
        d.ok(None, &["pull", &image]);
        assert_eq!(
            d.ok(None, &["image", "inspect", "-f", "{{.Id}}", &image]),
            id
        );
    }))
    .await;

    // 2. Inline cache: build, push, prune, rebuild with --cache-from: every step CACHED.
    let h = host.clone();
    run(Box::new(move |d| {
        let ctx = tempfile::tempdir().unwrap();
        write(ctx.path(), "a.bin", &bytes(4000, 52));
        write(ctx.path(), "c.bin", &bytes(3000, 53));
        write(
            ctx.path(),
            "Dockerfile",
            b"FROM scratch\nCOPY a.bin /a.bin\nCOPY c.bin /c.bin\nCOPY Dockerfile /Dockerfile\n",
        );
        let image = format!("{h}/it/cached:1");
        d.ok(
            Some(ctx.path()),
            &[
                "build",
                "--build-arg",
                "BUILDKIT_INLINE_CACHE=1",
                "-t",
                &image,
                ".",
            ],
        );
        d.ok(None, &["push", &image]);
        d.forget_everything();
        let log = d.ok(
            Some(ctx.path()),
            &[
                "build",
                "--progress=plain",
                "--cache-from",
                &image,
                "-t",
                &format!("{h}/it/cached:2"),
                ".",
            ],
        );
        assert_all_cached(&log, 3);
    }))
    .await;

    // 3. A busybox base pushed into ferry, RUN steps on it, the same cache round trip.
    let h = host.clone();
    run(Box::new(move |d| {
        let base = format!("{h}/base/busybox:1");
        import_busybox(d, &base);
        d.ok(None, &["push", &base]);
        let ctx = tempfile::tempdir().unwrap();
        write(ctx.path(), "f.bin", &bytes(3000, 54));
        let dockerfile = format!(
            "FROM {base}\nRUN echo hello > /hello && busybox sleep 1\nCOPY f.bin /f.bin\nRUN busybox sha256sum /f.bin > /sum\n"
        );
        write(ctx.path(), "Dockerfile", dockerfile.as_bytes());
        let image = format!("{h}/it/run:1");
        d.ok(Some(ctx.path()), &["build", "--network=host", "--build-arg", "BUILDKIT_INLINE_CACHE=1", "-t", &image, "."]);
        d.ok(None, &["push", &image]);
        d.forget_everything();
        let log = d.ok(Some(ctx.path()), &["build", "--network=host", "--progress=plain", "--cache-from", &image, "-t", &format!("{h}/it/run:2"), "."]);
        assert_all_cached(&log, 3);
        // And the image runs.
        let out = d.ok(None, &["run", "--rm", "--network=none", &format!("{h}/it/run:2"), "busybox", "cat", "/hello"]);
        assert!(out.contains("hello"), "{out}");
    }))
    .await;

    // 4. ferry as a registry mirror: docker.io/library/<name> comes from ferry's library/<name>.
    let h = host.clone();
    run(Box::new(move |d| {
        let ctx = tempfile::tempdir().unwrap();
        write(ctx.path(), "m.bin", &bytes(2000, 55));
        write(
            ctx.path(),
            "Dockerfile",
            b"FROM scratch\nCOPY m.bin /m.bin\n",
        );
        let pushed = format!("{h}/library/ferrymirrored:1");
        d.ok(Some(ctx.path()), &["build", "-t", &pushed, "."]);
        d.ok(None, &["push", &pushed]);
        d.forget_everything();
        let out = d.ok(None, &["pull", "ferrymirrored:1"]);
        assert!(out.contains("docker.io/library/ferrymirrored:1"), "{out}");
        let images = d.ok(None, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(images.lines().any(|l| l == "ferrymirrored:1"), "{images}");
    }))
    .await;
    drop(d);
    srv.stop().await;
}

#[test]
fn build_step_parser() {
    let log = "#1 [internal] load build definition from Dockerfile\n#4 [1/3] FROM x\n#5 [2/3] COPY a /a\n#5 CACHED\n#6 [3/3] RUN x\n#6 DONE 0.1s\n";
    let steps = build_steps(log);
    assert_eq!(
        steps,
        vec![
            ("[2/3] COPY a /a".to_owned(), true),
            ("[3/3] RUN x".to_owned(), false)
        ]
    );
}
