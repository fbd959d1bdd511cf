//! Go ≤ 1.26's `compress/flate` Huffman coding: `huffman_code.go` (the length-limited code of
//! a histogram, by the package-merge of Go's `bitCounts`) and `huffman_bit_writer.go` (which of
//! stored, fixed and dynamic a block becomes, and the bits of each). Ported from Go's source
//! (BSD-3, The Go Authors); every choice, every tie and every size estimate is Go's, because the
//! output must be Go's byte for byte.

use std::sync::OnceLock;

use crate::shared::{codegen_symbols, run_length_codegen, BAD_CODE, CODEGEN_ORDER};

use super::token::{length_code, offset_code, Token, MATCH_TYPE};

pub const MAX_NUM_LIT: usize = 286;
const OFFSET_CODE_COUNT: usize = 30;
const END_BLOCK_MARKER: usize = 256;
const LENGTH_CODES_START: usize = 257;
const CODEGEN_CODE_COUNT: usize = 19;
pub const MAX_STORE_BLOCK_SIZE: usize = 65535;

const LENGTH_EXTRA_BITS: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const LENGTH_BASE: [u32; 29] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255,
];
const OFFSET_EXTRA_BITS: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const OFFSET_BASE: [u32; 30] = [
    0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
    0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
    0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
    0x003000, 0x004000, 0x006000,
];

/// A code: its bits (already reversed for LSB-first output) and its length.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Hcode {
    pub code: u16,
    pub len: u16,
}

#[derive(Clone, Copy, Default)]
struct LiteralNode {
    literal: u16,
    freq: i32,
}

#[derive(Clone, Copy, Default)]
struct LevelInfo {
    level: i32,
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

const MAX_BITS_LIMIT: usize = 16;

#[derive(Clone)]
pub struct HuffmanEncoder {
    pub codes: Vec<Hcode>,
    freqcache: Vec<LiteralNode>,
    bit_count: [i32; 17],
}

fn reverse_bits(number: u16, bit_length: u16) -> u16 {
    (number << (16 - bit_length)).reverse_bits()
}

impl HuffmanEncoder {
    pub fn new(size: usize) -> Self {
        HuffmanEncoder {
            codes: vec![Hcode::default(); size],
            freqcache: vec![LiteralNode::default(); MAX_NUM_LIT + 1],
            bit_count: [0; 17],
        }
    }

    fn fixed_literal() -> Self {
        let mut h = Self::new(MAX_NUM_LIT);
        for ch in 0..MAX_NUM_LIT as u16 {
            let (bits, size) = match ch {
                0..=143 => (ch + 48, 8),
                144..=255 => (ch + 400 - 144, 9),
                256..=279 => (ch - 256, 7),
                _ => (ch + 192 - 280, 8),
            };
            h.codes[ch as usize] = Hcode {
                code: reverse_bits(bits, size),
                len: size,
            };
        }
        h
    }

    fn fixed_offset() -> Self {
        let mut h = Self::new(30);
        for ch in 0..30u16 {
            h.codes[ch as usize] = Hcode {
                code: reverse_bits(ch, 5),
                len: 5,
            };
        }
        h
    }

