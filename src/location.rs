//! Where `ferry sync` reads from and writes to: a registry or a directory (an OCI image layout).
//!
//! ```text
//! docker://HOST[:PORT]                      every repository of the registry (its catalog)
//! docker://HOST[:PORT]/REPO                 every tag of REPO
//! docker://HOST[:PORT]/REPO:TAG             one tag
//! docker://HOST[:PORT]/REPO@sha256:…        one manifest by digest
//! oci:PATH  or  PATH                        a directory in ferry's format, all its tags
//! ```

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::Error;
use crate::reference::{is_valid_name, is_valid_tag, Reference};

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
}

fn bad(s: &str, why: &str) -> Error {
    Error::Usage(format!("bad location {s:?}: {why}"))
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
        let path = s.strip_prefix("oci:").unwrap_or(s);
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
            Location::Dir { .. } => false,
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
        for bad in [
            "docker://",
            "docker://h/A",
            "docker://h/a:-x",
            "docker://h/a@sha256:1",
            "oci:",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        assert!(is_loopback_host("[::1]:5000"));
        assert!(is_loopback_host("localhost"));
    }
}
