//! Client for `bench/pull_through.sh`: pushes a blob to a registry, and pulls one blob with many
//! clients at once, timing each client's first byte and hashing every body.
//!
//! ```text
//! pullbench push URL REPO SIZE_MIB SEED     prints the blob's digest
//! pullbench pull URL REPO DIGEST CONNS      prints: conns ok errors wall_s ttfb_p50_ms ttfb_p99_ms ttfb_max_ms MB/s
//! ```
//! The same client measures every server in one run, so its own cost is the same for all.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::Digest as _;

fn blob(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
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

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn push(url: &str, repo: &str, mib: usize, seed: u64) {
    let data = blob(seed, mib << 20);
    let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(&data)));
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    let loc = r
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .unwrap()
        .to_owned();
    let loc = if loc.starts_with('/') {
        format!("{url}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .expect("PUT");
    assert!(r.status().is_success(), "push: {}", r.status());
    println!("{digest}");
}

async fn pull(url: String, repo: String, digest: String, conns: usize) {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (c, url, repo, digest) = (c.clone(), url.clone(), repo.clone(), digest.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = c
                    .get(format!("{url}/v2/{repo}/blobs/{digest}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("status {}", r.status()));
                }
                let mut s = r.bytes_stream();
                let mut h = sha2::Sha256::new();
                let mut first = None;
                let mut n = 0u64;
                while let Some(chunk) = s.next().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    if first.is_none() && !chunk.is_empty() {
                        first = Some(t0.elapsed());
                    }
                    n += chunk.len() as u64;
                    h.update(&chunk);
                }
                let got = format!("sha256:{}", hex(&h.finalize()));
                if got != digest {
                    return Err(format!("wrong bytes: {got}"));
                }
                Ok::<_, String>((first.unwrap_or_default(), n))
            })
        })
        .collect();
    let mut ttfb: Vec<Duration> = Vec::new();
    let mut bytes = 0u64;
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await.unwrap() {
            Ok((f, n)) => {
                ttfb.push(f);
                bytes += n;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    ttfb.sort();
    let pct = |p: f64| -> f64 {
        if ttfb.is_empty() {
            return 0.0;
        }
        let i = ((ttfb.len() as f64 - 1.0) * p).round() as usize;
        ttfb[i].as_secs_f64() * 1000.0
    };
    println!(
        "{conns} {} {errors} {wall:.2} {:.2} {:.2} {:.2} {:.0}",
        ttfb.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        bytes as f64 / wall / 1e6
    );
    if let Some(e) = first_error {
        eprintln!("pullbench: first error: {e}");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("push") => {
            push(
                &args[1],
                &args[2],
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
            )
            .await
        }
        Some("pull") => {
            pull(
                args[1].clone(),
                args[2].clone(),
                args[3].clone(),
                args[4].parse().unwrap(),
            )
            .await
        }
        _ => {
            eprintln!(
                "pullbench push URL REPO SIZE_MIB SEED | pullbench pull URL REPO DIGEST CONNS"
            );
            std::process::exit(2);
        }
    }
}
