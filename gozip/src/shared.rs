//! What both generations of Go's `compress/flate` share unchanged (ported from Go's source,
//! BSD-3, The Go Authors): the length and offset code tables, and the run-length coding of a
//! block's code lengths (RFC 1951 3.2.7) exactly as Go writes it.

/// The length code of `length − 3`.
pub const LENGTH_CODES: [u8; 256] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14,
    14, 15, 15, 15, 15, 16, 16, 16, 16, 16, 16, 16, 16, 17, 17, 17, 17, 17, 17, 17, 17, 18, 18, 18,
    18, 18, 18, 18, 18, 19, 19, 19, 19, 19, 19, 19, 19, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20,
    20, 20, 20, 20, 20, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 22, 22, 22,
    22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23,
    23, 23, 23, 23, 23, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
    24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25,
    25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 26, 26, 26,
    26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26,
    26, 26, 26, 26, 26, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27,
    27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 28,
];

/// The offset code of `offset − 1`, for offsets below 256 (larger ones: `[off >> 7] + 14`).
pub const OFFSET_CODES: [u8; 256] = [
    0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9,
    10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11,
    11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13,
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15,
];

/// The order in which the code-length code's lengths are written.
pub const CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Marks the end of a codegen list.
pub const BAD_CODE: u8 = 255;

/// Go's `generateCodegen` over `codegen`, which holds the literal and offset code lengths and
/// then [`BAD_CODE`]: rewrites it in place as the code-length symbols (16, 17 and 18 followed by
/// their repeat counts) ending with [`BAD_CODE`], calling `count` once per symbol emitted.
pub fn run_length_codegen(codegen: &mut [u8], count: &mut dyn FnMut(u8)) {
    let mut size = codegen[0];
    let mut n: i32 = 1;
    let mut out = 0usize;
    let mut at = 1usize;
    while size != BAD_CODE {
        let next = codegen[at];
        at += 1;
        if next == size {
            n += 1;
            continue;
        }
        if size != 0 {
            codegen[out] = size;
            out += 1;
            count(size);
            n -= 1;
            while n >= 3 {
                let k = n.min(6);
                codegen[out] = 16;
                codegen[out + 1] = (k - 3) as u8;
                out += 2;
                count(16);
                n -= k;
            }
        } else {
            while n >= 11 {
                let k = n.min(138);
                codegen[out] = 18;
                codegen[out + 1] = (k - 11) as u8;
                out += 2;
                count(18);
                n -= k;
            }
            if n >= 3 {
                codegen[out] = 17;
                codegen[out + 1] = (n - 3) as u8;
                out += 2;
                count(17);
                n = 0;
            }
        }
        n -= 1;
        while n >= 0 {
            codegen[out] = size;
            out += 1;
            count(size);
            n -= 1;
        }
        size = next;
        n = 1;
    }
    codegen[out] = BAD_CODE;
}

/// The symbols of a codegen list as the header writes them: each symbol, and the value and bit
/// count of its repeat field (0 bits for 0–15).
pub fn codegen_symbols(codegen: &[u8]) -> impl Iterator<Item = (u8, u32, u32)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let word = codegen[i];
        i += 1;
        if word == BAD_CODE {
            return None;
        }
        let bits = match word {
            16 => 2,
            17 => 3,
            18 => 7,
            _ => 0,
        };
        let value = if bits > 0 {
            i += 1;
            codegen[i - 1] as u32
        } else {
            0
        };
        Some((word, value, bits))
    })
}
