//! Go ≤ 1.26's `compress/flate` compressor (`deflate.go`): stored (0), Huffman only (−2),
//! level 1 (`deflatefast.go`), and the hash-chain matcher of levels 2–9 (greedy with skipped
//! hashing at 2–3, lazy at 4–9). Go 1.19 through 1.26 write the same bytes. Ported from Go's
//! source (BSD-3, The Go Authors): the window, the hash chains, every threshold and the moment
//! each block is cut are Go's, because where a block ends changes the bytes.

mod fast;
pub(crate) mod huffman;
mod token;

pub(crate) use fast::common_prefix;
use fast::DeflateFast;
use huffman::{BitWriter, MAX_STORE_BLOCK_SIZE};
use token::{literal_token, match_token, Token};

const WINDOW_SIZE: i64 = 1 << 15;
const WINDOW_MASK: i64 = WINDOW_SIZE - 1;
const BASE_MATCH_LENGTH: i64 = 3;
const MIN_MATCH_LENGTH: i64 = 4;
const MAX_MATCH_LENGTH: i64 = 258;
const BASE_MATCH_OFFSET: i64 = 1;
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 14;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
const MAX_HASH_OFFSET: i64 = 1 << 24;
const SKIP_NEVER: i64 = i32::MAX as i64;
const HASHMUL: u32 = 0x1e35a7bd;

#[derive(Clone, Copy)]
struct Params {
    good: i64,
    lazy: i64,
    nice: i64,
    chain: i64,
    fast_skip_hashing: i64,
}

fn params(level: i32) -> Params {
    let (good, lazy, nice, chain, fast_skip_hashing) = match level {
        2 => (4, 0, 16, 8, 5),
        3 => (4, 0, 32, 32, 6),
        4 => (4, 4, 16, 16, SKIP_NEVER),
        5 => (8, 16, 32, 32, SKIP_NEVER),
        6 => (8, 16, 128, 128, SKIP_NEVER),
        7 => (8, 32, 128, 256, SKIP_NEVER),
        8 => (32, 128, 258, 1024, SKIP_NEVER),
        _ => (32, 258, 258, 4096, SKIP_NEVER),
    };
    Params {
        good,
        lazy,
        nice,
        chain,
        fast_skip_hashing,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Store,
    Huff,
    Fast,
    Chain,
}

/// One Go ≤ 1.26 `flate.Writer`. Output accumulates in `self.w.out` for the caller to drain.
pub struct Compressor {
    mode: Mode,
    p: Params,
    pub(crate) w: BitWriter,
    sync: bool,
    fast: Option<Box<DeflateFast>>,

    chain_head: i64,
    hash_head: Vec<u32>,
    hash_prev: Vec<u32>,
    hash_offset: i64,

    index: i64,
    window: Vec<u8>,
    window_end: i64,
    block_start: i64,
    byte_available: bool,
    tokens: Vec<Token>,

    length: i64,
    offset: i64,
    max_insert_index: i64,
}

#[inline(always)]
fn hash4(b: &[u8]) -> u32 {
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]).wrapping_mul(HASHMUL)) >> (32 - HASH_BITS)
}

impl Compressor {
    /// `level` as Go takes it: −2 (Huffman only), −1 (= 6), 0 … 9. The caller checks the range.
    pub fn new(level: i32) -> Self {
        let level = if level == -1 { 6 } else { level };
        let mode = match level {
            0 => Mode::Store,
            -2 => Mode::Huff,
            1 => Mode::Fast,
            _ => Mode::Chain,
        };
        let chain = mode == Mode::Chain;
        Compressor {
            mode,
            p: params(level),
            w: BitWriter::new(),
            sync: false,
            fast: (mode == Mode::Fast).then(|| Box::new(DeflateFast::new())),
            chain_head: -1,
            hash_head: if chain {
                vec![0; HASH_SIZE]
            } else {
                Vec::new()
            },
            hash_prev: if chain {
                vec![0; WINDOW_SIZE as usize]
            } else {
                Vec::new()
            },
            hash_offset: 1,
            index: 0,
            window: vec![
                0;
                if chain {
                    2 * WINDOW_SIZE as usize
                } else {
                    MAX_STORE_BLOCK_SIZE
                }
            ],
            window_end: 0,
            block_start: 0,
            byte_available: false,
            tokens: Vec::with_capacity(if mode == Mode::Fast {
                MAX_STORE_BLOCK_SIZE + 1
            } else {
                MAX_FLATE_BLOCK_TOKENS + 1
            }),
            length: MIN_MATCH_LENGTH - 1,
            offset: 0,
            max_insert_index: 0,
        }
    }

