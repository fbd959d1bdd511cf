//! Many servers, one mirror (issue #6): three dockerd instances, each with its own state and its
//! own login, build and pull from one ferry over TLS with auth at the same time. The CA goes where
//! `ferry tls init` said it should (its printed `mkdir`/`cp` lines are run as printed), and no
//! daemon is told the mirror is insecure: the mirror is reached by this machine's LAN address,
//! because docker treats loopback registries as insecure and would not check the certificate.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use crate::interop_docker::{build_steps, import_busybox, write, Dockerd};
use crate::process::FerryProcess;
use crate::tls::tls_init;
use crate::trip::{build, DOCKERFILE};

/// Removes the trust directory this test created under /etc/docker/certs.d.
struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dockerds_build_and_pull_from_one_tls_mirror_with_auth() {
    let Some(ip) = require_lan_ip("three_dockerds_build_and_pull_from_one_tls_mirror") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hp = format!("{ip}:{port}");

    // The operator: certificates, passwords, the mirror.
    let tls = tmp.path().join("tls");
    let printed = tls_init(&tls, &[&ip.to_string()], port, false);
    let pw = tmp.path().join("htpasswd");
    let users = ["build1", "build2", "build3"];
    let entries: String = users
        .iter()
        .map(|u| format!("{u}:{}\n", bcrypt::hash(format!("{u}-pw"), 5).unwrap()))
        .collect();
    std::fs::write(&pw, entries).unwrap();
    let (cert, key) = (tls.join("server.crt"), tls.join("server.key"));
    let data = tmp.path().join("data");
    let mirror = FerryProcess::start(
        &[
            "--listen",
            &hp,
            "--data",
            &data.display().to_string(),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--htpasswd",
            &pw.display().to_string(),
        ],
        &[],
    );

    // Before the CA is in place, a daemon refuses the mirror's certificate.
    let Some(stranger) = tokio::task::spawn_blocking(|| Dockerd::start(&[]))
        .await
        .unwrap()
    else {
        return;
    };
    let out = stranger.docker(&["login", &hp, "-u", "build1", "-p", "build1-pw"]);
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "login without the CA succeeded");
    assert!(
        text.contains("x509") || text.contains("certificate"),
        "{text}"
    );
    drop(stranger);
    // Every build server: the trust step exactly as printed, then dockerd (re)starts, as the
    // instructions say: its BuildKit reads certs.d only at start (found by this test).
    let trust_dir = PathBuf::from(format!("/etc/docker/certs.d/{hp}"));
    let _cleanup = RemoveDir(trust_dir.clone());
    let steps: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(&format!("/etc/docker/certs.d/{hp}")))
        .collect();
    assert_eq!(steps.len(), 2, "mkdir + cp expected:\n{printed}");
    for step in &steps {
        let st = Command::new("sh").args(["-c", step]).status().unwrap();
        assert!(st.success(), "{step}");
    }
    assert!(trust_dir.join("ca.crt").is_file());

    // Three daemons with their own state; none is told the mirror is insecure.
    let mut daemons = Vec::new();
    for _ in 0..3 {
        let Some(d) = tokio::task::spawn_blocking(|| Dockerd::start(&[]))
            .await
            .unwrap()
        else {
            return;
        };
        daemons.push(d);
    }
    let ctx = tmp.path().join("project");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    write(&ctx, "Dockerfile", DOCKERFILE.as_bytes());
    write(&ctx.join("src"), "app.txt", b"shared\n");
    write(&ctx.join("src"), "lib.txt", b"shared lib\n");
    let base = format!("{hp}/base/busybox:1");
    let app = format!("{hp}/team/app:1");

    let (daemons, ctx) = tokio::task::spawn_blocking({
        let (base, app, hp) = (base.clone(), app.clone(), hp.clone());
        move || {
            // Without a login the mirror refuses a push.
            let d1 = &daemons[0];
            import_busybox(d1, &base);
            let out = d1.docker(&["push", &base]);
            assert!(!out.status.success(), "push without login succeeded");
            for (d, u) in daemons.iter().zip(users) {
                d.ok(None, &["login", &hp, "-u", u, "-p", &format!("{u}-pw")]);
            }
            // Build server 1 seeds the mirror: base image and an app with its inline cache.
            d1.ok(None, &["push", &base]);
            build(d1, &ctx, &base, &app, None);
            d1.ok(None, &["push", &app]);
            d1.forget_everything();
            (daemons, ctx)
        }
    })
    .await
    .unwrap();

    // All three at once: build from the mirror's cache, push their own tag, pull the shared one.
    let mut jobs = Vec::new();
    for (i, d) in daemons.into_iter().enumerate() {
        let (ctx, base, app, hp) = (ctx.clone(), base.clone(), app.clone(), hp.clone());
        jobs.push(tokio::task::spawn_blocking(move || {
            let mine = format!("{hp}/team/app:host{}", i + 1);
            let (log, secs) = build(&d, &ctx, &base, &mine, Some(&app));
            let steps = build_steps(&log);
            assert_eq!(steps.len(), 4, "host{}: {steps:?}\n{log}", i + 1);
            assert!(
                steps.iter().all(|(_, cached)| *cached),
                "host{}: every step CACHED: {steps:?}\n{log}",
                i + 1
            );
            d.ok(None, &["push", &mine]);
            d.ok(None, &["pull", &app]);
            (d, secs)
        }));
    }
    let mut secs = Vec::new();
    for j in jobs {
        let (_d, s) = j.await.unwrap();
        secs.push(s);
    }
    eprintln!("three concurrent cached builds over TLS: {secs:.1?} s");

    // The mirror holds every host's tag, and its store is intact.
    let r = crate::tls::client_trusting(&tls.join("ca.crt"))
        .get(format!("https://{hp}/v2/team/app/tags/list"))
        .basic_auth("build1", Some("build1-pw"))
        .send()
        .await
        .unwrap();
    let tags: serde_json::Value = r.json().await.unwrap();
    for t in ["1", "host1", "host2", "host3"] {
        assert!(
            tags["tags"].as_array().unwrap().iter().any(|x| x == t),
            "{tags}"
        );
    }
    drop(mirror);
    let v = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", "--data", &data.display().to_string()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
