//! Turning a request path into an [`Endpoint`].
//!
//! Repository names contain slashes, so axum cannot route them with a catch-all in the middle; the
//! registry routes `/v2/*` once and parses the rest here, from the right, where the fixed words
//! (`manifests`, `blobs`, `uploads`, `tags/list`, `referrers`) are (the same approach garage takes
//! for S3). Names and references are validated later by their own parsers.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags { name: String },
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    UploadStart { name: String },
    Upload { name: String, id: String },
    Referrers { name: String, digest: String },
}

/// Parse a raw (still percent-encoded) path. `None` means "no such endpoint".
pub fn parse_endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Endpoint::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name_of = |k: usize| -> Option<String> { (k > 0).then(|| segs[..k].join("/")) };
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Some(Endpoint::Tags {
            name: name_of(n - 2)?,
        });
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let name = name_of(n - 3)?;
        return Some(if segs[n - 1].is_empty() {
            Endpoint::UploadStart { name }
        } else {
            Endpoint::Upload {
                name,
                id: segs[n - 1].to_owned(),
            }
        });
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Some(Endpoint::UploadStart {
            name: name_of(n - 2)?,
        });
    }
    if n >= 3 && segs[n - 1].is_empty() {
        return None;
    }
    if n >= 3 {
        let last = segs[n - 1].to_owned();
        let name = name_of(n - 2)?;
        return match segs[n - 2] {
            "manifests" => Some(Endpoint::Manifest {
                name,
                reference: last,
            }),
            "blobs" => Some(Endpoint::Blob { name, digest: last }),
            "referrers" => Some(Endpoint::Referrers { name, digest: last }),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes() {
        use Endpoint::*;
        let s = |x: &str| x.to_owned();
        let cases = [
            ("/v2", Some(Base)),
            ("/v2/", Some(Base)),
            ("/v2/_catalog", Some(Catalog)),
            ("/v2/a/b/c/tags/list", Some(Tags { name: s("a/b/c") })),
            (
                "/v2/a/manifests/latest",
                Some(Manifest {
                    name: s("a"),
                    reference: s("latest"),
                }),
            ),
            (
                "/v2/a/b/blobs/sha256:00",
                Some(Blob {
                    name: s("a/b"),
                    digest: s("sha256:00"),
                }),
            ),
            ("/v2/a/blobs/uploads/", Some(UploadStart { name: s("a") })),
            ("/v2/a/blobs/uploads", Some(UploadStart { name: s("a") })),
            (
                "/v2/a/blobs/uploads/xyz",
                Some(Upload {
                    name: s("a"),
                    id: s("xyz"),
                }),
            ),
            (
                "/v2/blobs/blobs/uploads/",
                Some(UploadStart { name: s("blobs") }),
            ),
            (
                "/v2/a/referrers/sha256:1",
                Some(Referrers {
                    name: s("a"),
                    digest: s("sha256:1"),
                }),
            ),
            ("/v2/manifests/x", None),
            ("/v2/a/other/x", None),
            ("/v3/a/manifests/x", None),
            ("/v2/a/manifests/", None),
            ("/v2x", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse_endpoint(path), want, "{path}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(p in "/v2[/a-z._:-]{0,60}") {
            let _ = parse_endpoint(&p);
        }
    }
}
