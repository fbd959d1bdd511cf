//! Where `ferry sync` reads from and writes to: a registry or a directory (an OCI image layout).
//!
//! ```text
//! docker://HOST[:PORT]                      every repository of the registry (its catalog)
//! docker://HOST[:PORT]/REPO                 every tag of REPO
//! docker://HOST[:PORT]/REPO:TAG             one tag
//! docker://HOST[:PORT]/REPO@sha256:…        one manifest by digest
//! oci:PATH  or  PATH                        a directory in ferry's format, all its tags
//! s3://BUCKET[/PREFIX]                      the same layout in an S3-compatible bucket
//! oci-archive:PATH                          a tar of an OCI image layout (skopeo's and podman's
//!                                           format); PATH.000 or PATH.index for split volumes
//! docker-archive:PATH                       what `docker load -i` takes (a destination only)
//! ```
//!
//! Anything else that starts like a scheme (`dcoker://…`, `s4://…`) is
//! refused with the list above, never taken as a relative directory to create: a typo must not
//! become `./s3:/bucket`. A directory whose name has a colon is written `./NAME` or `oci:NAME`.

use std::fmt;
use std::path::PathBuf;

use crate::error::Error;
use crate::vocab::digest::Digest;
use crate::vocab::reference::{is_valid_name, is_valid_tag, Reference};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Registry {
        host: String,
        repo: Option<String>,
        reference: Option<Reference>,
    },
    Dir {
        path: PathBuf,
    },
    /// An OCI image layout in an object store: `oci-layout` and `blobs/<alg>/<hex>` under
    /// `prefix` (empty, or ending in `/`), ferry's records under `prefix.ferry/`.
    Bucket {
        bucket: String,
        prefix: String,
    },
    /// A tar of an OCI image layout, one file or split volumes (`crate::carry::archive`).
    OciArchive {
        path: PathBuf,
    },
    /// `docker save`'s format, for `docker load -i`: written, never read.
    DockerArchive {
        path: PathBuf,
    },
}

fn bad(s: &str, why: &str) -> Error {
    Error::Usage(format!("bad location {s:?}: {why}"))
}

/// The location forms ferry knows, for error messages.
pub const KNOWN_FORMS: &str = "docker://HOST[:PORT][/REPO[:TAG|@DIGEST]] (a registry), \
     oci:PATH or PATH (a directory; write ./NAME for a directory whose name has a colon), \
     s3://BUCKET[/PREFIX] (an S3-compatible bucket), \
     oci-archive:PATH (a tar of an OCI image layout), \
     docker-archive:PATH (for docker load)";

/// S3's bucket naming rules (3–63 lower-case letters, digits, dots and hyphens, starting and
/// ending with a letter or digit): anything else is a typo, refused before any request.
fn is_valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A key prefix: path segments without `.`/`..`/empty ones, printable, no backslash; returned
/// with a trailing `/` (or empty).
fn parse_prefix(p: &str) -> Option<String> {
    let p = p.trim_matches('/');
    if p.is_empty() {
        return Some(String::new());
    }
    p.split('/')
        .all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.chars().all(|c| !c.is_control() && c != '\\')
        })
        .then(|| format!("{p}/"))
}

/// `scheme:` at the start, in RFC 3986's grammar (a letter, then letters, digits, `+`, `-`, `.`).
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

