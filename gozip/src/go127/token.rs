//! Go 1.27's `token.go`: tokens with their histograms kept as they are added, and the size
//! estimate (`EstimatedBits`) that decides whether a block gets new Huffman tables. Ported
//! from Go's source (BSD-3, The Go Authors).

pub use crate::shared::LENGTH_CODES;
use crate::shared::OFFSET_CODES;

pub type Token = u32;

pub const MATCH_TYPE: u32 = 1 << 30;
pub const LENGTH_SHIFT: u32 = 22;
pub const END_BLOCK_MARKER: u32 = 256;
pub const LITERAL_COUNT: usize = 286;
pub const OFFSET_CODE_COUNT: usize = 30;
const BASE_MATCH_LENGTH: i32 = 3;

pub const LENGTH_EXTRA_BITS: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0, 0, 0, 0,
];
pub const OFFSET_EXTRA_BITS: [i8; 32] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13, 14, 14,
];

/// The offset code of `offset − 1`.
#[inline(always)]
pub fn offset_code(off: u32) -> u32 {
    // Go indexes with `uint8(off >> 7)`: an offset of 32768 (a distance passed where an
    // offset − 1 is meant, as level 9's gain estimate does) wraps to code 14.
    if off < 256 {
        OFFSET_CODES[off as usize] as u32
    } else {
        OFFSET_CODES[(off >> 7) as u8 as usize] as u32 + 14
    }
}

/// Go's `tokens`: up to 65536 tokens and the histograms of what they will be coded as.
pub struct Tokens {
    pub extra_hist: [u16; 32],
    pub off_hist: [u16; 32],
    pub lit_hist: [u16; 256],
    pub n: u16,
    pub tokens: Vec<Token>,
}

impl Tokens {
    pub fn new() -> Self {
        Tokens {
            extra_hist: [0; 32],
            off_hist: [0; 32],
            lit_hist: [0; 256],
            n: 0,
            tokens: vec![0; 65536],
        }
    }

    pub fn reset(&mut self) {
        if self.n == 0 {
            return;
        }
        self.n = 0;
        self.lit_hist = [0; 256];
        self.extra_hist = [0; 32];
        self.off_hist = [0; 32];
    }

    #[inline(always)]
    pub fn add_literal(&mut self, lit: u8) {
        self.tokens[self.n as usize] = lit as Token;
        self.lit_hist[lit as usize] = self.lit_hist[lit as usize].wrapping_add(1);
        self.n = self.n.wrapping_add(1);
    }

    pub fn emit_literals(&mut self, lit: &[u8]) {
        for &v in lit {
            self.add_literal(v);
        }
    }

    /// A match of `xlength` (length − 3) at `xoffset` (offset − 1).
    #[inline(always)]
    pub fn add_match(&mut self, xlength: u32, xoffset: u32) {
        let oc = offset_code(xoffset);
        let xoffset = xoffset | oc << 16;
        let e = &mut self.extra_hist[LENGTH_CODES[xlength as u8 as usize] as usize + 1];
        *e = e.wrapping_add(1);
        let o = &mut self.off_hist[(oc & 31) as usize];
        *o = o.wrapping_add(1);
        self.tokens[self.n as usize] = MATCH_TYPE | xlength << LENGTH_SHIFT | xoffset;
        self.n = self.n.wrapping_add(1);
    }

    /// A match of `xlength` bytes (no base taken off; may exceed 258) at `xoffset` (offset − 1).
    #[inline(always)]
    pub fn add_match_long(&mut self, mut xlength: i32, xoffset: u32) {
        let oc = offset_code(xoffset);
        let xoffset = xoffset | oc << 16;
        while xlength > 0 {
            let mut xl = xlength;
            if xl > 258 {
                xl = if xl > 258 + BASE_MATCH_LENGTH {
                    258
                } else {
                    258 - BASE_MATCH_LENGTH
                };
            }
            xlength -= xl;
            xl -= BASE_MATCH_LENGTH;
            let e = &mut self.extra_hist[LENGTH_CODES[xl as u8 as usize] as usize + 1];
            *e = e.wrapping_add(1);
            let o = &mut self.off_hist[(oc & 31) as usize];
            *o = o.wrapping_add(1);
            self.tokens[self.n as usize] = MATCH_TYPE | (xl as u32) << LENGTH_SHIFT | xoffset;
            self.n = self.n.wrapping_add(1);
        }
    }

    pub fn add_eob(&mut self) {
        self.tokens[self.n as usize] = END_BLOCK_MARKER;
        self.extra_hist[0] = self.extra_hist[0].wrapping_add(1);
        self.n = self.n.wrapping_add(1);
    }

    pub fn slice(&self) -> &[Token] {
        &self.tokens[..self.n as usize]
    }

    /// Go's `EstimatedBits`, in float32 as Go computes it on amd64 (no fused multiply-add).
    pub fn estimated_bits(&self) -> i64 {
        let mut shannon = 0f32;
        let mut bits = 0i64;
        let mut n_matches = 0i64;
        let total = self.n as i64;
        if total > 0 {
            let inv_total = 1.0f32 / total as f32;
            for &v in self.lit_hist.iter() {
                if v > 0 {
                    let n = v as f32;
                    shannon += (-m_fast_log2(n * inv_total)).clamp(1.0, 15.0) * n;
                }
            }
            shannon += 15.0;
            for (i, &v) in self.extra_hist[1..LITERAL_COUNT - 256].iter().enumerate() {
                if v > 0 {
                    let n = v as f32;
                    shannon += (-m_fast_log2(n * inv_total)).clamp(1.0, 15.0) * n;
                    bits += LENGTH_EXTRA_BITS[i & 31] as i64 * v as i64;
                    n_matches += v as i64;
                }
            }
        }
        if n_matches > 0 {
            let inv_total = 1.0f32 / n_matches as f32;
            for (i, &v) in self.off_hist[..OFFSET_CODE_COUNT].iter().enumerate() {
                if v > 0 {
                    let n = v as f32;
                    shannon += (-m_fast_log2(n * inv_total)).clamp(1.0, 15.0) * n;
                    bits += OFFSET_EXTRA_BITS[i & 31] as i64 * v as i64;
                }
            }
        }
        shannon as i64 + bits
    }
}

/// Go's `mFastLog2`: a fast approximation of log2.
fn m_fast_log2(val: f32) -> f32 {
    let mut ux = val.to_bits() as i32;
    let mut log2 = (((ux >> 23) & 255) - 128) as f32;
    ux &= -0x7f800001;
    ux += 127 << 23;
    let uval = f32::from_bits(ux as u32);
    // Go's constants as written; each rounds to the same float32 in Go and here.
    #[allow(clippy::excessive_precision)]
    let (a, b, c) = (-0.34484843f32, 2.02466578f32, 0.67487759f32);
    log2 += (a * uval + b) * uval - c;
    log2
}
