//! Request paths → endpoints. Beyond "never panics": whatever name the parser hands on is made of
//! the path's own segments, and a name that passes `RepoName::parse` can never climb out of a
//! directory (no `.`/`..` component, no empty component, no absolute path).
#![no_main]
use ferry::reference::RepoName;
use ferry::server::endpoint::{parse_endpoint, Endpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(ep) = parse_endpoint(path) else {
        return;
    };
    assert!(path.starts_with("/v2"), "{path:?} routed to {ep:?}");
    let name = match &ep {
        Endpoint::Base | Endpoint::Catalog => return,
        Endpoint::Tags { name }
        | Endpoint::Manifest { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::UploadStart { name }
        | Endpoint::Upload { name, .. }
        | Endpoint::Referrers { name, .. } => name,
    };
    assert!(
        path[3..].starts_with(&format!("/{name}/")),
        "{path:?} gave name {name:?}"
    );
    if let Ok(repo) = RepoName::parse(name) {
        let s = repo.as_str();
        assert!(!s.starts_with('/'), "{s:?}");
        for comp in s.split('/') {
            assert!(!comp.is_empty() && comp != "." && comp != "..", "{s:?}");
            assert!(!comp.contains('%') && !comp.contains('\0'), "{s:?}");
        }
    }
});
