//! Three `ferry serve --data s3://…` processes behind Debian's nginx (round-robin, streaming
//! uploads), as docs/outgrowing-one-disk.md sets them up: a dockerd 20.10 pushes a multi-layer
//! image and its inline cache through the balancer, a second dockerd pulls it and builds with
//! every step CACHED; and a replica killed with -9 in the middle of an upload costs the client one
//! retry, not the push.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::common::*;
use crate::interop_docker::{assert_all_cached, write, Dockerd};
use crate::process::{listening_port, FerryProcess};

/// nginx in the foreground (one process), balancing over `upstreams`.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[String]) -> Option<Nginx> {
        let nginx = tool("nginx", &["/usr/sbin/nginx"])?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("    server {u} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        // nginx has no "any free port": try a few, moving on when the bind fails.
        for attempt in 0..20u32 {
            let port = (10_000 + (std::process::id() % 4000) * 5 + attempt) as u16;
            let conf = format!(
                "daemon off; master_process off; worker_processes 1;\n\
                 pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n\
                 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                 upstream ferry {{\n{servers}  }}\n\
                 server {{\n    listen 127.0.0.1:{port};\n\
                 {}\n  }}\n}}\n",
                crate::s3_lb::LOCATION_BLOCK
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            let mut child = Command::new(&nginx)
                .args(["-c", &format!("{d}/nginx.conf"), "-p", &d])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let start = Instant::now();
            loop {
                if let Some(_exited) = child.try_wait().unwrap() {
                    break; // most likely the port was taken: next one
                }
                if listening_port(child.id()) == Some(port) {
                    return Some(Nginx {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "nginx did not listen: {}",
                    std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx found no free port")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `location` block of docs/outgrowing-one-disk.md: uploads stream through, unbuffered and
/// unlimited; a replica that refuses the connection is skipped.
pub const LOCATION_BLOCK: &str = "    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    location / {
      proxy_pass http://ferry;
      proxy_set_header Host $http_host;
      proxy_set_header Connection \"\";
      proxy_next_upstream error timeout;
      proxy_read_timeout 900s;
    }";

/// Three replicas on one fresh prefix, as processes.
fn replicas(g: &Garage, prefix: &str) -> Vec<FerryProcess> {
    let data = format!("s3://ferry/{prefix}");
    let env: Vec<(String, String)> = g.envs();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (0..3)
        .map(|_| FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", &data], &env))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_and_builds_cached_through_three_replicas_behind_nginx() {
    let Some(g) = garage() else {
        return;
    };
    let prefix = fresh_prefix();
    let rs = replicas(g, &prefix);
    let ups: Vec<String> = rs
        .iter()
        .map(|r| r.url.trim_start_matches("http://").to_owned())
        .collect();
    let Some(lb) = Nginx::start(&ups) else {
        return;
    };
    let host = lb.host();
    let (h1, h2) = (host.clone(), host.clone());
    let Some(a) = tokio::task::spawn_blocking(move || {
        Dockerd::start(&["--insecure-registry".to_owned(), h1])
    })
    .await
    .unwrap() else {
        return;
    };
    let Some(b) = tokio::task::spawn_blocking(move || {
        Dockerd::start(&["--insecure-registry".to_owned(), h2])
    })
    .await
    .unwrap() else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    // Layers of several MiB: multipart uploads, spread over the replicas by nginx.
    write(ctx.path(), "a.bin", &bytes(7 << 20, 80));
    write(ctx.path(), "b.bin", &bytes(3 << 20, 81));
    write(ctx.path(), "c.bin", &bytes(5000, 82));
    write(
        ctx.path(),
        "Dockerfile",
        b"FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\nCOPY c.bin /c.bin\n",
    );
    let image = format!("{host}/lb/app:1");
    let ctx_path = ctx.path().to_owned();
    let (image2, host2) = (image.clone(), host.clone());
    tokio::task::spawn_blocking(move || {
        a.ok(
            Some(&ctx_path),
            &[
                "build",
                "--build-arg",
                "BUILDKIT_INLINE_CACHE=1",
                "-t",
                &image2,
                ".",
            ],
        );
        let id = a.ok(None, &["image", "inspect", "-f", "{{.Id}}", &image2]);
        a.ok(None, &["push", &image2]);
        // The second daemon: pull, then build with the cache from the mirror: all CACHED.
        b.ok(None, &["pull", &image2]);
        assert_eq!(
            b.ok(None, &["image", "inspect", "-f", "{{.Id}}", &image2]),
            id
        );
        b.forget_everything();
        let log = b.ok(
            Some(&ctx_path),
            &[
                "build",
                "--progress=plain",
                "--cache-from",
                &image2,
                "-t",
                &format!("{host2}/lb/app:2"),
                ".",
            ],
        );
        assert_all_cached(&log, 3);
    })
    .await
    .unwrap();
    // Every replica served part of it.
    for r in &rs {
        let m = http()
            .get(format!("{}/metrics", r.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.lines()
                .any(|l| l.starts_with("ferry_http_requests_total") && !l.ends_with(" 0")),
            "a replica got no request: {m}"
        );
    }
    drop(lb);
}

/// In flight on this replica: uploads being received.
async fn uploads_in_flight(url: &str) -> u64 {
    let m = http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("ferry_upload_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upload_costs_one_retry_not_the_push() {
    let Some(g) = garage() else {
        return;
    };
    let prefix = fresh_prefix();
    let mut rs = replicas(g, &prefix);
    let ups: Vec<String> = rs
        .iter()
        .map(|r| r.url.trim_start_matches("http://").to_owned())
        .collect();
    let Some(lb) = Nginx::start(&ups) else {
        return;
    };
    let url = format!("http://{}", lb.host());
    let data = bytes(16 << 20, 83);
    let d = sha256(&data);
    let r = http()
        .post(format!("{url}/v2/kill/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    // The first chunk, whole.
    let first = 6 << 20;
    let r = http()
        .patch(format!("{url}{loc}"))
        .header("Content-Range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // The second chunk streams in and stops half-way; the replica receiving it is killed.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let second = 12 << 20;
    let req = http()
        .patch(format!("{url}{loc}"))
        .header("Content-Range", format!("{first}-{}", second - 1))
        .header("Content-Length", (second - first).to_string())
        .body(body)
        .send();
    let pending = tokio::spawn(req);
    tx.send(Ok(data[first..first + (3 << 20)].to_vec()))
        .await
        .unwrap();
    let start = Instant::now();
    let victim = loop {
        let mut found = None;
        for (i, r) in rs.iter().enumerate() {
            if uploads_in_flight(&r.url).await > 0 {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no replica is receiving the chunk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    rs[victim].signal("KILL");
    let _ = rs[victim].wait(Duration::from_secs(10));
    drop(tx);
    let r = pending.await.unwrap();
    assert!(
        r.as_ref().map_or(true, |r| !r.status().is_success()),
        "the interrupted chunk cannot have succeeded"
    );
    // The client's retry: ask where the session stands (another replica answers from the
    // bucket) and go on from there.
    let r = http().get(format!("{url}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let range = r.headers()["range"].to_str().unwrap().to_owned();
    let have: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
    assert_eq!(
        have, first,
        "the session stands where the last whole chunk ended"
    );
    let r = http()
        .put(format!("{url}{loc}?digest={d}"))
        .header("Content-Range", format!("{have}-{}", data.len() - 1))
        .body(data[have..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(digest_served(&url, "kill", &d).await, d);
    drop(lb);
}

/// A receiver as a byte stream for a streaming request body.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