    pub fn bit_length(&self, freq: &[i32]) -> i64 {
        let mut total = 0i64;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                total += f as i64 * self.codes[i].len as i64;
            }
        }
        total
    }

    /// Go's `bitCounts`: how many literals get each code length, `list` sorted by frequency
    /// with room for one sentinel after its `n` entries.
    fn bit_counts(&mut self, n: usize, mut max_bits: i32) -> usize {
        let list = &mut self.freqcache;
        let n32 = n as i32;
        list[n] = LiteralNode {
            literal: u16::MAX,
            freq: i32::MAX,
        };
        if max_bits > n32 - 1 {
            max_bits = n32 - 1;
        }
        let mb = max_bits as usize;
        let mut levels = [LevelInfo::default(); MAX_BITS_LIMIT];
        let mut leaf_counts = [[0i32; MAX_BITS_LIMIT]; MAX_BITS_LIMIT];
        for level in 1..=mb {
            levels[level] = LevelInfo {
                level: level as i32,
                last_freq: list[1].freq,
                next_char_freq: list[2].freq,
                next_pair_freq: list[0].freq + list[1].freq,
                needed: 0,
            };
            leaf_counts[level][level] = 2;
            if level == 1 {
                levels[level].next_pair_freq = i32::MAX;
            }
        }
        levels[mb].needed = 2 * n32 - 4;
        let mut level = mb;
        loop {
            let l = levels[level];
            if l.next_pair_freq == i32::MAX && l.next_char_freq == i32::MAX {
                levels[level].needed = 0;
                levels[level + 1].next_pair_freq = i32::MAX;
                level += 1;
                continue;
            }
            let prev_freq = l.last_freq;
            if l.next_char_freq < l.next_pair_freq {
                let nn = leaf_counts[level][level] + 1;
                levels[level].last_freq = l.next_char_freq;
                leaf_counts[level][level] = nn;
                levels[level].next_char_freq = list[nn as usize].freq;
            } else {
                levels[level].last_freq = l.next_pair_freq;
                let (lower, upper) = leaf_counts.split_at_mut(level);
                upper[0][..level].copy_from_slice(&lower[level - 1][..level]);
                levels[(l.level - 1) as usize].needed = 2;
            }
            levels[level].needed -= 1;
            if levels[level].needed == 0 {
                if levels[level].level == max_bits {
                    break;
                }
                levels[level + 1].next_pair_freq = prev_freq + levels[level].last_freq;
                level += 1;
            } else {
                while levels[level - 1].needed > 0 {
                    level -= 1;
                }
            }
        }
        debug_assert_eq!(leaf_counts[mb][mb], n32);
        let counts = leaf_counts[mb];
        for (bits, level) in (1..).zip((1..=mb).rev()) {
            self.bit_count[bits] = counts[level] - counts[level - 1];
        }
        mb + 1
    }

    /// Go's `generate`: the minimum code for `freq` with no code longer than `max_bits`.
    pub fn generate(&mut self, freq: &[i32], max_bits: i32) {
        let mut count = 0;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                self.freqcache[count] = LiteralNode {
                    literal: i as u16,
                    freq: f,
                };
                count += 1;
            } else {
                self.codes[i].len = 0;
            }
        }
        if count <= 2 {
            for i in 0..count {
                let node = self.freqcache[i];
                self.codes[node.literal as usize] = Hcode {
                    code: i as u16,
                    len: 1,
                };
            }
            return;
        }
        // (freq, literal) is a total order, so any sort gives Go's order.
        self.freqcache[..count].sort_unstable_by_key(|n| (n.freq, n.literal));
        let nbits = self.bit_counts(count, max_bits);
        // assignEncodingAndSize
        let mut code: u16 = 0;
        let mut end = count;
        for n in 0..nbits {
            let bits = self.bit_count[n];
            code <<= 1;
            if n == 0 || bits == 0 {
                continue;
            }
            let start = end - bits as usize;
            let chunk = &mut self.freqcache[start..end];
            chunk.sort_unstable_by_key(|n| n.literal);
            for node in chunk.iter() {
                self.codes[node.literal as usize] = Hcode {
                    code: reverse_bits(code, n as u16),
                    len: n as u16,
                };
                code = code.wrapping_add(1);
            }
            end = start;
        }
    }
}

struct Statics {
    fixed_literal: HuffmanEncoder,
    fixed_offset: HuffmanEncoder,
    huff_offset: HuffmanEncoder,
}

