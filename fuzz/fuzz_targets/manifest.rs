//! Manifest bytes → graph edges, the walk both the registry (push checks, referrers, GC) and sync
//! rely on. Properties: never panics on any bytes or declared type; every edge carries a digest that
//! prints back as a valid digest; a manifest that parses has a manifest media type; and anything
//! accepted is valid JSON (so nothing the parser accepts could be served as something else).
#![no_main]
use ferry::digest::Digest;
use ferry::media::{is_manifest_type, parse_manifest, sniff_media_type};
use libfuzzer_sys::fuzz_target;

const DECLARED: [Option<&str>; 7] = [
    None,
    Some(ferry::media::OCI_MANIFEST),
    Some(ferry::media::OCI_INDEX),
    Some(ferry::media::DOCKER_MANIFEST),
    Some(ferry::media::DOCKER_LIST),
    Some(ferry::media::DOCKER_SCHEMA1),
    Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let declared = DECLARED[usize::from(sel) % DECLARED.len()];
    let _ = sniff_media_type(bytes);
    if let Ok(info) = parse_manifest(bytes, declared) {
        assert!(is_manifest_type(&info.media_type), "{}", info.media_type);
        assert!(serde_json::from_slice::<serde_json::Value>(bytes).is_ok());
        for e in &info.edges {
            let again: Digest = e
                .digest
                .to_string()
                .parse()
                .expect("edge digest prints back");
            assert_eq!(again, e.digest);
        }
    }
});
