//! Layer patches: carry what changed inside a gzip layer, and rebuild the layer bit-exactly on
//! the far side from a layer it already holds (the *base*) and the patch.
//!
//! A layer pushed by docker, BuildKit or containerd is Go's `compress/gzip` over a tar, and
//! Go's compressor is deterministic ([`ferry_gozip`]): once ferry knows which Go and which level
//! wrote a layer, the layer is a function of its tar. A patch therefore describes the new tar
//! in terms of the base's tar, and the far side re-encodes it with the same Go encoder.
//!
//! The patch's form is *tar groups* ([`tar`]): the new tar is cut into members (with their
//! extension headers); a member whose bytes are the same as the base's member of that path is
//! a copy of a byte range of the base tar; the other bytes are zstd frames, each compressed with
//! the base bytes of the same members as its reference prefix (zstd's "patch-from" at member
//! granularity: a changed file costs what changed in it, a new one its compressed size).
//! Changes close together share a frame (unchanged bytes between them, up to [`MERGE`], travel
//! inside it as matches against its reference), and a reference is at least [`MIN_PREFIX`] of
//! the base around the changed members, whose neighbours are the likeliest to share their
//! content. Every frame writes at most [`UNIT`] bytes and refers to at most [`SPAN`] base bytes,
//! so making and applying a patch takes tens of MiB whatever the layer's size; the base's tar is
//! kept on disk. Frames are compressed on a thread of their own while the target is read.
//!
//! A patch is one file: [`MAGIC`], a length-prefixed JSON [`Recipe`] (the target and base by
//! digest and size, the sha256 and size of both tars, the encoder and level, the counts), the
//! ops (one zstd frame of fixed records) and the data frames, in op order. Everything in it is
//! checked as it is read: sizes against the recipe and the format's bounds, the rebuilt tar
//! against the recipe's sha256, the rebuilt layer against the target digest. A patch is only
//! carried after it rebuilt its layer on the side that made it.

mod apply;
mod base;
pub mod list;
mod make;
pub(crate) mod tar;

pub use apply::*;
pub use base::*;
pub use make::*;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zstd::zstd_safe;

use crate::vocab::digest::{Algorithm, Digest, Hasher};
use ferry_gozip::Generation;

/// The first bytes of a patch.
pub const MAGIC: &[u8; 8] = b"FRYPATCH";
/// The recipe's `format`.
pub const FORMAT: &str = "ferry-patch/1";
/// The media type a patch blob is carried under (in the trip's [`LIST`]).
pub const MEDIA_TYPE: &str = "application/vnd.ferry.layer.patch.v1";
/// The form this version writes.
pub const FORM: &str = "tar-groups";
/// Most bytes one data frame writes (and so most bytes a frame's output takes in memory).
pub const UNIT: usize = 8 << 20;
/// Most base bytes one data frame uses as its reference.
pub const SPAN: u64 = 32 << 20;
/// For a member larger than [`UNIT`], cut into units: how far either side of a unit's own
/// offset in the base member its reference reaches (an insertion shifts the rest).
const SLACK: u64 = 8 << 20;
/// Unchanged bytes (copies) shorter than this between two changes travel inside one data frame.
pub const MERGE: u64 = 4 << 20;
/// The least base a data frame with a reference refers to.
pub const MIN_PREFIX: u64 = 8 << 20;
const MAX_RECIPE: u32 = 64 << 10;
const OP_COPY: u8 = 0;
const OP_DATA: u8 = 1;
const OP_LEN: usize = 33;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch itself is malformed, truncated or out of its bounds.
    #[error("the patch is unusable: {0}")]
    Format(String),
    /// The base given is not the one the patch was made from.
    #[error("wrong base: {0}")]
    Base(String),
    /// Applying gave other bytes than the recipe names.
    #[error("the rebuilt layer is wrong: {0}")]
    Output(String),
    /// The layer cannot be patched (said to the user as the reason it is carried whole).
    #[error("{0}")]
    Unpatchable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn format_err(msg: impl Into<String>) -> PatchError {
    PatchError::Format(msg.into())
}

/// What a patch rebuilds, from what, and how; the JSON at the head of every patch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recipe {
    pub format: String,
    pub form: String,
    pub target: Digest,
    pub target_size: u64,
    /// sha256 of the target's tar (its diff ID) and its size.
    pub target_tar: Digest,
    pub target_tar_size: u64,
    pub base: Digest,
    pub base_size: u64,
    pub base_tar: Digest,
    pub base_tar_size: u64,
    /// `go-classic` or `go-1.27`.
    pub encoder: String,
    pub level: i32,
    #[serde(default)]
    pub mtime: u32,
    pub ops: u64,
    pub ops_bytes: u64,
    pub data_bytes: u64,
}

impl Recipe {
    pub fn generation(&self) -> Result<Generation, PatchError> {
        match self
            .encoder
            .strip_prefix("go-")
            .map(str::parse::<Generation>)
        {
            Some(Ok(g)) => Ok(g),
            _ => Err(format_err(format!("unknown encoder {:?}", self.encoder))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Copy {
        off: u64,
        len: u64,
    },
    Data {
        prefix_off: u64,
        prefix_len: u64,
        out_len: u64,
        zlen: u64,
    },
}

impl Op {
    fn encode(&self) -> [u8; OP_LEN] {
        let mut b = [0u8; OP_LEN];
        let vals = match *self {
            Op::Copy { off, len } => {
                b[0] = OP_COPY;
                [off, len, 0, 0]
            }
            Op::Data {
                prefix_off,
                prefix_len,
                out_len,
                zlen,
            } => {
                b[0] = OP_DATA;
                [prefix_off, prefix_len, out_len, zlen]
            }
        };
        for (i, v) in vals.iter().enumerate() {
            b[1 + 8 * i..9 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn decode(b: &[u8; OP_LEN]) -> Result<Op, PatchError> {
        let v = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[1 + 8 * i..9 + 8 * i]);
            u64::from_le_bytes(x)
        };
        match b[0] {
            OP_COPY => Ok(Op::Copy {
                off: v(0),
                len: v(1),
            }),
            OP_DATA => Ok(Op::Data {
                prefix_off: v(0),
                prefix_len: v(1),
                out_len: v(2),
                zlen: v(3),
            }),
            t => Err(format_err(format!("unknown op {t}"))),
        }
    }
}

#[cfg(test)]
mod tests;