impl Location {
    pub fn parse(s: &str) -> Result<Location, Error> {
        if let Some(rest) = s.strip_prefix("docker://") {
            let rest = rest.trim_end_matches('/');
            let (host, path) = match rest.split_once('/') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            if host.is_empty() {
                return Err(bad(s, "no registry host"));
            }
            let Some(path) = path else {
                return Ok(Location::Registry {
                    host: host.to_owned(),
                    repo: None,
                    reference: None,
                });
            };
            let (repo, reference) = if let Some((r, d)) = path.split_once('@') {
                let d = d.parse::<Digest>().map_err(|e| bad(s, &e.to_string()))?;
                (r, Some(Reference::Digest(d)))
            } else {
                let last_slash = path.rfind('/').map_or(0, |i| i + 1);
                match path[last_slash..].rfind(':') {
                    Some(i) => {
                        let (r, t) = (&path[..last_slash + i], &path[last_slash + i + 1..]);
                        if !is_valid_tag(t) {
                            return Err(bad(s, "invalid tag"));
                        }
                        (r, Some(Reference::Tag(t.to_owned())))
                    }
                    None => (path, None),
                }
            };
            if !is_valid_name(repo) {
                return Err(bad(s, "invalid repository name"));
            }
            return Ok(Location::Registry {
                host: host.to_owned(),
                repo: Some(repo.to_owned()),
                reference,
            });
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !is_valid_bucket(bucket) {
                return Err(bad(
                    s,
                    "invalid bucket name (S3 naming rules: 3-63 of a-z 0-9 . -)",
                ));
            }
            let prefix = parse_prefix(prefix).ok_or_else(|| bad(s, "invalid key prefix"))?;
            return Ok(Location::Bucket {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        for (scheme, docker) in [("oci-archive:", false), ("docker-archive:", true)] {
            if let Some(p) = s.strip_prefix(scheme) {
                if p.is_empty() {
                    return Err(bad(s, "empty path"));
                }
                let path = PathBuf::from(p);
                return Ok(if docker {
                    Location::DockerArchive { path }
                } else {
                    Location::OciArchive { path }
                });
            }
        }
        let path = match s.strip_prefix("oci:") {
            Some(p) => p,
            None => {
                if let Some(scheme) = scheme_of(s) {
                    return Err(Error::Usage(format!(
                        "unknown location {s:?}: ferry does not know the scheme {scheme:?}; \
                         a location is {KNOWN_FORMS}"
                    )));
                }
                s
            }
        };
        if path.is_empty() {
            return Err(bad(s, "empty path"));
        }
        Ok(Location::Dir {
            path: PathBuf::from(path),
        })
    }

    /// Loopback registries are spoken to in plain HTTP, as docker and BuildKit do.
    pub fn is_loopback_registry(&self) -> bool {
        match self {
            Location::Registry { host, .. } => is_loopback_host(host),
            _ => false,
        }
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    let h = host
        .strip_prefix('[')
        .and_then(|x| x.split_once(']').map(|(a, _)| a))
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(a, _)| a));
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry {
                host,
                repo,
                reference,
            } => {
                write!(f, "docker://{host}")?;
                if let Some(r) = repo {
                    write!(f, "/{r}")?;
                }
                match reference {
                    Some(Reference::Tag(t)) => write!(f, ":{t}"),
                    Some(Reference::Digest(d)) => write!(f, "@{d}"),
                    None => Ok(()),
                }
            }
            Location::Dir { path } => write!(f, "oci:{}", path.display()),
            Location::Bucket { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::Bucket { bucket, prefix } => {
                write!(f, "s3://{bucket}/{}", prefix.trim_end_matches('/'))
            }
            Location::OciArchive { path } => write!(f, "oci-archive:{}", path.display()),
            Location::DockerArchive { path } => write!(f, "docker-archive:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let l = Location::parse("docker://127.0.0.1:5000/a/b:1.0").unwrap();
        assert_eq!(
            l,
            Location::Registry {
                host: "127.0.0.1:5000".into(),
                repo: Some("a/b".into()),
                reference: Some(Reference::Tag("1.0".into()))
            }
        );
        assert!(l.is_loopback_registry());
        let l = Location::parse("docker://reg.example:5000/a").unwrap();
        assert!(matches!(
            l,
            Location::Registry {
                reference: None,
                ..
            }
        ));
        assert!(!l.is_loopback_registry());
        let l = Location::parse("docker://localhost:5000").unwrap();
        assert!(matches!(l, Location::Registry { repo: None, .. }));
        let d = "sha256:6b9b508719e00b1f764587f77d2f5ce412b6e9574434c763d38b78b2e174b2dc";
        let l = Location::parse(&format!("docker://h/a@{d}")).unwrap();
        assert_eq!(l.to_string(), format!("docker://h/a@{d}"));
        assert_eq!(
            Location::parse("oci:/media/usb").unwrap(),
            Location::Dir {
                path: "/media/usb".into()
            }
        );
        assert_eq!(
            Location::parse("./x").unwrap(),
            Location::Dir { path: "./x".into() }
        );
        assert_eq!(
            Location::parse("s3://my-bucket/a/b/").unwrap(),
            Location::Bucket {
                bucket: "my-bucket".into(),
                prefix: "a/b/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://my-bucket").unwrap(),
            Location::Bucket {
                bucket: "my-bucket".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "s3://",
            "s3://B",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3:/bucket",
            "oci-archive:",
            "dcoker://host/a",
            "DOCKER://host/a",
            "http://host:5000/a",
            "usb:backup",
            "docker://",
            "docker://h/A",
            "docker://h/a:-x",
            "docker://h/a@sha256:1",
            "oci:",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        let e = Location::parse("s4://bucket").unwrap_err().to_string();
        assert!(e.contains("\"s4\"") && e.contains("s3://BUCKET"), "{e}");
        // A directory whose name has a colon, written so it cannot look like a scheme.
        for ok in [
            "./usb:backup",
            "/media/usb:1",
            "oci:usb:backup",
            "a/b:c",
            "1x:y",
        ] {
            assert!(
                matches!(Location::parse(ok), Ok(Location::Dir { .. })),
                "{ok}"
            );
        }
        assert_eq!(
            Location::parse("oci-archive:/media/usb/trip.tar").unwrap(),
            Location::OciArchive {
                path: "/media/usb/trip.tar".into()
            }
        );
        assert!(matches!(
            Location::parse("docker-archive:app.tar"),
            Ok(Location::DockerArchive { .. })
        ));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(is_loopback_host("localhost"));
    }
}
