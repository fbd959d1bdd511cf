//! `docker-compose.test.yml` for real: docker-compose 1.29 against a private dockerd 20.10, the
//! ferry image built offline from the static binary (the Dockerfile's `prebuilt` target).

use std::process::Command;

use crate::common::*;
use crate::interop_docker::Dockerd;

/// Build the static binary the `prebuilt` image copies (a no-op when `.ci/run` already built it).
fn static_binary() -> std::path::PathBuf {
    let root = repo_root();
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--bin",
            "ferry",
        ])
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "static build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = root.join("target/x86_64-unknown-linux-gnu/release");
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        dir.join("ca-certificates.crt"),
    )
    .expect("the host's CA bundle (package ca-certificates)");
    dir.join("ferry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_file_runs_ferry_and_its_check() {
    let Some(compose) = tool("docker-compose", &["/usr/bin/docker-compose"]) else {
        return;
    };
    let Some(d) = tokio::task::spawn_blocking(|| Dockerd::start(&[]))
        .await
        .unwrap()
    else {
        return;
    };
    let bin = tokio::task::spawn_blocking(static_binary).await.unwrap();
    assert!(bin.is_file());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sock = d.sock.clone();
    let run = move |args: &[&str]| {
        Command::new(&compose)
            .current_dir(repo_root())
            .env("DOCKER_HOST", &sock)
            .env("FERRY_BUILD_TARGET", "prebuilt")
            .env("FERRY_TEST_PORT", port.to_string())
            .env("COMPOSE_PROJECT_NAME", format!("ferrytest{port}"))
            .args(["-f", "docker-compose.test.yml"])
            .args(args)
            .output()
            .expect("docker-compose")
    };
    let out = tokio::task::spawn_blocking(move || {
        let build = run(&["build"]);
        assert!(
            build.status.success(),
            "compose build:\n{}{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
        let up = run(&[
            "up",
            "--abort-on-container-exit",
            "--exit-code-from",
            "check",
        ]);
        let _ = run(&["down", "-v"]);
        up
    })
    .await
    .unwrap();
    drop(d);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "compose up failed:\n{text}");
    assert!(
        text.contains("cache/legacy-oci:cache: cache") && text.contains("all present and intact"),
        "{text}"
    );
    assert!(text.contains("6 cache records over 3 layers"), "{text}");
}
