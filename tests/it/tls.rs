//! TLS as a user sets it up: `ferry tls init` → `ferry serve --tls-cert/--tls-key` → clients that
//! trust the printed CA; a renewal picked up on SIGHUP (and a broken one refused); plain HTTP on the
//! TLS port answered with a 400 that says why; `ferry sync --ca-file` over HTTPS with credentials.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;
use crate::process::FerryProcess;

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry")
}

/// `ferry tls init` as the user runs it; returns what it printed.
pub fn tls_init(out: &Path, hosts: &[&str], port: u16, force: bool) -> String {
    let dir = out.display().to_string();
    let port = port.to_string();
    let mut args = vec!["tls", "init", "--out", &dir, "--port", &port];
    for h in hosts {
        args.extend(["--host", h]);
    }
    if force {
        args.push("--force");
    }
    let o = ferry(&args);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "tls init failed: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// A client that trusts only `ca` (not the system store).
pub fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_init_serve_and_reload_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    let printed = tls_init(&tls, &["127.0.0.1", "localhost"], 5000, false);
    let ca = tls.join("ca.crt");
    for h in ["127.0.0.1:5000", "localhost:5000"] {
        assert!(
            printed.contains(&format!(
                "cp {} /etc/docker/certs.d/{h}/ca.crt",
                ca.display()
            )),
            "{printed}"
        );
        assert!(
            printed.contains(&format!("[registry.\"{h}\"]")),
            "{printed}"
        );
    }
    assert!(printed.contains("update-ca-certificates"), "{printed}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tls.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second init does not silently replace what clients already trust.
    let again = ferry(&[
        "tls",
        "init",
        "--host",
        "x",
        "--out",
        &tls.display().to_string(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let data = tmp.path().join("data").display().to_string();
    let (cert, key) = (
        tls.join("server.crt").display().to_string(),
        tls.join("server.key").display().to_string(),
    );
    let p = FerryProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    let https = p.url.replacen("http://", "https://", 1);
    let port = https.rsplit(':').next().unwrap().to_owned();
    let by_name = format!("https://localhost:{port}");

    // Trusted by the CA, by IP and by name; a blob and a manifest go in and come out.
    let c = client_trusting(&ca);
    let r = c.get(format!("{https}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let blob = b"over tls".to_vec();
    let d = sha256(&blob);
    let r = c
        .post(format!("{by_name}/v2/t/blobs/uploads/?digest={d}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(format!("{https}/v2/t/blobs/{d}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), blob.as_slice());
    // A client that does not trust the CA is refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    tls_init(other.path(), &["127.0.0.1"], 5000, false);
    let stranger = client_trusting(&other.path().join("ca.crt"));
    assert!(stranger.get(format!("{https}/v2/")).send().await.is_err());
    // Plain HTTP on the TLS port: a 400 that says what happened.
    let (status, text) = raw_request(
        p.url.trim_start_matches("http://").parse().unwrap(),
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("HTTP request to an HTTPS server"), "{text}");

    // Renewal: new files, SIGHUP, new connections get the new certificate.
    let old_ca = tmp.path().join("old-ca.crt");
    std::fs::copy(&ca, &old_ca).unwrap();
    tls_init(&tls, &["127.0.0.1", "localhost"], 5000, true);
    let fresh = client_trusting(&ca);
    assert!(
        fresh.get(format!("{https}/v2/")).send().await.is_err(),
        "the new certificate was served before SIGHUP"
    );
    p.signal("HUP");
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = client_trusting(&ca)
            .get(format!("{https}/v2/"))
            .send()
            .await
        {
            assert_eq!(r.status(), StatusCode::OK);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client_trusting(&old_ca)
        .get(format!("{https}/v2/"))
        .send()
        .await
        .is_err());
    // A broken renewal (half-copied key) keeps the working certificate.
    std::fs::write(
        tls.join("server.key"),
        b"-----BEGIN PRIVATE KEY-----\ntrunc",
    )
    .unwrap();
    p.signal("HUP");
    p.wait_for_log("keeping the old certificate").await;
    let r = client_trusting(&ca)
        .get(format!("{https}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_over_tls_with_ca_file_and_credentials() {
    let Some(ip) = require_lan_ip("sync_over_tls_with_ca_file_and_credentials") else {
        return;
    };
    let ip = ip.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    tls_init(&tls, &[&ip], 5000, false);
    let ca = tls.join("ca.crt").display().to_string();
    let pw = tmp.path().join("htpasswd");
    std::fs::write(&pw, format!("ci:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let server_tls =
        ferry::tls::ServerTls::load(&tls.join("server.crt"), &tls.join("server.key")).unwrap();
    let mirror = TestServer::start_opts(
        &tmp.path().join("mirror"),
        ServerOpts {
            tls: Some(std::sync::Arc::new(server_tls)),
            auth: Some(ferry::server::auth::Htpasswd::new(pw, false).unwrap()),
            bind: Some(format!("{ip}:0")),
            ..Default::default()
        },
    )
    .await;
    let plain = TestServer::start().await;
    let manifest = push_image(&plain.url, "app", "v1", 11).await;
    let host = mirror.host();
    let sync = |args: &[&str]| {
        let o = ferry(&[&["sync"], args].concat());
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let src = format!("docker://{}/app:v1", plain.host());
    let dst = format!("docker://{host}/app:v1");
    // Without the CA (the system store does not know it): refused, and the error says why.
    let (code, text) = sync(&[&src, &dst, "--dest-creds", "ci:s3cret"]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    // Trusting some other CA: refused at the handshake too.
    let other = tmp.path().join("other");
    tls_init(&other, &[&ip], 5000, false);
    let other_ca = other.join("ca.crt").display().to_string();
    let (code, text) = sync(&[
        &src,
        &dst,
        "--dest-creds",
        "ci:s3cret",
        "--ca-file",
        &other_ca,
    ]);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error should name the certificate problem: {text}"
    );
    assert!(snapshot(&mirror.dir)
        .keys()
        .all(|k| !k.starts_with("blobs/")));
    // With it (and the credentials): copied, byte for byte.
    let (code, text) = sync(&[&src, &dst, "--dest-creds", "ci:s3cret", "--ca-file", &ca]);
    assert_eq!(code, Some(0), "{text}");
    let out = tmp.path().join("usb");
    let (code, text) = sync(&[
        &dst,
        &out.display().to_string(),
        "--src-creds",
        "ci:s3cret",
        "--ca-file",
        &ca,
    ]);
    assert_eq!(code, Some(0), "{text}");
    let d = sha256(&manifest);
    assert_eq!(
        std::fs::read(out.join("blobs/sha256").join(d.hex())).unwrap(),
        manifest
    );
    mirror.stop().await;
    plain.stop().await;
}

/// Issue #25, item 8: an HTTPS registry whose challenge names a plain-HTTP token service must not
/// receive `--src-creds` there in clear text. The registry here is hostile and written in the
/// test: every request gets `401` with `Bearer realm="http://…"`, and the token service records
/// every request it is sent. ferry refuses, says why, and the token service sees no credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_sent_to_a_plain_http_token_realm() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(ip) = require_lan_ip("credentials_are_never_sent_to_a_plain_http_token_realm") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    tls_init(&tls, &[&ip.to_string()], 5000, false);
    let ca = tls.join("ca.crt").display().to_string();
    // The token service, plain HTTP: keeps every request head it is sent.
    let token = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let token_addr = token.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let token_task = {
        let heads = heads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = token.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 16 << 10];
                let n = c.read(&mut buf).await.unwrap_or(0);
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let body = br#"{"token":"t","access_token":"t"}"#;
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = c.write_all(body).await;
            }
        })
    };
    // The registry, HTTPS with the certificate `tls init` made: a challenge for everything.
    let server_tls =
        ferry::tls::ServerTls::load(&tls.join("server.crt"), &tls.join("server.key")).unwrap();
    // HTTP/1.1 only: the answers below are written by hand.
    let mut config = (*server_tls.config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let registry = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let registry_addr = registry.local_addr().unwrap();
    let challenge = format!(
        "Bearer realm=\"http://{token_addr}/token\",service=\"hostile\",scope=\"repository:app:pull\""
    );
    let registry_task = tokio::spawn(async move {
        loop {
            let Ok((c, _)) = registry.accept().await else {
                return;
            };
            let (acceptor, challenge) = (acceptor.clone(), challenge.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(c).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let src = format!("docker://{registry_addr}/app:v1");
    let out = tmp.path().join("usb").display().to_string();
    let o = ferry(&[
        "sync",
        &src,
        &out,
        "--src-creds",
        "ci:s3cret",
        "--ca-file",
        &ca,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    let heads = heads.lock().unwrap().clone();
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ci:s3cret");
    assert!(
        heads
            .iter()
            .all(|h| !h.contains(&basic) && !h.to_ascii_lowercase().contains("authorization:")),
        "credentials reached the plain-HTTP token service: {heads:?}"
    );
    assert!(
        text.contains(&format!(
            "its token service http://{token_addr}/token is plain HTTP"
        )),
        "the error should name the plain-HTTP token service: {text}"
    );
    token_task.abort();
    registry_task.abort();
}
