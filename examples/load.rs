//! Load client for `bench/load.sh`: many connections at once against several registries in one
//! run, side by side (time, errors, latency percentiles, each server's peak RSS and descriptors).
//!
//! ```text
//! load --target NAME=URL,PID [--target ...] pull --conns N [--rate-mbps R] [--size-mib M]
//! load --target ... idle --conns N
//! load --target ... push --conns N [--size-kib K]
//! load --target ... seed
//! load --target ... heads --conns N --secs S --path PATH
//! ```
//! `pull`: one blob of M MiB (generated, pushed first) pulled by N clients at once over their own
//! HTTP/1.1 connections, each reading at most R MB/s, every body hashed against its digest.
//! `idle`: N keep-alive connections that each made one request and stay open; the figure is the
//! server's RSS growth divided by N. `push`: N distinct blobs of K KiB pushed at once (POST, then
//! PUT with the body). `seed`: push a small image as `load/img:latest` and print the URL paths of
//! its manifest and its layer, for `wrk`. `heads`: N keep-alive connections sending HEAD requests for
//! S seconds (`wrk` cannot: it waits for the body a HEAD answer announces but never sends). The HTTP client is a few lines over `TcpStream` rather than reqwest: with a
//! thousand connections on two cores the client must cost little next to the servers it measures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Target {
    name: String,
    addr: String,
    pid: u32,
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn reset_peak(pid: u32) {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Raise this process's descriptor limit to the hard limit (a thousand sockets need it).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Reads a response head; returns (status, content-length, body bytes already read).
async fn read_head(s: &mut TcpStream, buf: &mut [u8]) -> Result<(u16, u64, usize), String> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err("response head too large".into());
        }
        let n = s
            .read(&mut buf[filled..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or("no status")?;
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<u64>().ok())?
                })
                .unwrap_or(0);
            buf.copy_within(end + 4..filled, 0);
            return Ok((status, len, filled - end - 4));
        }
    }
}

struct Pulled {
    ttfb: f64,
    total: f64,
}

/// GET `path` on a fresh connection, reading at most `rate` bytes/s, hashing the body.
async fn pull(addr: &str, path: &str, rate: f64, want: &str) -> Result<Pulled, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 << 10];
    let (status, len, pre) = read_head(&mut s, &mut buf).await?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let ttfb = start.elapsed().as_secs_f64();
    let body_start = Instant::now();
    let mut h = sha2::Sha256::new();
    h.update(&buf[..pre]);
    let mut got = pre as u64;
    while got < len {
        let want_n = ((len - got) as usize).min(buf.len());
        let n = s
            .read(&mut buf[..want_n])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("body cut at {got} of {len} bytes"));
        }
        h.update(&buf[..n]);
        got += n as u64;
        if rate > 0.0 {
            let due = Duration::from_secs_f64(got as f64 / rate);
            let el = body_start.elapsed();
            if due > el {
                tokio::time::sleep(due - el).await;
            }
        }
    }
    let d = format!("sha256:{}", hex::encode(h.finalize()));
    if d != want {
        return Err(format!("wrong bytes: {d}"));
    }
    Ok(Pulled {
        ttfb,
        total: start.elapsed().as_secs_f64(),
    })
}

/// One request on `s` (keep-alive), body read and dropped; returns the status.
async fn request(s: &mut TcpStream, head: &str, body: &[u8]) -> Result<u16, String> {
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 << 10];
    let (status, len, pre) = read_head(s, &mut buf).await?;
    let mut left = len.saturating_sub(pre as u64);
    while left > 0 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        left = left.saturating_sub(n as u64);
    }
    Ok(status)
}

