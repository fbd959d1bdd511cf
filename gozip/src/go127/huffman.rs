//! Go 1.27's Huffman coding (`huffman_code.go`, `huffman_bit_writer.go`): the same
//! length-limited code as before, but a bit writer that may keep one block's tables for the
//! next (an end-of-block is then owed), estimates sizes instead of always building both, and
//! stores incompressible input on a quick variance test. Ported from Go's source (BSD-3, The Go
//! Authors); every estimate, penalty and tie is Go's.

use std::sync::OnceLock;

use crate::shared::{codegen_symbols, run_length_codegen, BAD_CODE, CODEGEN_ORDER};

use super::token::{
    Token, Tokens, END_BLOCK_MARKER, LENGTH_CODES, LENGTH_EXTRA_BITS, LITERAL_COUNT,
    OFFSET_CODE_COUNT, OFFSET_EXTRA_BITS,
};

const LENGTH_CODES_START: usize = 257;
const CODEGEN_CODE_COUNT: usize = 19;
const MAX_PREDEFINED_TOKENS: u16 = 250;
pub const MAX_STORE_BLOCK_SIZE: usize = 65535;
const LENGTH_EXTRA_BITS_MIN_CODE: u32 = 8;
const OFFSET_EXTRA_BITS_MIN_CODE: u32 = 4;
const LENGTH_BASE: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255, 0, 0, 0,
];
const OFFSET_COMBINED: [u32; 32] = [
    0x0, 0x0, 0x0, 0x0, 0x401, 0x601, 0x802, 0xc02, 0x1003, 0x1803, 0x2004, 0x3004, 0x4005, 0x6005,
    0x8006, 0xc006, 0x10007, 0x18007, 0x20008, 0x30008, 0x40009, 0x60009, 0x8000a, 0xc000a,
    0x10000b, 0x18000b, 0x20000c, 0x30000c, 0x40000d, 0x60000d, 0x0, 0x0,
];

/// Go's `hcode`: the length in the low 8 bits, the (reversed) code above.
type Hcode = u32;

#[inline(always)]
fn hlen(h: Hcode) -> u32 {
    h & 0xff
}

#[inline(always)]
fn hcode(code: u16, len: u8) -> Hcode {
    len as u32 | (code as u32) << 8
}

fn reverse_bits(x: u16, b: u8) -> u16 {
    (x << ((16 - b as u32) & 15)).reverse_bits()
}

#[derive(Clone, Copy, Default)]
struct LiteralNode {
    literal: u16,
    freq: u16,
}

#[derive(Clone, Copy, Default)]
struct LevelInfo {
    level: i32,
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

pub struct HuffmanEncoder {
    pub codes: Vec<Hcode>,
    bit_count: [i32; 17],
    freqcache: Vec<LiteralNode>,
}

impl HuffmanEncoder {
    /// Go sizes `codes` to `size` with capacity to the next power of two, and slices into
    /// the capacity; the zeros are kept here.
    pub fn new(size: usize) -> Self {
        HuffmanEncoder {
            codes: vec![0; size.next_power_of_two()],
            bit_count: [0; 17],
            freqcache: vec![LiteralNode::default(); LITERAL_COUNT + 1],
        }
    }

    fn fixed_literal() -> Self {
        let mut h = Self::new(LITERAL_COUNT);
        for ch in 0..LITERAL_COUNT as u16 {
            let (bits, size) = match ch {
                0..=143 => (ch + 48, 8),
                144..=255 => (ch + 400 - 144, 9),
                256..=279 => (ch - 256, 7),
                _ => (ch + 192 - 280, 8),
            };
            h.codes[ch as usize] = hcode(reverse_bits(bits, size), size);
        }
        h
    }

    fn fixed_offset() -> Self {
        let mut h = Self::new(30);
        for ch in 0..30u16 {
            h.codes[ch as usize] = hcode(reverse_bits(ch, 5), 5);
        }
        h
    }

