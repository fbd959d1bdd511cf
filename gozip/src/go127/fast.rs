//! Go 1.27's levels 1–6 (`deflatefast.go`, `level1.go` … `level6.go`): hash-table matchers
//! over a shared history of up to 5 × 64 KiB, one table shape per level. Ported from Go's
//! source (BSD-3, The Go Authors); the hashes, the skipping, the candidates each level tries
//! and the order it updates its tables in are Go's.

use super::token::Tokens;
use crate::classic::common_prefix;

const TABLE_BITS: u8 = 15;
const TABLE_SIZE: usize = 1 << TABLE_BITS;
const HASH_LONG_BYTES: u8 = 7;
const BASE_MATCH_OFFSET: i32 = 1;
const MAX_MATCH_OFFSET: i32 = 1 << 15;
const MAX_MATCH_LENGTH: i32 = 258;
const MAX_STORE_BLOCK_SIZE: i32 = 65535;
const ALLOC_HISTORY: usize = MAX_STORE_BLOCK_SIZE as usize * 5;
const BUFFER_RESET: i32 =
    ((1i64 << 31) - ALLOC_HISTORY as i64 - MAX_STORE_BLOCK_SIZE as i64 - 1) as i32;
const INPUT_MARGIN: i32 = 12 - 1;
const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;

const PRIME3BYTES: u32 = 506832829;
const PRIME4BYTES: u32 = 2654435761;
const PRIME5BYTES: u64 = 889523592379;
const PRIME6BYTES: u64 = 227718039650203;
const PRIME7BYTES: u64 = 58295818150454627;
const PRIME8BYTES: u64 = 0xcf1bbcdcb7a56463;

/// Go's `hashLen`: a hash of the first `n` bytes of `u` in `b` bits.
#[inline(always)]
pub fn hash_len(u: u64, b: u8, n: u8) -> u32 {
    let b = b as u32;
    match n {
        3 => ((u << 8) as u32).wrapping_mul(PRIME3BYTES) >> (32 - b),
        5 => ((u << (64 - 40)).wrapping_mul(PRIME5BYTES) >> (64 - b)) as u32,
        6 => ((u << (64 - 48)).wrapping_mul(PRIME6BYTES) >> (64 - b)) as u32,
        7 => ((u << (64 - 56)).wrapping_mul(PRIME7BYTES) >> (64 - b)) as u32,
        8 => (u.wrapping_mul(PRIME8BYTES) >> (64 - b)) as u32,
        _ => (u as u32).wrapping_mul(PRIME4BYTES) >> (32 - b),
    }
}