fn statics() -> &'static Statics {
    static S: OnceLock<Statics> = OnceLock::new();
    S.get_or_init(|| {
        let mut huff_offset = HuffmanEncoder::new(OFFSET_CODE_COUNT);
        let mut freq = [0i32; OFFSET_CODE_COUNT];
        freq[0] = 1;
        huff_offset.generate(&freq, 15);
        Statics {
            fixed_literal: HuffmanEncoder::fixed_literal(),
            fixed_offset: HuffmanEncoder::fixed_offset(),
            huff_offset,
        }
    })
}

/// Which literal/offset tables a block uses.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Tables {
    Fixed,
    Dynamic,
}

/// Go's `huffmanBitWriter`. The bytes go to `out`, which the caller drains; the bit stream is
/// the same whatever Go's 248-byte staging buffer did, so it is not kept.
pub struct BitWriter {
    bits: u64,
    nbits: u32,
    pub out: Vec<u8>,
    codegen_freq: [i32; CODEGEN_CODE_COUNT],
    literal_freq: [i32; MAX_NUM_LIT],
    offset_freq: [i32; OFFSET_CODE_COUNT],
    codegen: [u8; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
    literal_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
}

impl BitWriter {
    pub fn new() -> Self {
        BitWriter {
            bits: 0,
            nbits: 0,
            out: Vec::with_capacity(1 << 17),
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            literal_freq: [0; MAX_NUM_LIT],
            offset_freq: [0; OFFSET_CODE_COUNT],
            codegen: [0; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
            literal_encoding: HuffmanEncoder::new(MAX_NUM_LIT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
        }
    }

    pub fn flush(&mut self) {
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits = self.nbits.saturating_sub(8);
        }
        self.bits = 0;
    }

    #[inline(always)]
    fn emit(&mut self) {
        if self.nbits >= 48 {
            let b = self.bits;
            self.bits >>= 48;
            self.nbits -= 48;
            self.out.extend_from_slice(&b.to_le_bytes()[..6]);
        }
    }

    #[inline(always)]
    fn write_bits(&mut self, b: u32, nb: u32) {
        self.bits |= (b as u64) << self.nbits;
        self.nbits += nb;
        self.emit();
    }

    #[inline(always)]
    fn write_code(&mut self, c: Hcode) {
        self.bits |= (c.code as u64) << self.nbits;
        self.nbits += c.len as u32;
        self.emit();
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) {
        // Go: nbits is a multiple of 8 here (a stored header has just flushed).
        debug_assert_eq!(self.nbits & 7, 0);
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits -= 8;
        }
        self.out.extend_from_slice(bytes);
    }

    fn generate_codegen(&mut self, num_literals: usize, num_offsets: usize, huff_offset: bool) {
        self.codegen_freq = [0; CODEGEN_CODE_COUNT];
        let off_enc = if huff_offset {
            &statics().huff_offset
        } else {
            &self.offset_encoding
        };
        let codegen = &mut self.codegen;
        for (c, code) in codegen
            .iter_mut()
            .zip(&self.literal_encoding.codes[..num_literals])
        {
            *c = code.len as u8;
        }
        for (c, code) in codegen[num_literals..]
            .iter_mut()
            .zip(&off_enc.codes[..num_offsets])
        {
            *c = code.len as u8;
        }
        codegen[num_literals + num_offsets] = BAD_CODE;
        let freq = &mut self.codegen_freq;
        run_length_codegen(codegen, &mut |c| freq[c as usize] += 1);
    }

    fn dynamic_size(&self, huff_offset: bool, extra_bits: i64) -> (i64, usize) {
        let mut num_codegens = CODEGEN_CODE_COUNT;
        while num_codegens > 4 && self.codegen_freq[CODEGEN_ORDER[num_codegens - 1]] == 0 {
            num_codegens -= 1;
        }
        let off_enc = if huff_offset {
            &statics().huff_offset
        } else {
            &self.offset_encoding
        };
        let header = 3
            + 5
            + 5
            + 4
            + 3 * num_codegens as i64
            + self.codegen_encoding.bit_length(&self.codegen_freq)
            + self.codegen_freq[16] as i64 * 2
            + self.codegen_freq[17] as i64 * 3
            + self.codegen_freq[18] as i64 * 7;
        let size = header
            + self.literal_encoding.bit_length(&self.literal_freq)
            + off_enc.bit_length(&self.offset_freq)
            + extra_bits;
        (size, num_codegens)
    }

