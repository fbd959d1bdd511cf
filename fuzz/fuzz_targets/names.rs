//! Repository names, references (tag or digest) and digests. Properties: what parses prints back
//! exactly as given (so a stored name is the name the client sent), and a digest's hex is lower-case
//! and as long as its algorithm demands (so it is safe as a file name under blobs/<alg>/).
#![no_main]
use ferry::digest::{Algorithm, Digest};
use ferry::reference::{Reference, RepoName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = RepoName::parse(s) {
        assert_eq!(name.to_string(), s);
        assert!(s.len() <= ferry::reference::MAX_NAME_LEN);
    }
    if let Ok(r) = Reference::parse(s) {
        assert_eq!(r.to_string(), s);
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        let want = match d.algorithm() {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        };
        assert_eq!(d.hex().len(), want, "{s:?}");
        assert!(d
            .hex()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
});
