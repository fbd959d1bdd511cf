//! Test data for `bench/sync.sh`: an OCI image layout of synthetic images.
//!
//! ```text
//! gendata DIR IMAGES LAYERS MIN_BYTES MAX_BYTES SEED [PREFIX]
//! ```
//! Each image `PREFIXNN:1` (default prefix `bench/img`) has a config and LAYERS layers whose sizes spread log-uniformly
//! between MIN_BYTES and MAX_BYTES (deterministic per SEED). Written through ferry's own store.

use bytes::Bytes;
use ferry::digest::Digest;
use ferry::layout::Store;
use ferry::reference::{Reference, RepoName};

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        a.len() == 6 || a.len() == 7,
        "gendata DIR IMAGES LAYERS MIN_BYTES MAX_BYTES SEED [PREFIX]"
    );
    let prefix = a.get(6).cloned().unwrap_or_else(|| "bench/img".to_owned());
    let (images, layers): (usize, usize) = (a[1].parse().unwrap(), a[2].parse().unwrap());
    let (min, max): (f64, f64) = (a[3].parse().unwrap(), a[4].parse().unwrap());
    let mut seed: u64 = a[5].parse::<u64>().unwrap() | 1;
    let store = Store::open(&a[0], false).expect("store");
    let block: Vec<u8> = (0..(1 << 20))
        .map(|_| (rng(&mut seed) >> 24) as u8)
        .collect();
    let mut total = 0u64;
    for i in 0..images {
        let mut descs = Vec::new();
        for _ in 0..layers {
            let f = (rng(&mut seed) % 10_000) as f64 / 10_000.0;
            let size = (min.ln() + f * (max.ln() - min.ln())).exp() as usize;
            let stamp = rng(&mut seed).to_le_bytes();
            let mut data = Vec::with_capacity(size);
            while data.len() < size {
                let n = (size - data.len()).min(block.len());
                data.extend_from_slice(&block[..n]);
            }
            data[..8.min(size)].copy_from_slice(&stamp[..8.min(size)]);
            let d = Digest::sha256_of(&data);
            total += size as u64;
            descs.push(serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d.to_string(),"size":size}));
            store
                .put_blob(
                    futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(data))]),
                    &d,
                )
                .await
                .expect("blob");
        }
        let config = format!(r#"{{"architecture":"amd64","os":"linux","image":{i}}}"#).into_bytes();
        let cd = Digest::sha256_of(&config);
        store
            .put_blob(
                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(config.clone()))]),
                &cd,
            )
            .await
            .expect("config");
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd.to_string(),"size":config.len()},
            "layers": descs,
        }))
        .unwrap();
        store
            .put_manifest(
                &RepoName::parse(&format!("{prefix}{i:02}")).unwrap(),
                &Reference::Tag("1".into()),
                Bytes::from(m),
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .await
            .expect("manifest");
    }
    eprintln!(
        "{images} images, {} blobs, {total} layer bytes",
        images * (layers + 1)
    );
}
