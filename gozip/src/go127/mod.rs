//! Go 1.27's rewritten `compress/flate` compressor (`deflate.go`): stored (0), Huffman only
//! (−2, 32 KiB blocks), the table matchers of levels 1–6 (`fast.rs`) on 64 KiB blocks, and the
//! lazy hash-chain matcher of levels 7–9 with its end-of-match retry, literal skipping and
//! (level 9) gain estimate. Ported from Go 1.27.3's source (BSD-3, The Go Authors).

mod fast;
mod huffman;
mod token;

use crate::classic::common_prefix;
use fast::FastEnc;
use huffman::{BitWriter, HuffmanEncoder, MAX_STORE_BLOCK_SIZE};
use token::{offset_code, Tokens, LENGTH_CODES, LENGTH_EXTRA_BITS, OFFSET_EXTRA_BITS};

const WINDOW_SIZE: i32 = 1 << 15;
const WINDOW_MASK: i32 = WINDOW_SIZE - 1;
const MIN_MATCH_LENGTH: i32 = 4;
const MAX_MATCH_LENGTH: i32 = 258;
const MIN_OFFSET_SIZE: i32 = 1;
const MAX_FLATE_BLOCK_TOKENS: u16 = 1 << 15;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
const MAX_HASH_OFFSET: i32 = 1 << 28;
const PRIME4BYTES: u32 = 2654435761;

#[inline(always)]
fn hash4(b: &[u8], i: i32) -> usize {
    let i = i as usize;
    (u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]).wrapping_mul(PRIME4BYTES)
        >> (32 - HASH_BITS)) as usize
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Store,
    Huff,
    Fast,
    Lazy,
}

/// Levels 7–9: Go's `advancedState` and parameters.
struct Lazy {
    lazy: i32,
    nice: i32,
    chain: i32,
    length: i32,
    offset: i32,
    max_insert_index: i32,
    chain_head: i32,
    hash_offset: i32,
    literal_counter: u16,
    index: i32,
    hash_head: Vec<i32>,
    hash_prev: Vec<i32>,
    /// Level 9's literal cost model, rebuilt at each step.
    h: Option<Box<HuffmanEncoder>>,
}

/// What every level shares: the window, the tokens of the block and the bit writer.
struct Core {
    w: BitWriter,
    window: Vec<u8>,
    window_end: i32,
    block_start: i32,
    tokens: Box<Tokens>,
    sync: bool,
    byte_available: bool,
}

pub struct Compressor {
    mode: Mode,
    c: Core,
    fast: Option<Box<FastEnc>>,
    state: Option<Box<Lazy>>,
}