#[inline(always)]
fn le64(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

#[inline(always)]
fn le32(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Go's `matchLen(src[s:], src[t:])` with `t < s`.
#[inline(always)]
fn match_len_long(s: i32, t: i32, src: &[u8]) -> i32 {
    let (s, t) = (s as usize, t as usize);
    let a = &src[s..];
    common_prefix(a, &src[t..t + a.len()]) as i32
}

/// Go's `matchLenLimited`: at most 254 bytes.
#[inline(always)]
fn match_len_limited(s: i32, t: i32, src: &[u8]) -> i32 {
    let (s, t) = (s as usize, t as usize);
    let a = &src[s..(s + MAX_MATCH_LENGTH as usize - 4).min(src.len())];
    common_prefix(a, &src[t..t + a.len()]) as i32
}

/// Go's `fastGen`: the history the matchers search, and the offset of its start.
struct FastGen {
    hist: Vec<u8>,
    /// Go's `cap(e.hist)`, which decides when the history moves down (kept apart from the
    /// Vec's own capacity, which Rust may round up).
    cap: usize,
    cur: i32,
}

impl FastGen {
    fn new() -> Self {
        FastGen {
            hist: Vec::new(),
            cap: 0,
            cur: MAX_STORE_BLOCK_SIZE,
        }
    }

    fn add_block(&mut self, src: &[u8]) -> i32 {
        if self.hist.len() + src.len() > self.cap {
            if self.cap == 0 {
                self.hist = Vec::with_capacity(ALLOC_HISTORY);
                self.cap = ALLOC_HISTORY;
            } else {
                let offset = self.hist.len() as i32 - MAX_MATCH_OFFSET;
                let o = offset as usize;
                self.hist.copy_within(o..o + MAX_MATCH_OFFSET as usize, 0);
                self.cur += offset;
                self.hist.truncate(MAX_MATCH_OFFSET as usize);
            }
        }
        let s = self.hist.len() as i32;
        self.hist.extend_from_slice(src);
        s
    }

    fn reset(&mut self) {
        if self.cap < ALLOC_HISTORY {
            self.hist = Vec::with_capacity(ALLOC_HISTORY);
            self.cap = ALLOC_HISTORY;
        }
        if self.cur <= BUFFER_RESET {
            self.cur += MAX_MATCH_OFFSET + self.hist.len() as i32;
        }
        self.hist.clear();
    }
}

#[inline(always)]
fn shifted(v: i32, min_off: i32, cur: i32) -> i32 {
    if v <= min_off {
        0
    } else {
        v - cur + MAX_MATCH_OFFSET
    }
}

#[derive(Clone, Copy, Default)]
struct Prev {
    cur: i32,
    prev: i32,
}

/// One of Go 1.27's levels 1–6.
pub struct FastEnc {
    level: i32,
    g: FastGen,
    table: Vec<i32>,
    prev_table: Vec<Prev>,
}

impl FastEnc {
    pub fn new(level: i32) -> Self {
        let (table, prev_table) = match level {
            1 => (TABLE_SIZE, 0),
            2 => (1 << 17, 0),
            3 => (0, 1 << 16),
            4 => (2 * TABLE_SIZE, 0),
            _ => (TABLE_SIZE, TABLE_SIZE),
        };
        FastEnc {
            level,
            g: FastGen::new(),
            table: vec![0; table],
            prev_table: vec![Prev::default(); prev_table],
        }
    }

    pub fn reset(&mut self) {
        self.g.reset();
    }

    pub fn encode(&mut self, dst: &mut Tokens, src: &[u8]) {
        // Before `cur` can overflow: forget the tables (no history) or shift them down.
        if self.g.cur >= BUFFER_RESET {
            if self.g.hist.is_empty() {
                self.table.iter_mut().for_each(|v| *v = 0);
                self.prev_table
                    .iter_mut()
                    .for_each(|v| *v = Prev::default());
            } else {
                let cur = self.g.cur;
                let min_off = cur + self.g.hist.len() as i32 - MAX_MATCH_OFFSET;
                for v in self.table.iter_mut() {
                    *v = shifted(*v, min_off, cur);
                }
                for v in self.prev_table.iter_mut() {
                    if self.level == 3 {
                        v.cur = shifted(v.cur, min_off, cur);
                        v.prev = shifted(v.prev, min_off, cur);
                    } else if v.cur <= min_off {
                        *v = Prev::default();
                    } else {
                        v.cur = v.cur - cur + MAX_MATCH_OFFSET;
                        v.prev = shifted(v.prev, min_off, cur);
                    }
                }
            }
            self.g.cur = MAX_MATCH_OFFSET;
        }
        let s = self.g.add_block(src);
        if src.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            // Go leaves the tokens unfilled and says how many literals there are.
            dst.n = src.len() as u16;
            return;
        }
        let next_emit = match self.level {
            1 => self.l1(dst, s),
            2 => self.l2(dst, s),
            3 => self.l3(dst, s),
            4 => self.l4(dst, s),
            5 => self.l5(dst, s),
            _ => self.l6(dst, s),
        };
        let src = &self.g.hist;
        if (next_emit as usize) < src.len() {
            if dst.n == 0 {
                return;
            }
            dst.emit_literals(&src[next_emit as usize..]);
        }
    }

    /// Level 1: one table of 5-byte hashes, sparse indexing. Returns where literals resume.
    fn l1(&mut self, dst: &mut Tokens, mut s: i32) -> i32 {
        const HB: u8 = 5;
        let src = &self.g.hist[..];
        let cur = self.g.cur;
        let table = &mut self.table[..];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = le64(src, s);
        loop {
            let mut next_s;
            let mut t;
            loop {
                let mut next_hash = hash_len(cv, TABLE_BITS, HB) as usize;
                let candidate = table[next_hash];
                next_s = s + 2 + ((s - next_emit) >> 5);
                if next_s > s_limit {
                    return next_emit;
                }
                let mut now = le64(src, next_s);
                table[next_hash] = s + cur;
                next_hash = hash_len(now, TABLE_BITS, HB) as usize;
                t = candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == le32(src, t) {
                    table[next_hash] = next_s + cur;
                    break;
                }
                cv = now;
                s = next_s;
                next_s += 1;
                let candidate = table[next_hash];
                now >>= 8;
                table[next_hash] = s + cur;
                t = candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == le32(src, t) {
                    table[next_hash] = next_s + cur;
                    break;
                }
                cv = now;
                s = next_s;
            }
            loop {
                let mut l = match_len_long(s + 4, t + 4, src) + 4;
                while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                    s -= 1;
                    t -= 1;
                    l += 1;
                }
                if next_emit < s {
                    dst.emit_literals(&src[next_emit as usize..s as usize]);
                }
                dst.add_match_long(l, (s - t - BASE_MATCH_OFFSET) as u32);
                s += l;
                next_emit = s;
                if next_s >= s {
                    s = next_s + 1;
                }
                if s >= s_limit {
                    if ((s + l + 8) as usize) < src.len() {
                        let cv = le64(src, s);
                        table[hash_len(cv, TABLE_BITS, HB) as usize] = s + cur;
                    }
                    return next_emit;
                }
                let mut x = le64(src, s - 2);
                let o = cur + s - 2;
                let prev_hash = hash_len(x, TABLE_BITS, HB) as usize;
                table[prev_hash] = o;
                x >>= 16;
                let curr_hash = hash_len(x, TABLE_BITS, HB) as usize;
                let candidate = table[curr_hash];
                table[curr_hash] = o + 2;
                t = candidate - cur;
                if s - t > MAX_MATCH_OFFSET || x as u32 != le32(src, t) {
                    cv = x >> 8;
                    s += 1;
                    break;
                }
            }
        }
    }

    /// Level 2: like level 1 with a larger table and more indexing after matches.
    fn l2(&mut self, dst: &mut Tokens, mut s: i32) -> i32 {
        const HB: u8 = 5;
        const TB: u8 = 17;
        let src = &self.g.hist[..];
        let cur = self.g.cur;
        let table = &mut self.table[..];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = le64(src, s);
        loop {
            let mut next_s = s;
            let mut candidate;
            loop {
                let mut next_hash = hash_len(cv, TB, HB) as usize;
                s = next_s;
                next_s = s + 2 + ((s - next_emit) >> 5);
                if next_s > s_limit {
                    return next_emit;
                }
                candidate = table[next_hash];
                let mut now = le64(src, next_s);
                table[next_hash] = s + cur;
                next_hash = hash_len(now, TB, HB) as usize;
                let offset = s - (candidate - cur);
                if offset < MAX_MATCH_OFFSET && cv as u32 == le32(src, candidate - cur) {
                    table[next_hash] = next_s + cur;
                    break;
                }
                cv = now;
                s = next_s;
                next_s += 1;
                candidate = table[next_hash];
                now >>= 8;
                table[next_hash] = s + cur;
                let offset = s - (candidate - cur);
                if offset < MAX_MATCH_OFFSET && cv as u32 == le32(src, candidate - cur) {
                    break;
                }
                cv = now;
            }
            loop {
                let mut t = candidate - cur;
                let mut l = match_len_long(s + 4, t + 4, src) + 4;
                while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                    s -= 1;
                    t -= 1;
                    l += 1;
                }
                if next_emit < s {
                    dst.emit_literals(&src[next_emit as usize..s as usize]);
                }
                dst.add_match_long(l, (s - t - BASE_MATCH_OFFSET) as u32);
                s += l;
                next_emit = s;
                if next_s >= s {
                    s = next_s + 1;
                }
                if s >= s_limit {
                    if ((s + l + 8) as usize) < src.len() {
                        let cv = le64(src, s);
                        table[hash_len(cv, TB, HB) as usize] = s + cur;
                    }
                    return next_emit;
                }
                let mut i = s - l + 2;
                while i < s - 5 {
                    let mut x = le64(src, i);
                    table[hash_len(x, TB, HB) as usize] = cur + i;
                    x >>= 16;
                    table[hash_len(x, TB, HB) as usize] = cur + i + 2;
                    x >>= 16;
                    table[hash_len(x, TB, HB) as usize] = cur + i + 4;
                    i += 7;
                }
                let x = le64(src, s - 2);
                let o = cur + s - 2;
                let prev_hash = hash_len(x, TB, HB) as usize;
                let prev_hash2 = hash_len(x >> 8, TB, HB) as usize;
                table[prev_hash] = o;
                table[prev_hash2] = o + 1;
                let curr_hash = hash_len(x >> 16, TB, HB) as usize;
                candidate = table[curr_hash];
                table[curr_hash] = o + 2;
                let offset = s - (candidate - cur);
                if offset > MAX_MATCH_OFFSET || (x >> 16) as u32 != le32(src, candidate - cur) {
                    cv = x >> 24;
                    s += 1;
                    break;
                }
            }
        }
    }

    /// Level 3: one table of (current, previous) entries, both tried.
    fn l3(&mut self, dst: &mut Tokens, mut s: i32) -> i32 {
        const HB: u8 = 5;
        const TB: u8 = 16;
        let src = &self.g.hist[..];
        let cur = self.g.cur;
        let table = &mut self.prev_table[..];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = le64(src, s);
        loop {
            let mut next_s = s;
            let mut candidate;
            loop {
                let next_hash = hash_len(cv, TB, HB) as usize;
                s = next_s;
                next_s = s + 1 + ((s - next_emit) >> 7);
                if next_s > s_limit {
                    return next_emit;
                }
                let candidates = table[next_hash];
                let now = le64(src, next_s);
                let min_offset = cur + s - (MAX_MATCH_OFFSET - 4);
                table[next_hash] = Prev {
                    prev: candidates.cur,
                    cur: s + cur,
                };
                candidate = candidates.cur;
                if candidate < min_offset {
                    cv = now;
                    continue;
                }
                if cv as u32 == le32(src, candidate - cur) {
                    if candidates.prev < min_offset || cv as u32 != le32(src, candidates.prev - cur)
                    {
                        break;
                    }
                    let offset = s - (candidate - cur);
                    let o2 = s - (candidates.prev - cur);
                    let l1 = match_len_long(s + 4, s - offset + 4, src);
                    let l2 = match_len_long(s + 4, s - o2 + 4, src);
                    if l2 > l1 {
                        candidate = candidates.prev;
                    }
                    break;
                } else {
                    candidate = candidates.prev;
                    if candidate > min_offset && cv as u32 == le32(src, candidate - cur) {
                        break;
                    }
                }
                cv = now;
            }
            loop {
                let mut t = candidate - cur;
                let mut l = match_len_long(s + 4, t + 4, src) + 4;
                while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                    s -= 1;
                    t -= 1;
                    l += 1;
                }
                if next_emit < s {
                    dst.emit_literals(&src[next_emit as usize..s as usize]);
                }
                dst.add_match_long(l, (s - t - BASE_MATCH_OFFSET) as u32);
                s += l;
                next_emit = s;
                if next_s >= s {
                    s = next_s + 1;
                }
                if s >= s_limit {
                    t += l;
                    if ((t + 8) as usize) < src.len() && t > 0 {
                        cv = le64(src, t);
                        let h = hash_len(cv, TB, HB) as usize;
                        table[h] = Prev {
                            prev: table[h].cur,
                            cur: cur + t,
                        };
                    }
                    return next_emit;
                }
                let mut i = s - l + 2;
                while i < s - 5 {
                    let h = hash_len(le64(src, i), TB, HB) as usize;
                    table[h] = Prev {
                        prev: table[h].cur,
                        cur: cur + i,
                    };
                    i += 6;
                }
                let mut x = le64(src, s - 2);
                let h = hash_len(x, TB, HB) as usize;
                table[h] = Prev {
                    prev: table[h].cur,
                    cur: cur + s - 2,
                };
                x >>= 8;
                let h = hash_len(x, TB, HB) as usize;
                table[h] = Prev {
                    prev: table[h].cur,
                    cur: cur + s - 1,
                };
                x >>= 8;
                let curr_hash = hash_len(x, TB, HB) as usize;
                let candidates = table[curr_hash];
                cv = x;
                table[curr_hash] = Prev {
                    prev: candidates.cur,
                    cur: s + cur,
                };
                candidate = candidates.cur;
                let min_offset = cur + s - (MAX_MATCH_OFFSET - 4);
                if candidate > min_offset {
                    if cv as u32 == le32(src, candidate - cur) {
                        continue;
                    }
                    candidate = candidates.prev;
                    if candidate > min_offset && cv as u32 == le32(src, candidate - cur) {
                        continue;
                    }
                }
                cv = x >> 8;
                s += 1;
                break;
            }
        }
    }

    /// Level 4: a 4-byte and a 7-byte table.
    fn l4(&mut self, dst: &mut Tokens, mut s: i32) -> i32 {
        const HS: u8 = 4;
        let src = &self.g.hist[..];
        let cur = self.g.cur;
        let (table, b_table) = self.table.split_at_mut(TABLE_SIZE);
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = le64(src, s);
        loop {
            let mut next_s = s;
            let mut t;
            loop {
                let next_hash_s = hash_len(cv, TABLE_BITS, HS) as usize;
                let next_hash_l = hash_len(cv, TABLE_BITS, HASH_LONG_BYTES) as usize;
                s = next_s;
                next_s = s + 1 + ((s - next_emit) >> 6);
                if next_s > s_limit {
                    return next_emit;
                }
                let s_candidate = table[next_hash_s];
                let l_candidate = b_table[next_hash_l];
                let next = le64(src, next_s);
                table[next_hash_s] = s + cur;
                b_table[next_hash_l] = s + cur;
                t = l_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == le32(src, t) {
                    break;
                }
                t = s_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == le32(src, t) {
                    let l_candidate = b_table[hash_len(next, TABLE_BITS, HASH_LONG_BYTES) as usize];
                    let l_off = l_candidate - cur;
                    if next_s - l_off < MAX_MATCH_OFFSET && le32(src, l_off) == next as u32 {
                        let l1 = match_len_long(s + 4, t + 4, src);
                        let l2 = match_len_long(next_s + 4, next_s - l_off + 4, src);
                        if l2 > l1 {
                            s = next_s;
                            t = l_candidate - cur;
                        }
                    }
                    break;
                }
                cv = next;
            }
            let mut l = match_len_long(s + 4, t + 4, src) + 4;
            while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                s -= 1;
                t -= 1;
                l += 1;
            }
            if next_emit < s {
                dst.emit_literals(&src[next_emit as usize..s as usize]);
            }
            dst.add_match_long(l, (s - t - BASE_MATCH_OFFSET) as u32);
            s += l;
            next_emit = s;
            if next_s >= s {
                s = next_s + 1;
            }
            if s >= s_limit {
                if ((s + 8) as usize) < src.len() {
                    let cv = le64(src, s);
                    table[hash_len(cv, TABLE_BITS, HS) as usize] = s + cur;
                    b_table[hash_len(cv, TABLE_BITS, HASH_LONG_BYTES) as usize] = s + cur;
                }
                return next_emit;
            }
            let mut i = next_s;
            if i < s - 1 {
                loop {
                    let cv = le64(src, i);
                    let t = i + cur;
                    let t2 = t + 1;
                    b_table[hash_len(cv, TABLE_BITS, HASH_LONG_BYTES) as usize] = t;
                    b_table[hash_len(cv >> 8, TABLE_BITS, HASH_LONG_BYTES) as usize] = t2;
                    table[hash_len(cv >> 8, TABLE_BITS, HS) as usize] = t2;
                    i += 3;
                    if i >= s - 1 {
                        break;
                    }
                }
            }
            let x = le64(src, s - 1);
            let o = cur + s - 1;
            table[hash_len(x, TABLE_BITS, HS) as usize] = o;
            b_table[hash_len(x, TABLE_BITS, HASH_LONG_BYTES) as usize] = o;
            cv = x >> 8;
        }
    }

    /// Levels 5 and 6: a 4-byte table and a 7-byte table of (current, previous) entries, a
    /// second look at the end of each match; level 6 also tries the last offset again.
    fn l5(&mut self, dst: &mut Tokens, s: i32) -> i32 {
        self.l56(dst, s, false)
    }

    fn l6(&mut self, dst: &mut Tokens, s: i32) -> i32 {
        self.l56(dst, s, true)
    }

    fn l56(&mut self, dst: &mut Tokens, mut s: i32, six: bool) -> i32 {
        const HS: u8 = 4;
        let src = &self.g.hist[..];
        let cur = self.g.cur;
        let table = &mut self.table[..];
        let b_table = &mut self.prev_table[..];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = le64(src, s);
        let skip_log = if six { 7 } else { 6 };
        let mut repeat: i32 = 1;
        #[inline(always)]
        fn push(e: &mut Prev, v: i32) {
            e.prev = e.cur;
            e.cur = v;
        }
        let hl = |v: u64| hash_len(v, TABLE_BITS, HASH_LONG_BYTES) as usize;
        let hs = |v: u64| hash_len(v, TABLE_BITS, HS) as usize;
        loop {
            let mut next_s = s;
            let mut l: i32 = 0;
            let mut t: i32;
            loop {
                let mut next_hash_s = hs(cv);
                let mut next_hash_l = hl(cv);
                s = next_s;
                next_s = s + 1 + ((s - next_emit) >> skip_log);
                if next_s > s_limit {
                    return next_emit;
                }
                let s_candidate = table[next_hash_s];
                let mut l_candidate = b_table[next_hash_l];
                let next = le64(src, next_s);
                table[next_hash_s] = s + cur;
                push(&mut b_table[next_hash_l], s + cur);
                next_hash_s = hs(next);
                next_hash_l = hl(next);
                t = l_candidate.cur - cur;
                if s - t < MAX_MATCH_OFFSET {
                    if cv as u32 == le32(src, t) {
                        table[next_hash_s] = next_s + cur;
                        push(&mut b_table[next_hash_l], next_s + cur);
                        let t2 = l_candidate.prev - cur;
                        if s - t2 < MAX_MATCH_OFFSET && cv as u32 == le32(src, t2) {
                            l = match_len_limited(s + 4, t + 4, src) + 4;
                            let ml1 = match_len_limited(s + 4, t2 + 4, src) + 4;
                            if ml1 > l {
                                t = t2;
                                l = ml1;
                                break;
                            }
                        }
                        break;
                    }
                    t = l_candidate.prev - cur;
                    if s - t < MAX_MATCH_OFFSET && cv as u32 == le32(src, t) {
                        table[next_hash_s] = next_s + cur;
                        push(&mut b_table[next_hash_l], next_s + cur);
                        break;
                    }
                }
                t = s_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == le32(src, t) {
                    l = match_len_limited(s + 4, t + 4, src) + 4;
                    l_candidate = b_table[next_hash_l];
                    table[next_hash_s] = next_s + cur;
                    push(&mut b_table[next_hash_l], next_s + cur);
                    if six {
                        // Check repeat at s + 1.
                        let t2 = s - repeat + 1;
                        if le32(src, t2) == (cv >> 8) as u32 {
                            let ml = match_len_limited(s + 4 + 1, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                l = ml;
                                s += 1;
                                break;
                            }
                        }
                    }
                    let mut t2 = l_candidate.cur - cur;
                    if next_s - t2 < MAX_MATCH_OFFSET {
                        if le32(src, t2) == next as u32 {
                            let ml = match_len_limited(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                                if !six {
                                    break;
                                }
                            }
                        }
                        t2 = l_candidate.prev - cur;
                        if next_s - t2 < MAX_MATCH_OFFSET && le32(src, t2) == next as u32 {
                            let ml = match_len_limited(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                                break;
                            }
                        }
                    }
                    break;
                }
                cv = next;
            }
            if l == 0 {
                l = match_len_long(s + 4, t + 4, src) + 4;
            } else if l == MAX_MATCH_LENGTH {
                l += match_len_long(s + l, t + l, src);
            }
            let s_at = s + l;
            if six {
                if s_at < s_limit {
                    const SKIP_BEGINNING: i32 = 2;
                    let e_long = b_table[hl(le64(src, s_at))];
                    let mut t2 = e_long.cur - cur - l + SKIP_BEGINNING;
                    let s2 = s + SKIP_BEGINNING;
                    let off = s2 - t2;
                    if off < MAX_MATCH_OFFSET {
                        if off > 0 && t2 >= 0 {
                            let l2 = match_len_long(s2, t2, src);
                            if l2 > l {
                                t = t2;
                                l = l2;
                                s = s2;
                            }
                        }
                        t2 = e_long.prev - cur - l + SKIP_BEGINNING;
                        let off = s2 - t2;
                        if off > 0 && off < MAX_MATCH_OFFSET && t2 >= 0 {
                            let l2 = match_len_long(s2, t2, src);
                            if l2 > l {
                                t = t2;
                                l = l2;
                                s = s2;
                            }
                        }
                    }
                }
            } else if l < 30 && s_at < s_limit {
                const SKIP_BEGINNING: i32 = 2;
                let e_long = b_table[hl(le64(src, s_at))].cur;
                let t2 = e_long - cur - l + SKIP_BEGINNING;
                let s2 = s + SKIP_BEGINNING;
                let off = s2 - t2;
                if t2 >= 0 && off < MAX_MATCH_OFFSET && off > 0 {
                    let l2 = match_len_long(s2, t2, src);
                    if l2 > l {
                        t = t2;
                        l = l2;
                        s = s2;
                    }
                }
            }
            while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                s -= 1;
                t -= 1;
                l += 1;
            }
            if next_emit < s {
                dst.emit_literals(&src[next_emit as usize..s as usize]);
            }
            dst.add_match_long(l, (s - t - BASE_MATCH_OFFSET) as u32);
            if six {
                repeat = s - t;
            }
            s += l;
            next_emit = s;
            if next_s >= s {
                s = next_s + 1;
            }
            if s >= s_limit {
                if six {
                    let mut i = next_s + 1;
                    while i < src.len() as i32 - 8 {
                        let cv = le64(src, i);
                        table[hs(cv)] = i + cur;
                        push(&mut b_table[hl(cv)], i + cur);
                        i += 2;
                    }
                }
                return next_emit;
            }
            if six {
                let mut i = next_s + 1;
                while i < s - 1 {
                    let cv = le64(src, i);
                    let t = i + cur;
                    let t2 = t + 1;
                    let h_long = hl(cv);
                    let h_long2 = hl(cv >> 8);
                    table[hs(cv)] = t;
                    push(&mut b_table[h_long], t);
                    push(&mut b_table[h_long2], t2);
                    i += 2;
                }
                cv = le64(src, s);
            } else {
                let mut i = s - l + 1;
                if i < s - 1 {
                    let mut cv = le64(src, i);
                    let mut t = i + cur;
                    table[hs(cv)] = t;
                    push(&mut b_table[hl(cv)], t);
                    cv >>= 8;
                    t += 1;
                    push(&mut b_table[hl(cv)], t);
                    cv >>= 8;
                    t += 1;
                    table[hs(cv)] = t;
                    i += 4;
                    while i < s - 1 {
                        let cv = le64(src, i);
                        let t = i + cur;
                        push(&mut b_table[hl(cv)], t);
                        table[hs(cv >> 8)] = t + 1;
                        i += 3;
                    }
                }
                let x = le64(src, s - 1);
                let o = cur + s - 1;
                table[hs(x)] = o;
                push(&mut b_table[hl(x)], o);
                cv = x >> 8;
            }
        }
    }
}