fn blob(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Monolithic push: POST for a session, PUT with the whole body. Returns seconds taken.
async fn push(addr: &str, repo: &str, data: &[u8]) -> Result<f64, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let post = format!(
        "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(post.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 << 10];
    let mut filled = 0;
    let head = loop {
        let n = s
            .read(&mut buf[filled..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).to_string();
        }
    };
    if !head.starts_with("HTTP/1.1 202") {
        return Err(format!("POST: {}", head.lines().next().unwrap_or("")));
    }
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .ok_or("no Location")?;
    let location = location
        .strip_prefix(&format!("http://{addr}"))
        .unwrap_or(&location)
        .to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!(
        "PUT {location}{sep}digest={} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sha(data),
        data.len()
    );
    let status = request(&mut s, &put, data).await?;
    if status != 201 {
        return Err(format!("PUT: status {status}"));
    }
    Ok(start.elapsed().as_secs_f64())
}

struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    peak_fds: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

fn sample(pid: u32) -> Sampler {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak_fds = Arc::new(AtomicU64::new(0));
    let (s, p) = (stop.clone(), peak_fds.clone());
    let handle = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            p.fetch_max(fds(pid), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Sampler {
        stop,
        peak_fds,
        handle,
    }
}

impl Sampler {
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
        self.peak_fds.load(Ordering::Relaxed)
    }
}

#[tokio::main]
async fn main() {
    raise_nofile();
    let mut args = std::env::args().skip(1).peekable();
    let mut targets = Vec::new();
    while args.peek().map(|a| a.as_str()) == Some("--target") {
        args.next();
        let t = args.next().expect("--target NAME=URL,PID");
        let (name, rest) = t.split_once('=').expect("NAME=URL,PID");
        let (url, pid) = rest.split_once(',').expect("URL,PID");
        targets.push(Target {
            name: name.into(),
            addr: url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .into(),
            pid: pid.parse().expect("PID"),
        });
    }
    let mode = args.next().expect("pull | idle | push");
    let (mut conns, mut rate_mbps, mut size_mib, mut size_kib) = (128usize, 0.0f64, 64usize, 64);
    let (mut secs, mut path) = (10u64, String::new());
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--conns" => conns = v.parse().expect("N"),
            "--rate-mbps" => rate_mbps = v.parse().expect("MB/s"),
            "--size-mib" => size_mib = v.parse().expect("MiB"),
            "--size-kib" => size_kib = v.parse().expect("KiB"),
            "--secs" => secs = v.parse().expect("seconds"),
            "--path" => path = v,
            _ => panic!("unknown argument {a}"),
        }
    }
    for t in &targets {
        let line = match mode.as_str() {
            "pull" => pull_row(t, conns, rate_mbps, size_mib).await,
            "idle" => idle_row(t, conns).await,
            "push" => push_row(t, conns, size_kib).await,
            "heads" => heads_row(t, conns, secs, &path).await,
            "seed" => {
                println!("{}", seed(t).await);
                continue;
            }
            m => panic!("unknown mode {m}"),
        };
        println!("| {} | {line}", t.name);
    }
}