impl Compressor {
    /// `level` as Go takes it (−2 … 9, −1 = 6); the caller checks the range.
    pub fn new(level: i32) -> Self {
        let level = if level == -1 { 6 } else { level };
        let mut w = BitWriter::new();
        let (mode, window) = match level {
            0 => (Mode::Store, MAX_STORE_BLOCK_SIZE),
            -2 => {
                w.log_new_table_penalty = 10;
                (Mode::Huff, 32 << 10)
            }
            1..=6 => {
                w.log_new_table_penalty = 7;
                (Mode::Fast, MAX_STORE_BLOCK_SIZE)
            }
            _ => {
                w.log_new_table_penalty = 8;
                (Mode::Lazy, 2 * WINDOW_SIZE as usize)
            }
        };
        let state = (mode == Mode::Lazy).then(|| {
            let (lazy, nice, chain) = match level {
                7 => (12, 16, 24),
                8 => (30, 40, 64),
                _ => (258, 258, 1024),
            };
            Box::new(Lazy {
                lazy,
                nice,
                chain,
                length: MIN_MATCH_LENGTH - 1,
                offset: 0,
                max_insert_index: 0,
                chain_head: -1,
                hash_offset: 1,
                literal_counter: 0,
                index: 0,
                hash_head: vec![0; HASH_SIZE],
                hash_prev: vec![0; WINDOW_SIZE as usize],
                h: None,
            })
        });
        Compressor {
            mode,
            c: Core {
                w,
                window: vec![0; window],
                window_end: 0,
                block_start: 0,
                tokens: Box::new(Tokens::new()),
                sync: false,
                byte_available: false,
            },
            fast: (mode == Mode::Fast).then(|| Box::new(FastEnc::new(level))),
            state,
        }
    }

    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.c.w.out
    }

    /// Go's `write`: a step only when the window is full, then fill.
    pub fn write(&mut self, mut b: &[u8], drain: &mut dyn FnMut(&mut Vec<u8>)) {
        while !b.is_empty() {
            if self.c.window_end as usize == self.c.window.len() || self.c.sync {
                self.step();
                drain(&mut self.c.w.out);
            }
            let n = self.fill(b);
            b = &b[n..];
        }
    }

    pub fn close(&mut self) {
        self.c.sync = true;
        self.step();
        self.c.w.write_stored_header(0, true);
        self.c.w.flush();
    }

    fn step(&mut self) {
        match (self.mode, self.state.as_mut(), self.fast.as_mut()) {
            (Mode::Store, ..) => self.c.store(),
            (Mode::Huff, ..) => self.c.deflate_huff(),
            (Mode::Fast, _, Some(f)) => self.c.deflate_fast(f),
            (Mode::Lazy, Some(s), _) => self.c.deflate_lazy(s),
            _ => {}
        }
    }

    fn fill(&mut self, b: &[u8]) -> usize {
        let c = &mut self.c;
        if let Some(s) = self.state.as_mut() {
            if s.index >= 2 * WINDOW_SIZE - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
                let ws = WINDOW_SIZE as usize;
                c.window.copy_within(ws..2 * ws, 0);
                s.index -= WINDOW_SIZE;
                c.window_end -= WINDOW_SIZE;
                if c.block_start >= WINDOW_SIZE {
                    c.block_start -= WINDOW_SIZE;
                } else {
                    c.block_start = i32::MAX;
                }
                s.hash_offset += WINDOW_SIZE;
                if s.hash_offset > MAX_HASH_OFFSET {
                    let delta = s.hash_offset - 1;
                    s.hash_offset -= delta;
                    s.chain_head -= delta;
                    for v in s.hash_prev.iter_mut().chain(s.hash_head.iter_mut()) {
                        *v = (*v - delta).max(0);
                    }
                }
            }
        }
        let we = c.window_end as usize;
        let n = b.len().min(c.window.len() - we);
        c.window[we..we + n].copy_from_slice(&b[..n]);
        c.window_end += n as i32;
        n
    }
}

impl Core {
    fn write_stored_block(&mut self, len: usize) {
        self.w.write_stored_header(len, false);
        self.w.write_bytes(&self.window[..len]);
    }

    fn store(&mut self) {
        if self.window_end > 0 && (self.window_end as usize == MAX_STORE_BLOCK_SIZE || self.sync) {
            self.write_stored_block(self.window_end as usize);
            self.window_end = 0;
        }
    }

    fn deflate_huff(&mut self) {
        if (self.window_end as usize) < self.window.len() && !self.sync || self.window_end == 0 {
            return;
        }
        self.w
            .write_block_huff(false, &self.window[..self.window_end as usize], self.sync);
        self.window_end = 0;
    }

    fn deflate_fast(&mut self, f: &mut FastEnc) {
        let we = self.window_end as usize;
        if we < self.window.len() {
            if !self.sync {
                return;
            }
            if we < 128 {
                if we == 0 {
                    return;
                }
                if we <= 32 {
                    self.write_stored_block(we);
                } else {
                    self.w.write_block_huff(false, &self.window[..we], true);
                }
                self.tokens.reset();
                self.window_end = 0;
                f.reset();
                return;
            }
        }
        f.encode(&mut self.tokens, &self.window[..we]);
        let n = self.tokens.n as usize;
        if n == 0 {
            self.write_stored_block(we);
        } else if n > we - (we >> 4) {
            self.w
                .write_block_huff(false, &self.window[..we], self.sync);
        } else {
            self.w.write_block_dynamic(
                &mut self.tokens,
                false,
                Some(&self.window[..we]),
                self.sync,
            );
        }
        self.tokens.reset();
        self.window_end = 0;
    }

    fn write_block(&mut self, index: i32) {
        if index > 0 {
            let window = if self.block_start <= index {
                Some(&self.window[self.block_start as usize..index as usize])
            } else {
                None
            };
            self.block_start = index;
            self.w
                .write_block_dynamic(&mut self.tokens, false, window, self.sync);
        }
    }