    /// Go's `write`: `step` then `fill`, until `b` is in the window. `drain` is called after
    /// every step so the output never piles up.
    pub fn write(&mut self, mut b: &[u8], drain: &mut dyn FnMut(&mut Vec<u8>)) {
        while !b.is_empty() {
            self.step();
            drain(&mut self.w.out);
            let n = self.fill(b);
            b = &b[n..];
        }
    }

    /// Go's `close`: the last step, then an empty final stored block.
    pub fn close(&mut self) {
        self.sync = true;
        self.step();
        self.w.write_stored_header(0, true);
        self.w.flush();
    }

    fn step(&mut self) {
        match self.mode {
            Mode::Store => self.store(),
            Mode::Huff => self.store_huff(),
            Mode::Fast => self.enc_speed(),
            Mode::Chain => self.deflate(),
        }
    }

    fn fill(&mut self, b: &[u8]) -> usize {
        if self.mode == Mode::Chain {
            self.fill_deflate(b)
        } else {
            self.fill_store(b)
        }
    }

    fn fill_store(&mut self, b: &[u8]) -> usize {
        let we = self.window_end as usize;
        let n = b.len().min(self.window.len() - we);
        self.window[we..we + n].copy_from_slice(&b[..n]);
        self.window_end += n as i64;
        n
    }