async fn pull_row(t: &Target, conns: usize, rate_mbps: f64, size_mib: usize) -> String {
    let data = blob(7, size_mib << 20);
    let digest = sha(&data);
    push(&t.addr, "load/pull", &data)
        .await
        .expect("push the blob");
    drop(data);
    let path = format!("/v2/load/pull/blobs/{digest}");
    // Warm the page cache and the server, then measure from a reset peak.
    pull(&t.addr, &path, 0.0, &digest).await.expect("warm pull");
    reset_peak(t.pid);
    let sampler = sample(t.pid);
    let start = Instant::now();
    let rate = rate_mbps * 1e6;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, path, digest) = (t.addr.clone(), path.clone(), digest.clone());
            tokio::spawn(async move { pull(&addr, &path, rate, &digest).await })
        })
        .collect();
    let (mut ttfb, mut total, mut errors, mut first_error) = (vec![], vec![], 0, None);
    for task in tasks {
        match task.await {
            Ok(Ok(p)) => {
                ttfb.push(p.ttfb);
                total.push(p.total);
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let peak_fds = sampler.finish().await;
    let peak = status_kib(t.pid, "VmHWM:");
    ttfb.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    if let Some(e) = first_error {
        eprintln!("{}: first error: {e}", t.name);
    }
    format!(
        "{conns} | {secs:.1} s | {:.0} MB/s | {errors} | {:.0} / {:.0} ms | {:.1} / {:.1} s | {:.1} MiB | {peak_fds} |",
        (ttfb.len() * (size_mib << 20)) as f64 / secs / 1e6,
        pct(&ttfb, 0.5) * 1e3,
        pct(&ttfb, 0.99) * 1e3,
        pct(&total, 0.5),
        pct(&total, 0.99),
        peak as f64 / 1024.0,
    )
}

async fn idle_row(t: &Target, conns: usize) -> String {
    let _ = std::process::Command::new("sync").status();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = status_kib(t.pid, "VmRSS:");
    let fds_before = fds(t.pid);
    let mut open = Vec::with_capacity(conns);
    let mut errors = 0;
    for _ in 0..conns {
        let Ok(mut s) = TcpStream::connect(&t.addr).await else {
            errors += 1;
            continue;
        };
        let head = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", t.addr);
        match request(&mut s, &head, b"").await {
            Ok(200) | Ok(401) => open.push(s),
            _ => errors += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = status_kib(t.pid, "VmRSS:");
    let fds_during = fds(t.pid);
    let held = open.len();
    drop(open);
    let grew = during.saturating_sub(before) as f64;
    format!(
        "{held} | {errors} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {} |",
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        grew / held.max(1) as f64,
        fds_during.saturating_sub(fds_before),
    )
}

/// `conns` connections sending HEAD `path` back to back for `secs` seconds.
async fn heads_row(t: &Target, conns: usize, secs: u64, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, path) = (t.addr.clone(), path.to_owned());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                let head = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                let mut s = match TcpStream::connect(&addr).await {
                    Ok(s) => s,
                    Err(_) => return (lat, 1),
                };
                let mut buf = vec![0u8; 4096];
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if s.write_all(head.as_bytes()).await.is_err() {
                        errors += 1;
                        break;
                    }
                    // A HEAD answer is a head only, whatever its Content-Length says.
                    let mut filled = 0;
                    let ok = loop {
                        match s.read(&mut buf[filled..]).await {
                            Ok(0) | Err(_) => break false,
                            Ok(n) => filled += n,
                        }
                        if buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                            break buf.starts_with(b"HTTP/1.1 200");
                        }
                        if filled == buf.len() {
                            break false;
                        }
                    };
                    if !ok {
                        errors += 1;
                        break;
                    }
                    lat.push(t0.elapsed().as_secs_f64());
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for task in tasks {
        if let Ok((l, e)) = task.await {
            lat.extend(l);
            errors += e;
        }
    }
    lat.sort_by(f64::total_cmp);
    format!(
        "blob HEAD | {:.0} | {:.2}ms | {:.2}ms | {errors} |",
        lat.len() as f64 / secs as f64,
        pct(&lat, 0.5) * 1e3,
        pct(&lat, 0.99) * 1e3,
    )
}

/// A small image as `load/img:latest`; returns "MANIFEST_PATH BLOB_PATH".
async fn seed(t: &Target) -> String {
    let layer = blob(11, 32 << 10);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push(&t.addr, "load/img", &layer).await.expect("push layer");
    push(&t.addr, "load/img", config)
        .await
        .expect("push config");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha(config),
        config.len(),
        sha(&layer),
        layer.len()
    );
    let mut s = TcpStream::connect(&t.addr).await.expect("connect");
    let head = format!(
        "PUT /v2/load/img/manifests/latest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.addr,
        manifest.len()
    );
    let status = request(&mut s, &head, manifest.as_bytes())
        .await
        .expect("PUT manifest");
    assert_eq!(status, 201, "PUT manifest");
    format!(
        "/v2/load/img/manifests/latest /v2/load/img/blobs/{}",
        sha(&layer)
    )
}

async fn push_row(t: &Target, conns: usize, size_kib: usize) -> String {
    let seed0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let blobs: Vec<Vec<u8>> = (0..conns)
        .map(|i| blob(seed0 + i as u64, size_kib << 10))
        .collect();
    reset_peak(t.pid);
    let start = Instant::now();
    let tasks: Vec<_> = blobs
        .into_iter()
        .map(|b| {
            let addr = t.addr.clone();
            tokio::spawn(async move { push(&addr, "load/push", &b).await })
        })
        .collect();
    let (mut lat, mut errors, mut first) = (vec![], 0, None);
    for task in tasks {
        match task.await {
            Ok(Ok(s)) => lat.push(s),
            Ok(Err(e)) => {
                errors += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first {
        eprintln!("{}: first error: {e}", t.name);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    format!(
        "{conns} | {secs:.2} s | {:.0} req/s | {errors} | {:.1} / {:.1} ms | {:.1} MiB |",
        lat.len() as f64 / secs,
        pct(&lat, 0.5) * 1e3,
        pct(&lat, 0.99) * 1e3,
        status_kib(t.pid, "VmHWM:") as f64 / 1024.0,
    )
}
