//! Repository names and tags, per the distribution-spec grammar.
//!
//! ```text
//! <name>      [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//! <reference> a tag [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} or a digest
//! ```
//! Checked by hand rather than with a regex engine: the grammar is small, and a hand check makes it
//! obvious that no accepted name can contain `..`, an empty component or a leading `/`, which is
//! what keeps names from escaping anything they are joined to.
//!
//! ```
//! use ferry::reference::{is_valid_name, Reference};
//!
//! assert!(is_valid_name("library/alpine"));
//! assert!(!is_valid_name("a/../b"));
//! assert_eq!(Reference::parse("latest").unwrap(), Reference::Tag("latest".into()));
//! ```

use std::fmt;

use crate::error::Error;
use crate::vocab::digest::Digest;

/// Longest repository name accepted (Distribution uses 255 for the whole name).
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/alpine` or `cache/app`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, Error> {
        if is_valid_name(s) {
            Ok(RepoName(s.to_owned()))
        } else {
            Err(Error::NameInvalid(truncate(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// At most 300 characters of a client's or a file's string, for an error message.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    // Separators: ".", "_", "__", or one or more "-"; each separator sits between alnum runs.
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(is_valid_component)
}

pub fn is_valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// The `<reference>` part of a manifest URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        if s.contains(':') {
            s.parse::<Digest>()
                .map(Reference::Digest)
                .map_err(|e| Error::DigestInvalid(e.to_string()))
        } else if is_valid_tag(s) {
            Ok(Reference::Tag(s.to_owned()))
        } else {
            Err(Error::TagInvalid(truncate(s)))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/alpine",
            "a/b/c",
            "cache/app-oci-index",
            "a__b",
            "a_b.c---d",
            "0",
            "x/0/y",
        ] {
            assert!(is_valid_name(ok), "{ok} rejected");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a/./b", "%2e%2e", "a___b", "a-", "-a",
            "a.-b", "a\0b", "a b", "a:b",
        ] {
            assert!(!is_valid_name(bad), "{bad:?} accepted");
        }
        assert!(!is_valid_name(&"a".repeat(256)));
        assert!(is_valid_name(&"a".repeat(255)));
    }

    #[test]
    fn tags() {
        assert!(is_valid_tag("latest"));
        assert!(is_valid_tag("_x.Y-1"));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        for bad in ["", ".a", "-a", "a/b", "a:b", "a b", "ä"] {
            assert!(!is_valid_tag(bad), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_path_safe(s in "[a-z0-9._/-]{0,40}") {
            if is_valid_name(&s) {
                prop_assert!(!s.starts_with('/'));
                prop_assert!(!s.split('/').any(|c| c.is_empty() || c == "." || c == ".."));
            }
        }

        #[test]
        fn reference_parse_never_panics(s in "\\PC{0,200}") {
            let _ = Reference::parse(&s);
        }
    }
}
