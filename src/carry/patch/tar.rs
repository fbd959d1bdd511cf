//! A layer's tar read as *groups*: a member with the extension headers before it (PAX `x`, GNU
//! `L`/`K`), named by its path, each a byte range of the tar. Only headers are parsed; the bytes
//! of a group are whatever the tar holds, so a patch built from groups is exact whether or not
//! the parse is right (a wrong parse only makes the patch larger). What cannot be parsed (a bad
//! checksum, the end-of-archive blocks and anything after them) is one last group without a name.
//!
//! Written by hand rather than with the `tar` crate: what is needed is the byte range of each
//! header run with the extension headers folded in, and a reader that never fails on a tar the
//! crate would refuse (the rest of the stream is then carried as it is).

use std::io::{self, Read};

pub(crate) use ferry_gozip::read_full;

pub(crate) const BLOCK: usize = 512;
/// An extension header's data (a PAX record set, a GNU long name) larger than this is not read
/// for its name: the group is then unnamed.
const MAX_EXTENSION: u64 = 1 << 20;

/// One group: `head` holds its header blocks (and the extension headers' data); `data` bytes
/// (the member's data, padded to a block) follow in the stream, or, for the unnamed last group,
/// everything to the end (`None`).
pub(crate) struct Group {
    pub(crate) name: Option<String>,
    pub(crate) head: Vec<u8>,
    pub(crate) data: Option<u64>,
}

/// Reads groups from a tar stream; after each [`Groups::next_group`] the caller reads the
/// group's data from [`Groups::inner`] (exactly `data` bytes, or to the end).
pub(crate) struct Groups<R: Read> {
    pub(crate) inner: R,
    done: bool,
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    // GNU base-256 for large sizes: the first byte's top bit set.
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ' || *b == 0)
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

fn checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = parse_octal(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    sum == stored
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn padded(size: u64) -> Option<u64> {
    size.checked_add(BLOCK as u64 - 1)
        .map(|v| v / BLOCK as u64 * BLOCK as u64)
}

/// Header types that carry no data whatever their size field says (as Go's `archive/tar`
/// reads them): hard and symbolic links, devices, directories, FIFOs.
fn header_only(typeflag: u8) -> bool {
    matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6')
}

fn pax_path(records: &[u8]) -> Option<String> {
    let mut rest = records;
    let mut path = None;
    while !rest.is_empty() {
        let sp = rest.iter().position(|c| *c == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(v) = rec.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

impl<R: Read> Groups<R> {
    pub(crate) fn new(inner: R) -> Self {
        Groups { inner, done: false }
    }

    /// The next group, or `None` at the end of the stream.
    pub(crate) fn next_group(&mut self) -> io::Result<Option<Group>> {
        if self.done {
            return Ok(None);
        }
        let mut head = Vec::new();
        let mut name: Option<String> = None;
        loop {
            let start = head.len();
            head.resize(start + BLOCK, 0);
            let n = read_full(&mut self.inner, &mut head[start..])?;
            head.truncate(start + n);
            if n == 0 && start == 0 {
                self.done = true;
                return Ok(None);
            }
            let h = &head[start..];
            if n < BLOCK || h.iter().all(|b| *b == 0) || !checksum_ok(h) {
                // The end-of-archive blocks, a short or broken header: the rest is one group.
                self.done = true;
                return Ok(Some(Group {
                    name: None,
                    head,
                    data: None,
                }));
            }
            let typeflag = h[156];
            let Some(size) = parse_octal(&h[124..136]) else {
                self.done = true;
                return Ok(Some(Group {
                    name: None,
                    head,
                    data: None,
                }));
            };
            let own_name = {
                let base = cstr(&h[0..100]);
                let prefix = if &h[257..262] == b"ustar" {
                    cstr(&h[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    base
                } else {
                    format!("{prefix}/{base}")
                }
            };
            match typeflag {
                b'x' | b'L' | b'K' if size <= MAX_EXTENSION => {
                    let Some(len) = padded(size) else {
                        unreachable!("size is at most MAX_EXTENSION")
                    };
                    let at = head.len();
                    head.resize(at + len as usize, 0);
                    let got = read_full(&mut self.inner, &mut head[at..])?;
                    if got < len as usize {
                        head.truncate(at + got);
                        self.done = true;
                        return Ok(Some(Group {
                            name: None,
                            head,
                            data: None,
                        }));
                    }
                    let body = &head[at..at + size as usize];
                    match typeflag {
                        b'x' => {
                            if let Some(p) = pax_path(body) {
                                name = Some(p);
                            }
                        }
                        b'L' => name = Some(cstr(body)),
                        _ => {}
                    }
                }
                _ => {
                    let data = if header_only(typeflag) {
                        Some(0)
                    } else {
                        padded(size)
                    };
                    return Ok(Some(Group {
                        name: Some(name.unwrap_or(own_name)),
                        head,
                        data,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names_and_lengths(t: &[u8]) -> Vec<(Option<String>, u64)> {
        let mut g = Groups::new(t);
        let mut out = Vec::new();
        let mut total = 0u64;
        while let Some(gr) = g.next_group().unwrap() {
            let data = match gr.data {
                Some(n) => {
                    let mut v = vec![0; n as usize];
                    g.inner.read_exact(&mut v).unwrap();
                    n
                }
                None => {
                    let mut v = Vec::new();
                    g.inner.read_to_end(&mut v).unwrap();
                    v.len() as u64
                }
            };
            total += gr.head.len() as u64 + data;
            out.push((gr.name, gr.head.len() as u64 + data));
        }
        assert_eq!(total, t.len() as u64, "the groups cover the tar exactly");
        out
    }

    #[test]
    fn groups_cover_the_tar_and_fold_long_names_in() {
        let long = format!("dir/{}/file", "x".repeat(150));
        let t = tar_of(&[("a.txt", b"hello"), (long.as_str(), b"world"), ("b", b"")]);
        let g = names_and_lengths(&t);
        assert_eq!(g[0], (Some("a.txt".into()), 1024));
        // The GNU long-name header and its data are one group with the member.
        assert_eq!(g[1].0.as_deref(), Some(long.as_str()));
        assert_eq!(g[1].1, 512 + 512 + 512 + 512);
        assert_eq!(g[2], (Some("b".into()), 512));
        assert_eq!(g[3].0, None, "the end-of-archive blocks");
    }

    #[test]
    fn garbage_is_one_unnamed_group() {
        let mut junk = vec![7u8; 5000];
        junk[0] = b'a';
        assert_eq!(names_and_lengths(&junk), vec![(None, 5000)]);
        assert_eq!(names_and_lengths(&[]), vec![]);
        // A header whose size field claims more than the stream holds: the parse stops there
        // (the reader sees a short stream), and nothing panics.
        let mut t = tar_of(&[("a", b"x")]);
        t.truncate(700);
        let mut g = Groups::new(&t[..]);
        let first = g.next_group().unwrap().unwrap();
        assert_eq!(first.data, Some(512));
    }

    #[test]
    fn pax_paths_name_their_member() {
        assert_eq!(
            pax_path(b"15 path=a/b/cd\n13 mtime=1.5\n").as_deref(),
            Some("a/b/cd")
        );
        assert_eq!(
            pax_path(b"99 path=x\n"),
            None,
            "a record longer than the data"
        );
        assert_eq!(pax_path(b"x"), None);
    }
}
