//! The `ferry` binary as a user runs it: flags and environment, one log line per request, and a
//! clean stop on SIGTERM/SIGINT with requests in flight.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use crate::common::*;

pub struct FerryProcess {
    pub child: Child,
    pub url: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FerryProcess {
    /// Start `ferry serve` with extra args/env, wait for its "listening" line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> FerryProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.arg("serve")
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ferry");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("ferry did not start: {:?}", log.lock().unwrap()));
        FerryProcess {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Wait (up to 10 s) until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let start = std::time::Instant::now();
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no log line with {needle:?}: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                start.elapsed() < timeout,
                "ferry did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_settings_logging_and_sigterm_with_a_request_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("store");
    let mut p = FerryProcess::start(
        &[],
        &[
            ("FERRY_LISTEN", "127.0.0.1:0"),
            ("FERRY_DATA", data.to_str().unwrap()),
            ("RUST_LOG", "info"),
        ],
    );
    assert!(data.join("oci-layout").is_file(), "FERRY_DATA was used");
    push_image(&p.url, "proc/app", "v1", 30).await;
    let logged = || {
        p.log.lock().unwrap().iter().any(|l| {
            l.contains("PUT") && l.contains("/v2/proc/app/manifests/v1") && l.contains("status=201")
        })
    };
    for _ in 0..100 {
        if logged() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        logged(),
        "one log line per request: {:?}",
        p.log.lock().unwrap()
    );

    // A slow upload in flight: its body arrives in pieces, the signal comes in the middle.
    let data_bytes = bytes(3 * 1024 * 1024, 31);
    let d = sha256(&data_bytes);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data_bytes
        .chunks(256 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let stream = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        c
    });
    use futures_util::StreamExt;
    let url = format!("{}/v2/proc/app/blobs/uploads/?digest={d}", p.url);
    let upload = tokio::spawn(async move {
        http()
            .post(url)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.signal("TERM");
    let status = upload.await.unwrap().expect("in-flight request completes");
    assert_eq!(status, StatusCode::CREATED);
    let st = tokio::task::block_in_place(|| p.wait(Duration::from_secs(30)));
    assert!(st.success(), "exit status {st:?}");
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
    assert_eq!(
        ferry::layout::hash_file(
            &data.join("blobs/sha256").join(d.hex()),
            ferry::digest::Algorithm::Sha256
        )
        .unwrap(),
        d
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_read_only_and_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ro");
    // --read-only on a directory that is not a layout is refused with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--read-only",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an OCI image layout"));

    let mut p = FerryProcess::start(
        &["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()],
        &[],
    );
    push_image(&p.url, "ro/app", "v1", 32).await;
    p.signal("INT");
    assert!(tokio::task::block_in_place(|| p.wait(Duration::from_secs(30))).success());
    drop(p);

    let p = FerryProcess::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--read-only",
        ],
        &[],
    );
    let r = http()
        .get(format!("{}/v2/ro/app/manifests/v1", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http()
        .post(format!("{}/v2/ro/app/blobs/uploads/", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_directory_lose_no_tag() {
    // Two processes publishing tags into the same data directory at once: index.json is
    // rewritten under the lock file, so every tag survives and both servers see all of them.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shared");
    let d = data.to_str().unwrap();
    let a = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", d], &[]);
    let b = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", d], &[]);
    let m = push_image(&a.url, "two/app", "seed", 33).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            put_manifest(
                &url,
                "two/app",
                &format!("t{i:02}"),
                "application/vnd.oci.image.manifest.v1+json",
                &m,
            )
            .await
            .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    for url in [&a.url, &b.url] {
        let v: serde_json::Value = http()
            .get(format!("{url}/v2/two/app/tags/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["tags"].as_array().unwrap().len(), 41, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_is_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let _ = tx.send(v);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let listen = first["fields"]["listen"]
        .as_str()
        .expect("listen field")
        .to_owned();
    let r = http()
        .get(format!("http://{listen}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let request = loop {
        let v = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a request line");
        if v["fields"]["message"] == "request" {
            break v;
        }
    };
    assert_eq!(request["fields"]["method"], "GET");
    assert_eq!(request["fields"]["path"], "/v2/");
    assert_eq!(request["fields"]["status"], 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// The port a process listens on, from its own sockets (/proc/PID/fd) and the kernel's TCP table
/// (/proc/PID/net/tcp): known as soon as `listen(2)` returned, without a word from the process.
pub fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|x| x.strip_suffix(']')) {
                inodes.insert(n.to_owned());
            }
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is the 10th field.
        (f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]))
            .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
            .flatten()
    })
}

/// SIGHUP the moment the server listens must not kill it (a service manager may reload at
/// once). Deterministic, not a race that usually passes: ferry's standard error is a pipe the
/// test has filled, so ferry blocks writing its "listening" line and stays frozen at exactly the
/// point where it announces itself. The signal is sent there. Handlers installed before the
/// listener (the fix) catch it; a handler installed after the announcement (the old code) does
/// not exist yet, and SIGHUP's default action kills the process — every time.
#[test]
fn sighup_at_the_moment_of_listening_does_not_stop_the_server() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data").display().to_string();
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    // Fill the pipe: non-blocking writes until it is full, then blocking again (the flag belongs
    // to the open file, which the child shares, and the child must block, not fail).
    let fd = writer.as_raw_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(flags >= 0);
    assert_eq!(
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) },
        0
    );
    let junk = [b'#'; 4096];
    let mut filled = 0usize;
    loop {
        match writer.write(&junk) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }, 0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data", &data])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("spawn ferry");
    let pid = child.id();
    let start = std::time::Instant::now();
    let port = loop {
        if let Some(p) = listening_port(pid) {
            break p;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("ferry exited before listening: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ferry never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // Listening, and blocked on the full pipe before (or while) announcing it.
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // Let it go on: drain the pipe (our junk first, then ferry's lines) on a thread.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut skipped = 0usize;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let from = filled.saturating_sub(skipped).min(n);
            skipped += n;
            log2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[from..n]));
        }
    });
    let start = std::time::Instant::now();
    while !log.lock().unwrap().contains("nothing to reload") {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "ferry was killed by a SIGHUP at start-up ({st}); log: {}",
                log.lock().unwrap()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no SIGHUP log line: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(log.lock().unwrap().contains("ferry registry listening"));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(child.try_wait().unwrap().is_none(), "ferry exited");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sighup_without_tls_does_not_stop_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data").display().to_string();
    let mut p = FerryProcess::start(&["--listen", "127.0.0.1:0", "--data", &data], &[]);
    p.signal("HUP");
    p.wait_for_log("nothing to reload").await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "ferry exited on SIGHUP"
    );
    let r = http().get(format!("{}/v2/", p.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