    /// After a token: a full block is written.
    fn maybe_flush_block(&mut self, index: i32) {
        if self.tokens.n == MAX_FLATE_BLOCK_TOKENS {
            self.write_block(index);
            self.tokens.reset();
        }
    }

    fn find_match(&self, s: &Lazy, pos: i32, prev_head: i32, lookahead: i32) -> Option<(i32, i32)> {
        let min_match_look = lookahead.min(MAX_MATCH_LENGTH);
        let win = &self.window[..(pos + min_match_look) as usize];
        let nice = s.nice.min(win.len() as i32 - pos);
        let mut tries = s.chain;
        let mut length = MIN_MATCH_LENGTH - 1;
        let mut w_end = win[(pos + length) as usize];
        let w_pos = &win[pos as usize..];
        let min_index = (pos - WINDOW_SIZE).max(0);
        let mut found = None;
        let mut c_gain: i64 = 4;
        const BASE_COST: i64 = 3;
        let mut i = prev_head;
        while tries > 0 {
            if w_end == win[(i + length) as usize] {
                let iu = i as usize;
                let n = common_prefix(&win[iu..iu + min_match_look as usize], w_pos) as i32;
                if n > length {
                    let mut take = true;
                    if s.chain >= 100 {
                        let raw =
                            s.h.as_ref()
                                .map_or(0, |h| h.bit_length_raw(&w_pos[..n as usize]));
                        // Go passes the distance itself, not distance − 1, to offsetCode here.
                        let new_gain = raw
                            - OFFSET_EXTRA_BITS[offset_code((pos - i) as u32) as usize] as i64
                            - BASE_COST
                            - LENGTH_EXTRA_BITS[LENGTH_CODES[((n - 3) & 255) as usize] as usize]
                                as i64;
                        if new_gain <= c_gain {
                            take = false;
                        } else {
                            c_gain = new_gain;
                        }
                    }
                    if take {
                        length = n;
                        found = Some((n, pos - i));
                        if n >= nice {
                            break;
                        }
                        w_end = win[(pos + n) as usize];
                    }
                }
            }
            if i <= min_index {
                break;
            }
            i = s.hash_prev[(i & WINDOW_MASK) as usize] - s.hash_offset;
            if i < min_index {
                break;
            }
            tries -= 1;
        }
        found
    }

    fn try_better_match_at_end(
        &mut self,
        s: &mut Lazy,
        mut prev_length: i32,
        mut prev_offset: i32,
        lookahead: i32,
    ) -> (i32, i32) {
        const CHECK_OFF: i32 = 2;
        if prev_length >= MAX_MATCH_LENGTH - CHECK_OFF {
            return (prev_length, prev_offset);
        }
        let prev_index = s.index - 1;
        if prev_index + prev_length >= s.max_insert_index {
            return (prev_length, prev_offset);
        }
        let end = lookahead.min(MAX_MATCH_LENGTH + CHECK_OFF) + prev_index;
        let min_index = (s.index - WINDOW_SIZE).max(0);
        let h = hash4(&self.window, prev_index + prev_length);
        let ch2 = s.hash_head[h] - s.hash_offset - prev_length;
        if prev_index - ch2 == prev_offset || ch2 <= min_index + CHECK_OFF {
            return (prev_length, prev_offset);
        }
        let a = &self.window[(prev_index + CHECK_OFF) as usize..end as usize];
        let b0 = (ch2 + CHECK_OFF) as usize;
        let length = common_prefix(a, &self.window[b0..b0 + a.len()]) as i32;
        if length <= prev_length {
            return (prev_length, prev_offset);
        }
        prev_length = length;
        prev_offset = prev_index - ch2;
        let mut i = CHECK_OFF - 1;
        while i >= 0 {
            if prev_length >= MAX_MATCH_LENGTH
                || self.window[(prev_index + i) as usize] != self.window[(ch2 + i) as usize]
            {
                for j in 0..=i {
                    self.tokens
                        .add_literal(self.window[(prev_index + j) as usize]);
                    self.maybe_flush_block(s.index);
                    s.index += 1;
                    if s.index < s.max_insert_index {
                        insert(s, &self.window, s.index);
                    }
                }
                break;
            }
            prev_length += 1;
            i -= 1;
        }
        (prev_length, prev_offset)
    }

