//! Load client for `bench/registry.sh`: runs the same scenarios against several registries in one
//! run and prints a side-by-side table (throughput, requests/s, each server's peak RSS).
//!
//! ```text
//! regbench --target NAME=URL,PID[+PID...] [--target ...] [--scale 1.0] [--small N]
//!          [--concurrent N] [--shared-mib M]
//! ```
//! A target served by several processes (replicas behind a balancer) lists their PIDs with `+`:
//! CPU is their sum, peak RSS the largest one's (per replica).
//! Peak RSS is per scenario: the server's `VmHWM` is reset before each one (`/proc/PID/clear_refs`
//! = 5, Linux ≥ 4.0) and read after; the largest of them is the whole run's peak. Server CPU is
//! the server process's user + system time (`/proc/PID/stat`) over the scenario, per GB moved. Blob contents are generated (never read from disk) and hashed
//! before the timed part, so the client's own CPU goes to moving bytes.

use std::time::Instant;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use sha2::Digest as _;

struct Target {
    name: String,
    url: String,
    pids: Vec<u32>,
}

struct Row {
    scenario: String,
    figures: Vec<Figure>,
}

struct Figure {
    target: String,
    mbps: f64,
    rps: f64,
    peak_kib: u64,
    /// Server CPU seconds per GB (10^9 bytes) moved.
    cpu_per_gb: f64,
}

/// The server's CPU time so far (user + system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

const CHUNK: usize = 1 << 20;