    pub fn bit_length(&self, freq: &[u16]) -> i64 {
        let mut total = 0i64;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                total += f as i64 * hlen(self.codes[i]) as i64;
            }
        }
        total
    }

    /// Bits to code `b` as literals, unset codes counted as 1 bit.
    pub fn bit_length_raw(&self, b: &[u8]) -> i64 {
        b.iter()
            .map(|&f| hlen(self.codes[f as usize]).max(1) as i64)
            .sum()
    }

    fn can_encode_len(&self, freq: &[u16]) -> i64 {
        let mut total = 0i64;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                let code = self.codes[i];
                if code == 0 {
                    return i32::MAX as i64;
                }
                total += f as i64 * hlen(code) as i64;
            }
        }
        total
    }

    fn bit_counts(&mut self, n: usize, mut max_bits: i32) -> usize {
        let list = &mut self.freqcache;
        let n32 = n as i32;
        list[n] = LiteralNode {
            literal: u16::MAX,
            freq: u16::MAX,
        };
        if max_bits > n32 - 1 {
            max_bits = n32 - 1;
        }
        let mb = max_bits as usize;
        let mut levels = [LevelInfo::default(); 17];
        let mut leaf_counts = [[0i32; 16]; 16];
        for level in 1..=mb {
            levels[level] = LevelInfo {
                level: level as i32,
                last_freq: list[1].freq as i32,
                next_char_freq: list[2].freq as i32,
                next_pair_freq: list[0].freq as i32 + list[1].freq as i32,
                needed: 0,
            };
            leaf_counts[level][level] = 2;
            if level == 1 {
                levels[level].next_pair_freq = i32::MAX;
            }
        }
        levels[mb].needed = 2 * n32 - 4;
        let mut level = mb;
        while level < 16 {
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
                let e = list[nn as usize];
                levels[level].next_char_freq = if e.literal < u16::MAX {
                    e.freq as i32
                } else {
                    i32::MAX
                };
            } else {
                levels[level].last_freq = l.next_pair_freq;
                let save = leaf_counts[level][level];
                leaf_counts[level] = leaf_counts[level - 1];
                leaf_counts[level][level] = save;
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

    /// Go's `generate` over `freq` (which sets `codes[..freq.len()]` only).
    pub fn generate(&mut self, freq: &[u16], max_bits: i32) {
        let mut count = 0;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                self.freqcache[count] = LiteralNode {
                    literal: i as u16,
                    freq: f,
                };
                count += 1;
            } else {
                self.codes[i] = 0;
            }
        }
        self.freqcache[count] = LiteralNode::default();
        if count <= 2 {
            for i in 0..count {
                let node = self.freqcache[i];
                self.codes[node.literal as usize] = hcode(i as u16, 1);
            }
            return;
        }
        self.freqcache[..count].sort_unstable_by_key(|n| (n.freq, n.literal));
        let nbits = self.bit_counts(count, max_bits);
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
                self.codes[node.literal as usize] = hcode(reverse_bits(code, n as u8), n as u8);
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
        let mut freq = [0u16; OFFSET_CODE_COUNT];
        freq[0] = 1;
        huff_offset.generate(&freq, 15);
        Statics {
            fixed_literal: HuffmanEncoder::fixed_literal(),
            fixed_offset: HuffmanEncoder::fixed_offset(),
            huff_offset,
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tables {
    Fixed,
    Own,
}

/// Go 1.27's `huffmanBitWriter`; bytes go to `out` for the caller to drain.
pub struct BitWriter {
    bits: u64,
    nbits: u32,
    pub out: Vec<u8>,
    wrote_huffman: bool,
    literal_encoding: HuffmanEncoder,
    tmp_lit_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
    /// Non-zero: the last block's tables may be reused, and its end of block is owed.
    prev_header: i64,
    pub log_new_table_penalty: u32,
    literal_freq: [u16; LENGTH_CODES_START + 32],
    offset_freq: [u16; 32],
    codegen_freq: [u16; CODEGEN_CODE_COUNT],
    codegen: [u8; LITERAL_COUNT + OFFSET_CODE_COUNT + 1],
}

impl BitWriter {
    pub fn new() -> Self {
        BitWriter {
            bits: 0,
            nbits: 0,
            out: Vec::with_capacity(1 << 17),
            wrote_huffman: false,
            literal_encoding: HuffmanEncoder::new(LITERAL_COUNT),
            tmp_lit_encoding: HuffmanEncoder::new(LITERAL_COUNT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
            prev_header: 0,
            log_new_table_penalty: 0,
            literal_freq: [0; LENGTH_CODES_START + 32],
            offset_freq: [0; 32],
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            codegen: [0; LITERAL_COUNT + OFFSET_CODE_COUNT + 1],
        }
    }

    fn can_reuse(&self, t: &Tokens) -> bool {
        let off = &self.offset_encoding.codes;
        for (i, &v) in t.off_hist[..OFFSET_CODE_COUNT].iter().enumerate() {
            if v != 0 && off[i] == 0 {
                return false;
            }
        }
        let lit = &self.literal_encoding.codes;
        for (i, &v) in t.extra_hist[..LITERAL_COUNT - 256].iter().enumerate() {
            if v != 0 && lit[256 + i] == 0 {
                return false;
            }
        }
        for (i, &v) in t.lit_hist.iter().enumerate() {
            if v != 0 && lit[i] == 0 {
                return false;
            }
        }
        true
    }

    fn write_eob(&mut self) {
        let c = self.literal_encoding.codes[END_BLOCK_MARKER as usize];
        self.write_code(c);
    }

    pub fn flush(&mut self) {
        if self.prev_header > 0 {
            self.write_eob();
            self.prev_header = 0;
        }
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
        self.bits |= (b as u64) << (self.nbits & 63);
        self.nbits += nb;
        self.emit();
    }

    #[inline(always)]
    fn write_code(&mut self, c: Hcode) {
        self.bits |= ((c >> 8) as u64) << (self.nbits & 63);
        self.nbits += hlen(c);
        self.emit();
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) {
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
        for (c, &code) in codegen
            .iter_mut()
            .zip(&self.literal_encoding.codes[..num_literals])
        {
            *c = hlen(code) as u8;
        }
        for (c, &code) in codegen[num_literals..]
            .iter_mut()
            .zip(&off_enc.codes[..num_offsets])
        {
            *c = hlen(code) as u8;
        }
        codegen[num_literals + num_offsets] = BAD_CODE;
        let freq = &mut self.codegen_freq;
        run_length_codegen(codegen, &mut |c| freq[c as usize] += 1);
    }

    fn codegens(&self) -> usize {
        let mut n = CODEGEN_CODE_COUNT;
        while n > 4 && self.codegen_freq[CODEGEN_ORDER[n - 1]] == 0 {
            n -= 1;
        }
        n
    }

    fn header_size(&self) -> (i64, usize) {
        let n = self.codegens();
        let size = 3
            + 5
            + 5
            + 4
            + 3 * n as i64
            + self.codegen_encoding.bit_length(&self.codegen_freq)
            + self.codegen_freq[16] as i64 * 2
            + self.codegen_freq[17] as i64 * 3
            + self.codegen_freq[18] as i64 * 7;
        (size, n)
    }

    fn dynamic_reuse_size(&self) -> i64 {
        self.literal_encoding.bit_length(&self.literal_freq)
            + self.offset_encoding.bit_length(&self.offset_freq)
    }

    fn dynamic_size(&self, extra_bits: i64) -> (i64, usize) {
        let (header, n) = self.header_size();
        (header + self.dynamic_reuse_size() + extra_bits, n)
    }

    fn extra_bit_size(&self) -> i64 {
        let mut total = 0i64;
        for (i, &n) in self.literal_freq[257..LITERAL_COUNT].iter().enumerate() {
            total += n as i64 * LENGTH_EXTRA_BITS[i & 31] as i64;
        }
        for (i, &n) in self.offset_freq[..OFFSET_CODE_COUNT].iter().enumerate() {
            total += n as i64 * OFFSET_EXTRA_BITS[i & 31] as i64;
        }
        total
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
            let value = hlen(self.codegen_encoding.codes[o]);
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

    /// A stored header; an empty final stored block is written as a fixed one (10 bits).
    pub fn write_stored_header(&mut self, length: usize, eof: bool) {
        if self.prev_header > 0 {
            self.write_eob();
            self.prev_header = 0;
        }
        if length == 0 && eof {
            self.write_fixed_header(eof);
            self.write_bits(0, 7);
            self.flush();
            return;
        }
        self.write_bits(eof as u32, 3);
        self.flush();
        self.write_bits(length as u32, 16);
        self.write_bits(!(length as u16) as u32, 16);
    }

    fn write_fixed_header(&mut self, eof: bool) {
        if self.prev_header > 0 {
            self.write_eob();
            self.prev_header = 0;
        }
        self.write_bits(if eof { 3 } else { 2 }, 3);
    }

    fn write_stored(&mut self, input: &[u8], eof: bool) {
        self.write_stored_header(input.len(), eof);
        self.write_bytes(input);
    }

    fn write_fixed_block(&mut self, tokens: &mut Tokens, eof: bool, sync: bool) {
        self.write_fixed_header(eof);
        if !sync {
            tokens.add_eob();
        }
        let s = statics();
        self.write_tokens(tokens.slice(), Tables::Fixed, s);
    }

    /// Go's `writeBlockDynamic`: reuse the last tables, new ones, fixed or stored, whichever
    /// Go's estimates pick.
    pub fn write_block_dynamic(
        &mut self,
        tokens: &mut Tokens,
        eof: bool,
        input: Option<&[u8]>,
        sync: bool,
    ) {
        let sync = sync || eof;
        if sync {
            tokens.add_eob();
        } else {
            tokens.extra_hist[0] = 1;
        }
        if (self.wrote_huffman || eof) && self.prev_header > 0 {
            self.write_eob();
            self.prev_header = 0;
            self.wrote_huffman = false;
        }
        if self.prev_header > 0 && !self.can_reuse(tokens) {
            self.write_eob();
            self.prev_header = 0;
        }
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        let mut extra_bits = 0;
        let ssize = Self::stored_size(input);
        if ssize.is_some() || self.prev_header > 0 {
            extra_bits = self.extra_bit_size();
        }
        let stored_fits = |size: i64| matches!(ssize, Some(s) if s <= size);
        let mut size;
        if self.prev_header > 0 {
            let mut new_size = self.prev_header + tokens.estimated_bits();
            new_size += hlen(self.literal_encoding.codes[END_BLOCK_MARKER as usize]) as i64
                + (new_size >> self.log_new_table_penalty);
            let reuse_size = self.dynamic_reuse_size() + extra_bits;
            if new_size < reuse_size {
                self.write_eob();
                size = new_size;
                self.prev_header = 0;
            } else {
                size = reuse_size;
            }
            if tokens.n < MAX_PREDEFINED_TOKENS {
                let pre_size = self.fixed_size(extra_bits) + 7;
                if pre_size < size {
                    if stored_fits(size) {
                        self.write_stored(input.unwrap_or_default(), eof);
                        return;
                    }
                    self.write_fixed_block(tokens, eof, sync);
                    return;
                }
            }
            if stored_fits(size) {
                self.write_stored(input.unwrap_or_default(), eof);
                return;
            }
        }
        if self.prev_header == 0 {
            self.literal_freq[END_BLOCK_MARKER as usize] = 1;
            self.generate();
            self.generate_codegen(num_literals, num_offsets, false);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let (s, num_codegens) = self.dynamic_size(extra_bits);
            size = s;
            if tokens.n < MAX_PREDEFINED_TOKENS {
                let pre_size = self.fixed_size(extra_bits);
                if pre_size <= size {
                    if stored_fits(pre_size) {
                        self.write_stored(input.unwrap_or_default(), eof);
                        return;
                    }
                    self.write_fixed_block(tokens, eof, sync);
                    return;
                }
            }
            if stored_fits(size) {
                self.write_stored(input.unwrap_or_default(), eof);
                return;
            }
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
            if !sync {
                self.prev_header = self.header_size().0;
            }
            self.wrote_huffman = false;
        }
        if sync {
            self.prev_header = 0;
        }
        self.write_tokens(tokens.slice(), Tables::Own, statics());
    }

    fn index_tokens(&mut self, t: &Tokens) -> (usize, usize) {
        self.literal_freq[..256].copy_from_slice(&t.lit_hist);
        self.literal_freq[256..288].copy_from_slice(&t.extra_hist);
        self.offset_freq = t.off_hist;
        if t.n == 0 {
            return (0, 0);
        }
        let mut num_literals = self.literal_freq.len();
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = self.offset_freq.len();
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        (num_literals, num_offsets)
    }

    fn generate(&mut self) {
        self.literal_encoding
            .generate(&self.literal_freq[..LITERAL_COUNT], 15);
        self.offset_encoding
            .generate(&self.offset_freq[..OFFSET_CODE_COUNT], 15);
    }

    fn write_tokens(&mut self, tokens: &[Token], tables: Tables, s: &Statics) {
        if tokens.is_empty() {
            return;
        }
        let (tokens, defer_eob) = match tokens.split_last() {
            Some((&last, rest)) if last == END_BLOCK_MARKER => (rest, true),
            _ => (tokens, false),
        };
        let lit_codes = std::mem::take(&mut self.literal_encoding.codes);
        let off_codes = std::mem::take(&mut self.offset_encoding.codes);
        let (le, oe): (&[Hcode], &[Hcode]) = match tables {
            Tables::Fixed => (&s.fixed_literal.codes, &s.fixed_offset.codes),
            Tables::Own => (&lit_codes, &off_codes),
        };
        for &t in tokens {
            if t < 256 {
                self.write_code(le[t as usize]);
                continue;
            }
            let length = (t >> 22) as u8;
            let len_code = (LENGTH_CODES[length as usize] & 31) as u32;
            self.write_code(le[LENGTH_CODES_START + len_code as usize]);
            if len_code >= LENGTH_EXTRA_BITS_MIN_CODE {
                let extra_length = length.wrapping_sub(LENGTH_BASE[len_code as usize]) as u32;
                self.write_bits(extra_length, LENGTH_EXTRA_BITS[len_code as usize] as u32);
            }
            let offset = t & ((1 << 22) - 1);
            let off_code = (offset >> 16) & 31;
            self.write_code(oe[off_code as usize]);
            if off_code >= OFFSET_EXTRA_BITS_MIN_CODE {
                let comb = OFFSET_COMBINED[off_code as usize];
                self.write_bits(offset.wrapping_sub(comb >> 8) & 0xffff, comb & 0xff);
            }
        }
        if defer_eob {
            self.write_code(le[END_BLOCK_MARKER as usize]);
        }
        self.literal_encoding.codes = lit_codes;
        self.offset_encoding.codes = off_codes;
    }

    /// Go's `writeBlockHuff`: literals only, reusing the last literal table when Go's
    /// estimate says so, stored when the input looks incompressible.
    pub fn write_block_huff(&mut self, eof: bool, input: &[u8], sync: bool) {
        self.literal_freq = [0; LENGTH_CODES_START + 32];
        if !self.wrote_huffman {
            self.offset_freq = [0; 32];
        }
        const NUM_LITERALS: usize = END_BLOCK_MARKER as usize + 1;
        const GUESS_HEADER_SIZE_BITS: i64 = 70 * 8;
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        let ssize = Self::stored_size(Some(input));
        if ssize.is_some() && input.len() > 1024 {
            let mut abs = 0f64;
            let avg = input.len() as f64 / 256.0;
            let max = (input.len() * 2) as f64;
            for &v in &self.literal_freq[..256] {
                let diff = v as f64 - avg;
                abs += diff * diff;
                if abs >= max {
                    break;
                }
            }
            if abs < max {
                self.write_stored(input, eof);
                return;
            }
        }
        self.literal_freq[END_BLOCK_MARKER as usize] = 1;
        self.tmp_lit_encoding
            .generate(&self.literal_freq[..NUM_LITERALS], 15);
        let mut est_bits = self
            .tmp_lit_encoding
            .can_encode_len(&self.literal_freq[..NUM_LITERALS]);
        if est_bits < i32::MAX as i64 {
            est_bits += self.prev_header;
            if self.prev_header == 0 {
                est_bits += GUESS_HEADER_SIZE_BITS;
            }
            est_bits += est_bits >> self.log_new_table_penalty;
        }
        if matches!(ssize, Some(s) if s <= est_bits) {
            self.write_stored(input, eof);
            return;
        }
        if self.prev_header > 0 {
            let reuse_size = self
                .literal_encoding
                .can_encode_len(&self.literal_freq[..256]);
            if est_bits < reuse_size {
                self.write_eob();
                self.prev_header = 0;
            }
        }
        if self.prev_header == 0 {
            std::mem::swap(&mut self.literal_encoding, &mut self.tmp_lit_encoding);
            self.generate_codegen(NUM_LITERALS, 1, true);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let num_codegens = self.codegens();
            self.write_dynamic_header(NUM_LITERALS, 1, num_codegens, eof);
            self.wrote_huffman = true;
            self.prev_header = self.header_size().0;
        }
        let mut enc = [0 as Hcode; 256];
        enc.copy_from_slice(&self.literal_encoding.codes[..256]);
        for &t in input {
            self.write_code(enc[t as usize]);
        }
        if eof || sync {
            self.write_eob();
            self.prev_header = 0;
            self.wrote_huffman = false;
        }
    }
}