    fn fixed_size(&self, extra_bits: i64) -> i64 {
        let s = statics();
        3 + s.fixed_literal.bit_length(&self.literal_freq)
            + s.fixed_offset.bit_length(&self.offset_freq)
            + extra_bits
    }

    fn stored_size(input: Option<&[u8]>) -> Option<i64> {
        match input {
            Some(b) if b.len() <= MAX_STORE_BLOCK_SIZE => Some((b.len() as i64 + 5) * 8),
            _ => None,
        }
    }

    fn write_dynamic_header(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        num_codegens: usize,
        eof: bool,
    ) {
        self.write_bits(if eof { 5 } else { 4 }, 3);
        self.write_bits((num_literals - 257) as u32, 5);
        self.write_bits((num_offsets - 1) as u32, 5);
        self.write_bits((num_codegens - 4) as u32, 4);
        for &o in CODEGEN_ORDER.iter().take(num_codegens) {
            let value = self.codegen_encoding.codes[o].len as u32;
            self.write_bits(value, 3);
        }
        let codegen = self.codegen;
        for (word, value, bits) in codegen_symbols(&codegen) {
            let c = self.codegen_encoding.codes[word as usize];
            self.write_code(c);
            if bits > 0 {
                self.write_bits(value, bits);
            }
        }
    }

    pub fn write_stored_header(&mut self, length: usize, eof: bool) {
        self.write_bits(eof as u32, 3);
        self.flush();
        self.write_bits(length as u32, 16);
        self.write_bits(!(length as u16) as u32, 16);
    }

    fn write_fixed_header(&mut self, eof: bool) {
        self.write_bits(if eof { 3 } else { 2 }, 3);
    }

    fn index_tokens(&mut self, tokens: &[Token]) -> (usize, usize) {
        self.literal_freq = [0; MAX_NUM_LIT];
        self.offset_freq = [0; OFFSET_CODE_COUNT];
        for &t in tokens {
            if t < MATCH_TYPE {
                self.literal_freq[t as usize] += 1;
                continue;
            }
            let length = (t - MATCH_TYPE) >> 22;
            let offset = t & ((1 << 22) - 1);
            self.literal_freq[LENGTH_CODES_START + length_code(length) as usize] += 1;
            self.offset_freq[offset_code(offset) as usize] += 1;
        }
        let mut num_literals = MAX_NUM_LIT;
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = OFFSET_CODE_COUNT;
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.offset_encoding.generate(&self.offset_freq, 15);
        (num_literals, num_offsets)
    }

    /// Go's `writeBlock`: the smallest of fixed, dynamic and (when `input` is given) stored.
    pub fn write_block(&mut self, tokens: &mut Vec<Token>, eof: bool, input: Option<&[u8]>) {
        tokens.push(END_BLOCK_MARKER as Token);
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        let mut extra_bits = 0i64;
        let stored = Self::stored_size(input);
        if stored.is_some() {
            for lc in LENGTH_CODES_START + 8..num_literals {
                extra_bits += self.literal_freq[lc] as i64
                    * LENGTH_EXTRA_BITS[lc - LENGTH_CODES_START] as i64;
            }
            for (f, &e) in self.offset_freq[..num_offsets]
                .iter()
                .zip(&OFFSET_EXTRA_BITS)
                .skip(4)
            {
                extra_bits += *f as i64 * e as i64;
            }
        }
        let mut tables = Tables::Fixed;
        let mut size = self.fixed_size(extra_bits);
        self.generate_codegen(num_literals, num_offsets, false);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (dynamic_size, num_codegens) = self.dynamic_size(false, extra_bits);
        if dynamic_size < size {
            size = dynamic_size;
            tables = Tables::Dynamic;
        }
        if let (Some(ss), Some(input)) = (stored, input) {
            if ss < size {
                self.write_stored_header(input.len(), eof);
                self.write_bytes(input);
                tokens.pop();
                return;
            }
        }
        if tables == Tables::Fixed {
            self.write_fixed_header(eof);
            let s = statics();
            self.write_tokens(tokens, &s.fixed_literal.codes, &s.fixed_offset.codes);
        } else {
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
            let lit = std::mem::take(&mut self.literal_encoding.codes);
            let off = std::mem::take(&mut self.offset_encoding.codes);
            self.write_tokens(tokens, &lit, &off);
            self.literal_encoding.codes = lit;
            self.offset_encoding.codes = off;
        }
        tokens.pop();
    }