    fn fill_deflate(&mut self, b: &[u8]) -> usize {
        if self.index >= 2 * WINDOW_SIZE - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
            let ws = WINDOW_SIZE as usize;
            self.window.copy_within(ws..2 * ws, 0);
            self.index -= WINDOW_SIZE;
            self.window_end -= WINDOW_SIZE;
            if self.block_start >= WINDOW_SIZE {
                self.block_start -= WINDOW_SIZE;
            } else {
                self.block_start = i32::MAX as i64;
            }
            self.hash_offset += WINDOW_SIZE;
            if self.hash_offset > MAX_HASH_OFFSET {
                let delta = self.hash_offset - 1;
                self.hash_offset -= delta;
                self.chain_head -= delta;
                for v in self.hash_prev.iter_mut().chain(self.hash_head.iter_mut()) {
                    *v = if *v as i64 > delta {
                        (*v as i64 - delta) as u32
                    } else {
                        0
                    };
                }
            }
        }
        self.fill_store(b)
    }

    fn write_block(&mut self, index: i64) {
        if index > 0 {
            let window = if self.block_start <= index {
                Some(&self.window[self.block_start as usize..index as usize])
            } else {
                None
            };
            self.block_start = index;
            self.w.write_block(&mut self.tokens, false, window);
        }
    }

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

    fn store_huff(&mut self) {
        if (self.window_end as usize) < self.window.len() && !self.sync || self.window_end == 0 {
            return;
        }
        self.w
            .write_block_huff(false, &self.window[..self.window_end as usize]);
        self.window_end = 0;
    }

    fn enc_speed(&mut self) {
        let we = self.window_end as usize;
        if we < MAX_STORE_BLOCK_SIZE {
            if !self.sync {
                return;
            }
            if we < 128 {
                match we {
                    0 => return,
                    1..=16 => self.write_stored_block(we),
                    _ => self.w.write_block_huff(false, &self.window[..we]),
                }
                self.window_end = 0;
                if let Some(f) = self.fast.as_mut() {
                    f.reset();
                }
                return;
            }
        }
        self.tokens.clear();
        if let Some(f) = self.fast.as_mut() {
            f.encode(&mut self.tokens, &self.window[..we]);
        }
        if self.tokens.len() > we - (we >> 4) {
            self.w.write_block_huff(false, &self.window[..we]);
        } else {
            self.w
                .write_block_dynamic(&mut self.tokens, false, &self.window[..we]);
        }
        self.window_end = 0;
    }

    fn insert_hash(&mut self, index: i64) {
        let i = index as usize;
        let h = (hash4(&self.window[i..i + 4]) & HASH_MASK) as usize;
        self.hash_prev[(index & WINDOW_MASK) as usize] = self.hash_head[h];
        self.hash_head[h] = (index + self.hash_offset) as u32;
    }

    /// Go's `findMatch`: the longest match at `pos` longer than `prev_length`, trying at most
    /// `chain` entries of the hash chain from `prev_head`.
    fn find_match(
        &self,
        pos: i64,
        prev_head: i64,
        prev_length: i64,
        lookahead: i64,
    ) -> Option<(i64, i64)> {
        let min_match_look = lookahead.min(MAX_MATCH_LENGTH);
        let win = &self.window[..(pos + min_match_look) as usize];
        let nice = self.p.nice.min(win.len() as i64 - pos);
        let mut tries = self.p.chain;
        let mut length = prev_length;
        if length >= self.p.good {
            tries >>= 2;
        }
        let mut w_end = win[(pos + length) as usize];
        let w_pos = &win[pos as usize..];
        let min_index = pos - WINDOW_SIZE;
        let mut found = None;
        let mut i = prev_head;
        while tries > 0 {
            if w_end == win[(i + length) as usize] {
                let iu = i as usize;
                let n = common_prefix(
                    &win[iu..iu + min_match_look as usize],
                    &w_pos[..min_match_look as usize],
                ) as i64;
                if n > length && (n > MIN_MATCH_LENGTH || pos - i <= 4096) {
                    length = n;
                    found = Some((n, pos - i));
                    if n >= nice {
                        break;
                    }
                    w_end = win[(pos + n) as usize];
                }
            }
            if i == min_index {
                break;
            }
            i = self.hash_prev[(i & WINDOW_MASK) as usize] as i64 - self.hash_offset;
            if i < min_index || i < 0 {
                break;
            }
            tries -= 1;
        }
        found
    }

    fn deflate(&mut self) {
        if self.window_end - self.index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !self.sync {
            return;
        }
        let fsh = self.p.fast_skip_hashing;
        self.max_insert_index = self.window_end - (MIN_MATCH_LENGTH - 1);
        loop {
            let lookahead = self.window_end - self.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !self.sync {
                    break;
                }
                if lookahead == 0 {
                    if self.byte_available {
                        let t = literal_token(self.window[(self.index - 1) as usize]);
                        self.tokens.push(t);
                        self.byte_available = false;
                    }
                    if !self.tokens.is_empty() {
                        self.write_block(self.index);
                        self.tokens.clear();
                    }
                    break;
                }
            }
            if self.index < self.max_insert_index {
                let i = self.index as usize;
                let h = (hash4(&self.window[i..i + 4]) & HASH_MASK) as usize;
                self.chain_head = self.hash_head[h] as i64;
                self.hash_prev[(self.index & WINDOW_MASK) as usize] = self.chain_head as u32;
                self.hash_head[h] = (self.index + self.hash_offset) as u32;
            }
            let prev_length = self.length;
            let prev_offset = self.offset;
            self.length = MIN_MATCH_LENGTH - 1;
            self.offset = 0;
            let min_index = (self.index - WINDOW_SIZE).max(0);

            if self.chain_head - self.hash_offset >= min_index
                && (fsh != SKIP_NEVER && lookahead > MIN_MATCH_LENGTH - 1
                    || fsh == SKIP_NEVER && lookahead > prev_length && prev_length < self.p.lazy)
            {
                if let Some((l, o)) = self.find_match(
                    self.index,
                    self.chain_head - self.hash_offset,
                    MIN_MATCH_LENGTH - 1,
                    lookahead,
                ) {
                    self.length = l;
                    self.offset = o;
                }
            }
            if fsh != SKIP_NEVER && self.length >= MIN_MATCH_LENGTH
                || fsh == SKIP_NEVER
                    && prev_length >= MIN_MATCH_LENGTH
                    && self.length <= prev_length
            {
                let t = if fsh != SKIP_NEVER {
                    match_token(
                        (self.length - BASE_MATCH_LENGTH) as u32,
                        (self.offset - BASE_MATCH_OFFSET) as u32,
                    )
                } else {
                    match_token(
                        (prev_length - BASE_MATCH_LENGTH) as u32,
                        (prev_offset - BASE_MATCH_OFFSET) as u32,
                    )
                };
                self.tokens.push(t);
                if self.length <= fsh {
                    let new_index = if fsh != SKIP_NEVER {
                        self.index + self.length
                    } else {
                        self.index + prev_length - 1
                    };
                    let mut index = self.index + 1;
                    while index < new_index {
                        if index < self.max_insert_index {
                            self.insert_hash(index);
                        }
                        index += 1;
                    }
                    self.index = index;
                    if fsh == SKIP_NEVER {
                        self.byte_available = false;
                        self.length = MIN_MATCH_LENGTH - 1;
                    }
                } else {
                    self.index += self.length;
                }
                if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                    self.write_block(self.index);
                    self.tokens.clear();
                }
            } else {
                if fsh != SKIP_NEVER || self.byte_available {
                    let i = if fsh != SKIP_NEVER {
                        self.index
                    } else {
                        self.index - 1
                    };
                    self.tokens.push(literal_token(self.window[i as usize]));
                    if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                        self.write_block(i + 1);
                        self.tokens.clear();
                    }
                }
                self.index += 1;
                if fsh == SKIP_NEVER {
                    self.byte_available = true;
                }
            }
        }
    }
}