    fn skip_literals(&mut self, s: &mut Lazy) {
        let n = s.literal_counter as i32 - s.chain;
        if n <= 0 {
            return;
        }
        let n = 1 + (n >> 6);
        for _ in 0..n {
            if s.index >= self.window_end - 1 {
                break;
            }
            self.tokens.add_literal(self.window[(s.index - 1) as usize]);
            self.maybe_flush_block(s.index);
            if s.index < s.max_insert_index {
                insert(s, &self.window, s.index);
            }
            s.index += 1;
        }
        self.tokens.add_literal(self.window[(s.index - 1) as usize]);
        self.byte_available = false;
        self.maybe_flush_block(s.index);
    }

    fn deflate_lazy(&mut self, s: &mut Lazy) {
        if self.window_end - s.index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !self.sync {
            return;
        }
        if self.window_end != s.index && s.chain > 100 {
            let h =
                s.h.get_or_insert_with(|| Box::new(HuffmanEncoder::new(1 << 15)));
            let mut tmp = [0u16; 256];
            let to_index = &self.window[s.index as usize..self.window_end as usize];
            let to_index = &to_index[..to_index.len().min(MAX_FLATE_BLOCK_TOKENS as usize)];
            for &v in to_index {
                tmp[v as usize] += 1;
            }
            h.generate(&tmp, 15);
        }
        s.max_insert_index = self.window_end - (MIN_MATCH_LENGTH - 1);
        loop {
            let lookahead = self.window_end - s.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !self.sync {
                    return;
                }
                if lookahead == 0 {
                    if self.byte_available {
                        self.tokens.add_literal(self.window[(s.index - 1) as usize]);
                        self.byte_available = false;
                    }
                    if self.tokens.n > 0 {
                        self.write_block(s.index);
                        self.tokens.reset();
                    }
                    return;
                }
            }
            if s.index < s.max_insert_index {
                insert(s, &self.window, s.index);
            }
            let mut prev_length = s.length;
            let mut prev_offset = s.offset;
            s.length = MIN_MATCH_LENGTH - 1;
            s.offset = 0;
            let min_index = (s.index - WINDOW_SIZE).max(0);
            if s.chain_head - s.hash_offset >= min_index
                && lookahead > prev_length
                && prev_length < s.lazy
            {
                if let Some((l, o)) =
                    self.find_match(s, s.index, s.chain_head - s.hash_offset, lookahead)
                {
                    s.length = l;
                    s.offset = o;
                }
            }
            if prev_length >= MIN_MATCH_LENGTH && s.length <= prev_length {
                (prev_length, prev_offset) =
                    self.try_better_match_at_end(s, prev_length, prev_offset, lookahead);
                self.tokens.add_match(
                    (prev_length - 3) as u32,
                    (prev_offset - MIN_OFFSET_SIZE) as u32,
                );
                let new_index = s.index + prev_length - 1;
                let end = new_index.min(s.max_insert_index);
                let start = (s.index + 1).min(s.max_insert_index);
                for di in start..end {
                    let h = hash4(&self.window, di) & HASH_MASK as usize;
                    s.hash_prev[(di & WINDOW_MASK) as usize] = s.hash_head[h];
                    s.hash_head[h] = di + s.hash_offset;
                }
                s.index = new_index;
                self.byte_available = false;
                s.length = MIN_MATCH_LENGTH - 1;
                self.maybe_flush_block(s.index);
                s.literal_counter = 0;
                continue;
            }
            if s.length >= MIN_MATCH_LENGTH {
                s.literal_counter = 0;
            }
            if self.byte_available {
                s.literal_counter = s.literal_counter.wrapping_add(1);
                self.tokens.add_literal(self.window[(s.index - 1) as usize]);
                self.maybe_flush_block(s.index);
                s.index += 1;
                self.skip_literals(s);
            } else {
                s.index += 1;
                self.byte_available = true;
            }
        }
    }
}

fn insert(s: &mut Lazy, window: &[u8], index: i32) {
    let h = hash4(window, index);
    let ch = s.hash_head[h];
    s.chain_head = ch;
    s.hash_prev[(index & WINDOW_MASK) as usize] = ch;
    s.hash_head[h] = index + s.hash_offset;
}
