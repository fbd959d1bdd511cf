//! `--htpasswd` and `--anonymous-read`: challenges, every write protected, reload without restart,
//! bcrypt rationed (good credentials remembered, failures slowed, a bound on checks at once), no credentials in logs, docker login.

use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;
use crate::interop_docker::Dockerd;

fn htpasswd(path: &std::path::Path, users: &[(&str, &str)]) {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 6).unwrap()))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn server(anonymous_read: bool) -> (TestServer, std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("htpasswd");
    htpasswd(&file, &[("alice", "secret")]);
    let auth = ferry::server::auth::Htpasswd::new(file.clone(), anonymous_read).unwrap();
    let s = TestServer::start_with(&tmp.path().join("data"), false, Some(auth)).await;
    (s, file, tmp)
}

async fn push_as(url: &str, user: &str, pass: &str, repo: &str, tag: &str) -> StatusCode {
    let c = http();
    let config = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    let d = sha256(&config);
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .basic_auth(user, Some(pass))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    if r.status() != StatusCode::CREATED {
        return r.status();
    }
    let m = image_manifest(&config, &[]);
    c.put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .basic_auth(user, Some(pass))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn credentials_required_challenge_and_reload() {
    let (s, file, _tmp) = server(false).await;
    let r = http().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"ferry\"");
    assert_eq!(error_code(r).await, "UNAUTHORIZED");
    let r = http()
        .get(format!("{}/v2/", s.url))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/v2/", s.url))
        .basic_auth("mallory", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/v2/", s.url))
        .basic_auth("alice", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        push_as(&s.url, "alice", "secret", "a/app", "1").await,
        StatusCode::CREATED
    );
    // Reads need credentials too without --anonymous-read.
    let r = http()
        .get(format!("{}/v2/a/app/manifests/1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A new user, no restart.
    tokio::time::sleep(Duration::from_millis(20)).await;
    htpasswd(&file, &[("alice", "secret"), ("bob", "hunter2")]);
    assert_eq!(
        push_as(&s.url, "bob", "hunter2", "b/app", "1").await,
        StatusCode::CREATED
    );
    s.stop().await;
}

#[tokio::test]
async fn anonymous_read_still_protects_every_write() {
    let (s, _file, _tmp) = server(true).await;
    assert_eq!(
        push_as(&s.url, "alice", "secret", "pub/app", "1").await,
        StatusCode::CREATED
    );
    let r = http()
        .get(format!("{}/v2/pub/app/manifests/1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "pulls need no credentials");
    let r = http()
        .get(format!("{}/v2/pub/app/tags/list", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d = sha256(b"x");
    for req in [
        http().post(format!("{}/v2/pub/app/blobs/uploads/", s.url)),
        http().post(format!(
            "{}/v2/other/blobs/uploads/?mount={d}&from=pub/app",
            s.url
        )),
        http()
            .put(format!("{}/v2/pub/app/manifests/2", s.url))
            .body("{}"),
        http().delete(format!("{}/v2/pub/app/manifests/1", s.url)),
        http().delete(format!("{}/v2/pub/app/blobs/{d}", s.url)),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key("www-authenticate"));
    }
    // A wrong password on a read is refused, not silently treated as anonymous.
    let r = http()
        .get(format!("{}/v2/pub/app/manifests/1", s.url))
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// bcrypt is rationed (issue 25, item 6: 16 clients with wrong passwords took both cores). Counted,
/// not timed: good credentials cost one bcrypt however often they are sent; an unknown user costs
/// one like a wrong password does (never answered without one); at most `bcrypt_slots()` run at
/// once whatever the crowd; failures slow their address down; a changed file forgets what was
/// remembered. And `/metrics` needs credentials as reads do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_is_rationed_good_credentials_remembered_failures_slowed() {
    let (s, file, _tmp) = server(false).await;
    let auth = s.app.auth.clone().unwrap();
    let runs = || auth.bcrypt_runs.load(std::sync::atomic::Ordering::SeqCst);
    let get = |user: &'static str, pass: &'static str| {
        let url = format!("{}/v2/", s.url);
        async move {
            http()
                .get(&url)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..20 {
        assert_eq!(get("alice", "secret").await, StatusCode::OK);
    }
    assert_eq!(runs(), 1, "good credentials are checked once");
    assert_eq!(get("nobody", "secret").await, StatusCode::UNAUTHORIZED);
    assert_eq!(runs(), 2, "an unknown user costs a bcrypt too");
    assert_eq!(get("alice", "wrong").await, StatusCode::UNAUTHORIZED);
    assert_eq!(runs(), 3);
    let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let p = auth
        .penalty(localhost)
        .expect("failures slow their address");
    assert!(p > Duration::ZERO && p <= ferry::server::auth::MAX_PENALTY);

    // A crowd of wrong passwords: never more bcrypt at once than the slots.
    let before = runs();
    let mut crowd = Vec::new();
    for i in 0..16 {
        let url = format!("{}/v2/", s.url);
        crowd.push(tokio::spawn(async move {
            for k in 0..2 {
                let r = http()
                    .get(&url)
                    .basic_auth("alice", Some(format!("guess-{i}-{k}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            }
        }));
        // The good user in the middle of it is answered from what was remembered.
        assert_eq!(get("alice", "secret").await, StatusCode::OK);
    }
    for c in crowd {
        c.await.unwrap();
    }
    assert_eq!(
        runs() - before,
        32,
        "each wrong guess is one bcrypt, the good user none"
    );
    let peak = auth.bcrypt_peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        peak <= ferry::server::auth::bcrypt_slots(),
        "{peak} bcrypt ran at once"
    );

    // /metrics follows the read rule.
    let r = http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http()
        .get(format!("{}/metrics", s.url))
        .basic_auth("alice", Some("secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A new password: the remembered header is forgotten with the old file.
    tokio::time::sleep(Duration::from_millis(20)).await;
    htpasswd(&file, &[("alice", "changed")]);
    assert_eq!(get("alice", "secret").await, StatusCode::UNAUTHORIZED);
    assert_eq!(get("alice", "changed").await, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_and_no_credentials_in_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("htpasswd");
    htpasswd(&file, &[("alice", "s3cret-pass")]);
    let data = tmp.path().join("data");
    let p = crate::process::FerryProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--htpasswd",
            file.to_str().unwrap(),
        ],
        &[("RUST_LOG", "debug")],
    );
    let host = p.url.trim_start_matches("http://").to_owned();
    assert_eq!(
        push_as(&p.url, "alice", "s3cret-pass", "logged/app", "1").await,
        StatusCode::CREATED
    );
    let extra = vec!["--insecure-registry".to_owned(), host.clone()];
    if let Some(d) = tokio::task::spawn_blocking(move || Dockerd::start(&extra))
        .await
        .unwrap()
    {
        let out = tokio::task::spawn_blocking(move || {
            let good = d.docker(&["login", "-u", "alice", "-p", "s3cret-pass", &host]);
            let bad = d.docker(&["login", "-u", "alice", "-p", "wrong", &host]);
            (good, bad)
        })
        .await
        .unwrap();
        assert!(
            out.0.status.success(),
            "{}",
            String::from_utf8_lossy(&out.0.stderr)
        );
        assert!(!out.1.status.success(), "a wrong password must not log in");
    }
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "alice:s3cret-pass",
    );
    let log = p.log.lock().unwrap().join("\n");
    assert!(log.contains("logged/app"), "the log has the requests");
    assert!(
        !log.contains("s3cret-pass") && !log.contains(&token),
        "credentials leaked into the log"
    );
}
