//! Resource limits of a shared mirror: upload slots (429 past the cap, slots given back), and the
//! timeouts a slow or silent client runs into (stalled and trickled bodies, slowloris headers,
//! idle connections, oversized heads). Timeouts are shortened to seconds here; the defaults are
//! the same code with larger numbers.

use std::time::{Duration, Instant};

use ferry::server::limits::Limits;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

async fn server(limits: Limits) -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let srv = TestServer::start_opts(
        &tmp.path().join("data"),
        ServerOpts {
            limits,
            ..Default::default()
        },
    )
    .await;
    (srv, tmp)
}

fn short() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        body_stall: Duration::from_secs(1),
        min_body_rate: 1024,
        ..Limits::default()
    }
}

async fn start_session(url: &str) -> String {
    let r = http()
        .post(format!("{url}/v2/lim/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    format!("{url}{loc}")
}

/// Read until the server closes the connection (or `limit` passes); returns what came and when.
async fn read_until_closed(c: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), c.read(&mut chunk)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&buf).into_owned(),
                    Some(start.elapsed()),
                )
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_cap_get_429_and_slots_come_back() {
    let (srv, _tmp) = server(Limits {
        max_uploads_per_client: 2,
        max_uploads: 8,
        ..Limits::default()
    })
    .await;
    let url = srv.url.clone();
    // Two uploads that stay open: their bodies come from channels the test holds.
    let mut senders = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..2 {
        let loc = start_session(&url).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        tx.send(Ok(vec![1u8; 1000])).await.unwrap();
        senders.push(tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        pending.push(tokio::spawn(
            http()
                .patch(loc)
                .header("Content-Type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(stream))
                .send(),
        ));
    }
    let start = Instant::now();
    while metric(&url, "ferry_upload_requests_in_flight").await < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "uploads never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The third concurrent upload from this client is refused, with the spec's code.
    let third = start_session(&url).await;
    let r = http()
        .patch(&third)
        .body(vec![2u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // A monolithic push is an upload too.
    let data = b"monolithic".to_vec();
    let r = http()
        .post(format!(
            "{url}/v2/lim/blobs/uploads/?digest={}",
            sha256(&data)
        ))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Reads are not uploads.
    let r = http().get(format!("{url}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The open uploads finish normally and give their slots back.
    drop(senders);
    for p in pending {
        let r = p.await.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(metric(&url, "ferry_upload_requests_in_flight").await, 0);
    let r = http()
        .patch(&third)
        .body(vec![2u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    push_blob(&url, "lim", &data).await;
    srv.stop().await;
}

#[tokio::test]
async fn open_upload_sessions_are_capped() {
    let (srv, _tmp) = server(Limits {
        max_sessions: 5,
        ..Limits::default()
    })
    .await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(start_session(&srv.url).await);
    }
    let r = http()
        .post(format!("{}/v2/lim/blobs/uploads/", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // Finishing one frees its place.
    let r = http().delete(&sessions[0]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    start_session(&srv.url).await;
    srv.stop().await;
}

/// A new upload session and a connection that has sent the head of a PATCH promising 100,000
/// bytes, and none of them yet.
async fn open_patch(srv: &TestServer) -> (String, TcpStream) {
    let loc = start_session(&srv.url).await;
    let path = loc.trim_start_matches(&srv.url).to_owned();
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!("PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    (loc, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_off_and_what_came_is_kept() {
    let (srv, _tmp) = server(short()).await;
    let (loc, mut c) = open_patch(&srv).await;
    c.write_all(&[7u8; 1000]).await.unwrap();
    // …and then nothing. The server answers and closes within the stall time (plus slack).
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    let took = closed.expect("the server kept a stalled upload open");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("BLOB_UPLOAD_INVALID"), "{text}");
    assert!(text.contains("no body data"), "{text}");
    // The 1000 bytes that did arrive are kept: the client can resume from them.
    let r = http().get(&loc).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-999");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off() {
    let (srv, _tmp) = server(short()).await;
    let (_, c) = open_patch(&srv).await;
    let (mut rd, mut wr) = c.into_split();
    // One byte every 100 ms never stalls for a second, but stays far under 1 KiB/s.
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
        .await
        .expect("no answer to a trickled body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("under the minimum"), "{text}");
    trickle.abort();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_silent_and_idle_connections_are_closed() {
    let (srv, _tmp) = server(short()).await;
    // A head sent one line at a time, forever.
    let c = TcpStream::connect(srv.addr).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let dripping = tokio::spawn(async move {
        let _ = wr.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await;
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut sink)).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "slowloris held the connection {took:?}"
    );
    assert!(!String::from_utf8_lossy(&sink).contains("200 OK"));
    dripping.abort();

    // A connection that never says anything.
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(closed.expect("silent connection kept") < Duration::from_secs(5));

    // A kept-alive connection that goes quiet after a request.
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed.expect("idle connection kept") < Duration::from_secs(5));

    // A connection that keeps working is not cut: requests 600 ms apart for 3 s.
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    for _ in 0..5 {
        c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    srv.stop().await;
}

/// A shutdown drains requests, not connections that have none: a connection a client's pool
/// opened and never used, or one kept alive after its request, does not hold the stop for the
/// header or idle timeout (an hour here; the stop took the whole 30 s default before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_connections_without_a_request() {
    let hour = Duration::from_secs(3600);
    let (srv, _tmp) = server(Limits {
        header_timeout: hour,
        idle_timeout: hour,
        ..Limits::default()
    })
    .await;
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut kept = TcpStream::connect(srv.addr).await.unwrap();
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The server has accepted the silent one (it answered a later connection).
    assert_eq!(
        http()
            .get(format!("{}/v2/", srv.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    tokio::time::timeout(Duration::from_secs(60), srv.stop())
        .await
        .expect("the stop waited for connections with no request in flight");
    for c in [&mut silent, &mut kept] {
        let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf))
            .await
            .expect("a connection left open after the stop");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_is_dropped() {
    let (srv, _tmp) = server(short()).await;
    // Larger than any socket buffers in between, so the server's writes stall.
    let data = bytes(64 << 20, 9);
    let d = push_blob(&srv.url, "lim", &data).await;
    let mut c = TcpStream::connect(srv.addr).await.unwrap();
    c.write_all(format!("GET /v2/lim/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("connection neither closed nor sending"),
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert!(
        got < data.len(),
        "the whole blob arrived after a {}-s pause: the stalled connection was kept",
        4
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_server_is_slow_to_answer_is_not_cut_as_idle() {
    let (srv, tmp) = server(short()).await;
    let config = b"{}".to_vec();
    let layer = bytes(1000, 5);
    push_blob(&srv.url, "lim", &config).await;
    push_blob(&srv.url, "lim", &layer).await;
    // Another process holds the store's index lock (as a slow fsync or a second writer would)
    // until the test lets it go, 2 s after the PUT was sent: the manifest PUT waits in its
    // handler, nothing moves on the wire for longer than the 1-s idle timeout, and the
    // connection must survive it.
    let lock = srv.dir.join(".ferry/lock");
    let (held, release) = (tmp.path().join("held"), tmp.path().join("release"));
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args([
            "sh",
            "-c",
            r#"touch "$1"; while [ ! -e "$2" ]; do sleep 0.05; done"#,
            "sh",
        ])
        .args([&held, &release])
        .spawn()
        .expect("flock (util-linux)");
    while !held.exists() {
        // A holder that ended without taking the lock (no flock) is a failure, not a wait.
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the lock holder ended before taking the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = image_manifest(&config, &[&layer]);
    let put = {
        let url = srv.url.clone();
        tokio::spawn(async move {
            put_manifest(
                &url,
                "lim",
                "slow",
                "application/vnd.oci.image.manifest.v1+json",
                &m,
            )
            .await
            .status()
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!put.is_finished(), "the PUT did not wait for the lock");
    std::fs::write(&release, b"").unwrap();
    assert_eq!(put.await.unwrap(), StatusCode::CREATED);
    let _ = holder.wait();
    srv.stop().await;
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let (srv, _tmp) = server(Limits::default()).await;
    let big = "a".repeat(100 * 1024);
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (status, _) = raw_request(srv.addr, req.as_bytes()).await;
    assert_eq!(status, 431);
    // Just under the limit is fine.
    let ok = "a".repeat(32 * 1024);
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {ok}\r\n\r\n");
    let (status, _) = raw_request(srv.addr, req.as_bytes()).await;
    assert_eq!(status, 200);
    srv.stop().await;
}
