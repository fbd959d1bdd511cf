//! Large synthetic stores for `bench/storage.sh`, written straight to disk (no fsync, one
//! index.json) so that generating 100,000 blobs takes seconds.
//!
//! ```text
//! genstore DIR MANIFESTS LAYERS BLOB_BYTES ORPHANS
//! ```
//! MANIFESTS image manifests of LAYERS layers + a config each, tagged `bench/rN:1`; ORPHANS extra
//! unreferenced blobs with an old mtime (what GC should sweep).
//!
//! With `GENSTORE_REPO=NAME` every manifest is a tag of that one repository instead (`NAME:tN`),
//! and all of them share one base layer: the web page's 10,000-tag repository (`bench/ui.sh`).

use std::io::Write;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(
        a.len(),
        5,
        "genstore DIR MANIFESTS LAYERS BLOB_BYTES ORPHANS"
    );
    let dir = std::path::PathBuf::from(&a[0]);
    let (n, layers, size, orphans): (usize, usize, usize, usize) = (
        a[1].parse().unwrap(),
        a[2].parse().unwrap(),
        a[3].parse().unwrap(),
        a[4].parse().unwrap(),
    );
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut counter = 0u64;
    let blob = |content: &[u8]| -> (String, usize) {
        let d = ferry::digest::Digest::sha256_of(content);
        std::fs::write(blobs.join(d.hex()), content).unwrap();
        (d.to_string(), content.len())
    };
    let fill = |counter: &mut u64| -> Vec<u8> {
        *counter += 1;
        let mut v = vec![0u8; size.max(16)];
        v[..8].copy_from_slice(&counter.to_le_bytes());
        v
    };
    let one_repo = std::env::var("GENSTORE_REPO").ok();
    let base = one_repo
        .as_ref()
        .map(|_| blob(b"a base layer every tag shares"));
    let mut index = Vec::with_capacity(n);
    for i in 0..n {
        let mut ls = Vec::new();
        if let Some((d, s)) = &base {
            ls.push(serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":s}));
        }
        for _ in 0..layers {
            let (d, s) = blob(&fill(&mut counter));
            ls.push(serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":s}));
        }
        let (cd, cs) = blob(format!("{{\"i\":{i}}}").as_bytes());
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":cs},
            "layers":ls}))
        .unwrap();
        let (md, ms) = blob(&m);
        let (repo, tag) = match &one_repo {
            Some(r) => (r.clone(), format!("t{i}")),
            None => (format!("bench/r{i}"), "1".to_owned()),
        };
        index.push(serde_json::json!({"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":md,"size":ms,
            "annotations":{"io.ferry.repository":repo,"org.opencontainers.image.ref.name":format!("{repo}:{tag}")}}));
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7 * 86400);
    for _ in 0..orphans {
        let content = fill(&mut counter);
        let d = ferry::digest::Digest::sha256_of(&content);
        let p = blobs.join(d.hex());
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&content).unwrap();
        f.set_modified(old).unwrap();
    }
    let idx = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":index});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    eprintln!(
        "{n} manifests, {} blobs (+{orphans} orphans)",
        n * (layers + 2)
    );
}