    /// Go's `writeBlockDynamic`: dynamic tables, or stored if they save less than 1/16.
    pub fn write_block_dynamic(&mut self, tokens: &mut Vec<Token>, eof: bool, input: &[u8]) {
        tokens.push(END_BLOCK_MARKER as Token);
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        self.generate_codegen(num_literals, num_offsets, false);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(false, 0);
        if let Some(ss) = Self::stored_size(Some(input)) {
            if ss < size + (size >> 4) {
                self.write_stored_header(input.len(), eof);
                self.write_bytes(input);
                tokens.pop();
                return;
            }
        }
        self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
        let lit = std::mem::take(&mut self.literal_encoding.codes);
        let off = std::mem::take(&mut self.offset_encoding.codes);
        self.write_tokens(tokens, &lit, &off);
        self.literal_encoding.codes = lit;
        self.offset_encoding.codes = off;
        tokens.pop();
    }

    fn write_tokens(&mut self, tokens: &[Token], le: &[Hcode], oe: &[Hcode]) {
        for &t in tokens {
            if t < MATCH_TYPE {
                self.write_code(le[t as usize]);
                continue;
            }
            let length = (t - MATCH_TYPE) >> 22;
            let lc = length_code(length) as usize;
            self.write_code(le[lc + LENGTH_CODES_START]);
            let extra_length_bits = LENGTH_EXTRA_BITS[lc] as u32;
            if extra_length_bits > 0 {
                self.write_bits(length - LENGTH_BASE[lc], extra_length_bits);
            }
            let offset = t & ((1 << 22) - 1);
            let oc = offset_code(offset) as usize;
            self.write_code(oe[oc]);
            let extra_offset_bits = OFFSET_EXTRA_BITS[oc] as u32;
            if extra_offset_bits > 0 {
                self.write_bits(offset - OFFSET_BASE[oc], extra_offset_bits);
            }
        }
    }

    /// Go's `writeBlockHuff`: literals only, dynamic, or stored if that saves less than 1/16.
    pub fn write_block_huff(&mut self, eof: bool, input: &[u8]) {
        self.literal_freq = [0; MAX_NUM_LIT];
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        const NUM_LITERALS: usize = END_BLOCK_MARKER + 1;
        // Go sets only offsetFreq[0]; the rest keep earlier blocks' counts, which the Huffman
        // offset code (length 0 for all but code 0) weighs at nothing.
        self.offset_freq[0] = 1;
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.generate_codegen(NUM_LITERALS, 1, true);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(true, 0);
        if let Some(ss) = Self::stored_size(Some(input)) {
            if ss < size + (size >> 4) {
                self.write_stored_header(input.len(), eof);
                self.write_bytes(input);
                return;
            }
        }
        self.write_dynamic_header(NUM_LITERALS, 1, num_codegens, eof);
        let mut enc = [Hcode::default(); 257];
        enc.copy_from_slice(&self.literal_encoding.codes[..257]);
        for &t in input {
            self.write_code(enc[t as usize]);
        }
        self.write_code(enc[END_BLOCK_MARKER]);
    }
}
