//! Go's `token.go` (≤ 1.26): a token is a literal or a (length − 3, offset − 1) match in a u32.
//! Ported from Go's source (BSD-3, The Go Authors).

use crate::shared::{LENGTH_CODES, OFFSET_CODES};

pub type Token = u32;

pub const MATCH_TYPE: u32 = 1 << 30;
const LENGTH_SHIFT: u32 = 22;

pub fn literal_token(literal: u8) -> Token {
    literal as u32
}

pub fn match_token(xlength: u32, xoffset: u32) -> Token {
    MATCH_TYPE + (xlength << LENGTH_SHIFT) + xoffset
}

pub fn length_code(xlength: u32) -> u32 {
    LENGTH_CODES[xlength as usize] as u32
}

/// The offset code of `offset − 1`.
pub fn offset_code(off: u32) -> u32 {
    if off < 256 {
        return OFFSET_CODES[off as usize] as u32;
    }
    if off >> 7 < 256 {
        return OFFSET_CODES[(off >> 7) as usize] as u32 + 14;
    }
    OFFSET_CODES[(off >> 14) as usize] as u32 + 28
}