/// Deterministic content: a random 1 MiB block with the chunk number and seed stamped in front.
fn chunk(block: &[u8], seed: u64, i: u64, len: usize) -> Bytes {
    let mut c = block[..len].to_vec();
    let stamp = (seed << 32 | i).to_le_bytes();
    let n = stamp.len().min(len);
    c[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(c)
}

fn block() -> Vec<u8> {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn chunks(block: &[u8], seed: u64, size: u64) -> Vec<(u64, usize)> {
    let mut v = Vec::new();
    let mut off = 0u64;
    let mut i = 0;
    while off < size {
        let len = (size - off).min(CHUNK as u64) as usize;
        v.push((i, len));
        off += len as u64;
        i += 1;
    }
    let _ = (block, seed);
    v
}

fn digest_of(block: &[u8], seed: u64, size: u64) -> String {
    let mut h = sha2::Sha256::new();
    for (i, len) in chunks(block, seed, size) {
        h.update(chunk(block, seed, i, len));
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Flush dirty pages so that each scenario starts from the same state whoever ran before it.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn reset_peak(pids: &[u32]) {
    settle();
    for pid in pids {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

fn cpu_all(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

fn peak_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// A latency row: p50 and p99 of `lat` (seconds), in ms.
fn latency_line(scenario: &str, target: &str, mut lat: Vec<f64>) -> String {
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] * 1e3;
    format!(
        "| {scenario} | {target} | {:.1} ms | {:.1} ms |",
        p(0.5),
        p(0.99)
    )
}

async fn push_streamed(
    c: &reqwest::Client,
    url: &str,
    block: &[u8],
    seed: u64,
    size: u64,
    digest: &str,
) {
    let r = c
        .post(format!("{url}/v2/bench/big/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 202, "POST session");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let block = Bytes::copy_from_slice(block);
    let body = stream::iter(chunks(&block, seed, size))
        .map(move |(i, len)| Ok::<_, std::io::Error>(chunk(&block, seed, i, len)));
    let r = c
        .patch(&loc)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), 202, "PATCH");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 201, "PUT");
}

async fn pull(c: &reqwest::Client, url: &str, repo: &str, digest: &str) -> u64 {
    let r = c
        .get(format!("{url}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200, "GET {digest}");
    let mut s = r.bytes_stream();
    let mut n = 0u64;
    while let Some(b) = s.next().await {
        n += b.expect("body").len() as u64;
    }
    n
}

#[tokio::main]
async fn main() {
    let mut targets = Vec::new();
    let mut scale = 1.0f64;
    let mut small_count: Option<u64> = None;
    let mut concurrent = 32usize;
    let mut shared_mib: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--target" => {
                let v = args.next().expect("--target NAME=URL,PID");
                let (name, rest) = v.split_once('=').expect("NAME=URL,PID");
                let (url, pids) = rest.split_once(',').expect("URL,PID");
                targets.push(Target {
                    name: name.into(),
                    url: url.into(),
                    pids: pids.split('+').map(|p| p.parse().expect("pid")).collect(),
                });
            }
            "--scale" => scale = args.next().expect("--scale F").parse().expect("number"),
            "--small" => small_count = Some(args.next().expect("--small N").parse().expect("n")),
            "--concurrent" => concurrent = args.next().expect("--concurrent N").parse().expect("n"),
            "--shared-mib" => {
                shared_mib = Some(args.next().expect("--shared-mib M").parse().expect("m"))
            }
            _ => panic!("unknown argument {a}"),
        }
    }
    assert!(!targets.is_empty(), "give at least one --target");
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let block = block();
    let big = (1024.0 * 1024.0 * 1024.0 * scale) as u64;
    let shared = (shared_mib.unwrap_or(256.0 * scale) * 1024.0 * 1024.0) as u64;
    let small_n = small_count.unwrap_or((1000.0 * scale).max(10.0) as u64);
    let small = 64 * 1024u64;
    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;

    eprintln!("hashing test data (untimed)...");
    let big_digest = digest_of(&block, 1, big);
    let shared_digest = digest_of(&block, 2, shared);
    let small_digests: Vec<(u64, String)> = (0..small_n)
        .map(|i| (1000 + i, digest_of(&block, 1000 + i, small)))
        .collect();

    let mut rows: Vec<Row> = Vec::new();
    let mut latency: Vec<String> = Vec::new();
    // CPU is counted from the last `reset_peak` (each scenario starts with one).
    let cpu_mark = std::cell::Cell::new(0.0f64);
    let reset_peak = |pids: &[u32]| {
        reset_peak(pids);
        cpu_mark.set(cpu_all(pids));
    };
    let mut record = |scenario: &str, t: &Target, mbps: f64, rps: f64, peak: u64, bytes: u64| {
        let f = Figure {
            target: t.name.clone(),
            mbps,
            rps,
            peak_kib: peak,
            cpu_per_gb: (cpu_all(&t.pids) - cpu_mark.get()) / (bytes as f64 / 1e9),
        };
        if let Some(r) = rows.iter_mut().find(|r| r.scenario == scenario) {
            r.figures.push(f);
        } else {
            rows.push(Row {
                scenario: scenario.into(),
                figures: vec![f],
            });
        }
    };

    for t in &targets {
        eprintln!("== {} ({})", t.name, t.url);
        // 1 GiB push (POST, one streamed PATCH, PUT ?digest=), as docker pushes a layer.
        reset_peak(&t.pids);
        let s = Instant::now();
        push_streamed(&c, &t.url, &block, 1, big, &big_digest).await;
        let secs = s.elapsed().as_secs_f64();
        record(
            "push 1 blob of 1 GiB",
            t,
            mb(big, secs),
            3.0 / secs,
            peak_kib(&t.pids),
            big,
        );

        reset_peak(&t.pids);
        let s = Instant::now();
        let n = pull(&c, &t.url, "bench/big", &big_digest).await;
        assert_eq!(n, big);
        let secs = s.elapsed().as_secs_f64();
        record(
            "pull 1 blob of 1 GiB",
            t,
            mb(big, secs),
            1.0 / secs,
            peak_kib(&t.pids),
            big,
        );

        // The same pull with curl as the client: on 2 cores the Rust client above saturates first,
        // so this row shows more of the server. Best of three.
        reset_peak(&t.pids);
        let mut best = 0.0f64;
        for _ in 0..3 {
            let out = std::process::Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "-w", "%{speed_download}"])
                .arg(format!("{}/v2/bench/big/blobs/{big_digest}", t.url))
                .output();
            if let Ok(o) = out {
                if o.status.success() {
                    let bps: f64 = String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse()
                        .unwrap_or(0.0);
                    best = best.max(bps / 1e6);
                }
            }
        }
        if best > 0.0 {
            record(
                "pull 1 blob of 1 GiB (curl client, best of 3)",
                t,
                best,
                best * 1e6 / big as f64,
                peak_kib(&t.pids),
                3 * big,
            );
        }

        // 1,000 x 64 KiB: POST + PUT with body per blob, 8 at a time.
        reset_peak(&t.pids);
        let s = Instant::now();
        let lat = stream::iter(small_digests.iter().cloned())
            .map(|(seed, d)| {
                let c = c.clone();
                let url = t.url.clone();
                let body = chunk(&block, seed, 0, small as usize);
                async move {
                    let t0 = Instant::now();
                    let r = c
                        .post(format!("{url}/v2/bench/small/blobs/uploads/"))
                        .send()
                        .await
                        .expect("POST");
                    assert_eq!(r.status(), 202);
                    let loc = r.headers()["location"].to_str().unwrap().to_owned();
                    let loc = if loc.starts_with("http") {
                        loc
                    } else {
                        format!("{url}{loc}")
                    };
                    let sep = if loc.contains('?') { '&' } else { '?' };
                    let r = c
                        .put(format!("{loc}{sep}digest={d}"))
                        // Distribution's s3 driver wants it on the final PUT.
                        .header("Content-Type", "application/octet-stream")
                        .body(body)
                        .send()
                        .await
                        .expect("PUT");
                    assert_eq!(r.status(), 201);
                    t0.elapsed().as_secs_f64()
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<f64>>()
            .await;
        latency.push(latency_line(
            &format!("push {small_n} blobs of 64 KiB (8 parallel), POST + PUT"),
            &t.name,
            lat,
        ));
        let secs = s.elapsed().as_secs_f64();
        record(
            &format!("push {small_n} blobs of 64 KiB (8 parallel)"),
            t,
            mb(small * small_n, secs),
            2.0 * small_n as f64 / secs,
            peak_kib(&t.pids),
            small * small_n,
        );

        reset_peak(&t.pids);
        let s = Instant::now();
        let lat = stream::iter(small_digests.iter().cloned())
            .map(|(_, d)| {
                let c = c.clone();
                let url = t.url.clone();
                async move {
                    let t0 = Instant::now();
                    pull(&c, &url, "bench/small", &d).await;
                    t0.elapsed().as_secs_f64()
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<f64>>()
            .await;
        latency.push(latency_line(
            &format!("pull {small_n} blobs of 64 KiB (8 parallel)"),
            &t.name,
            lat,
        ));
        let secs = s.elapsed().as_secs_f64();
        record(
            &format!("pull {small_n} blobs of 64 KiB (8 parallel)"),
            t,
            mb(small * small_n, secs),
            small_n as f64 / secs,
            peak_kib(&t.pids),
            small * small_n,
        );

        // `concurrent` clients pulling one 256 MiB blob at once.
        push_streamed(&c, &t.url, &block, 2, shared, &shared_digest).await;
        reset_peak(&t.pids);
        let s = Instant::now();
        let total: u64 = stream::iter(0..concurrent)
            .map(|_| {
                let c = c.clone();
                let url = t.url.clone();
                let d = shared_digest.clone();
                async move { pull(&c, &url, "bench/big", &d).await }
            })
            .buffer_unordered(concurrent)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .sum();
        assert_eq!(total, concurrent as u64 * shared);
        let secs = s.elapsed().as_secs_f64();
        record(
            &format!(
                "{concurrent} concurrent pulls of one {} MiB blob",
                shared >> 20
            ),
            t,
            mb(total, secs),
            concurrent as f64 / secs,
            peak_kib(&t.pids),
            total,
        );

        // The same with 32 curl processes as the clients.
        reset_peak(&t.pids);
        let url = format!("{}/v2/bench/big/blobs/{shared_digest}", t.url);
        let s = Instant::now();
        let children: Vec<_> = (0..concurrent)
            .filter_map(|_| {
                std::process::Command::new("curl")
                    .args(["-sf", "-o", "/dev/null", &url])
                    .spawn()
                    .ok()
            })
            .collect();
        let ok = children.len() == concurrent
            && children
                .into_iter()
                // Wait for every child (no short-circuit), then check them all.
                .map(|mut c| c.wait().is_ok_and(|st| st.success()))
                .collect::<Vec<bool>>()
                .into_iter()
                .all(|ok| ok);
        let secs = s.elapsed().as_secs_f64();
        if ok {
            record(
                &format!(
                    "{concurrent} concurrent pulls of one {} MiB blob (curl clients)",
                    shared >> 20
                ),
                t,
                mb(concurrent as u64 * shared, secs),
                concurrent as f64 / secs,
                peak_kib(&t.pids),
                concurrent as u64 * shared,
            );
        }
    }

    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    print!("| scenario |");
    for n in &names {
        print!(" {n} MB/s | {n} req/s | {n} CPU s/GB | {n} peak RSS |");
    }
    if names.len() == 2 {
        print!(" {0} / {1} MB/s | {0} / {1} CPU |", names[0], names[1]);
    }
    println!();
    print!("|---|");
    for _ in &names {
        print!("---:|---:|---:|---:|");
    }
    if names.len() == 2 {
        print!("---:|---:|");
    }
    println!();
    for r in &rows {
        print!("| {} |", r.scenario);
        for f in &r.figures {
            print!(
                " {:.0} | {:.1} | {:.2} | {:.1} MiB |",
                f.mbps,
                f.rps,
                f.cpu_per_gb,
                f.peak_kib as f64 / 1024.0
            );
        }
        if let [a, b] = &r.figures[..] {
            print!(
                " {:.2}x | {:.2}x |",
                a.mbps / b.mbps,
                a.cpu_per_gb / b.cpu_per_gb.max(1e-9)
            );
        }
        println!();
    }
    println!("\n| small requests | server | p50 | p99 |\n|---|---|---:|---:|");
    for l in &latency {
        println!("{l}");
    }
    // The whole run's peak: scenarios are the only time the servers work, and each one's peak
    // was read after it.
    for t in &targets {
        let peak = rows
            .iter()
            .flat_map(|r| r.figures.iter())
            .filter(|f| f.target == t.name)
            .map(|f| f.peak_kib)
            .max()
            .unwrap_or(0);
        println!(
            "\n{}: peak RSS over the whole run {:.1} MiB",
            t.name,
            peak as f64 / 1024.0
        );
    }
}
