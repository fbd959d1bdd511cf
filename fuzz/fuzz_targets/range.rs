//! `Range` and `Content-Range` headers. Properties: a satisfiable range lies inside the blob and is
//! not empty, and a Content-Range never yields end < start (the upload code subtracts them).
#![no_main]
use ferry::server::range::{parse_content_range, parse_range, ByteRange};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // The first eight bytes choose the blob length (small lengths matter most: 0, 1, …).
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&data[..8]);
    let raw = u64::from_le_bytes(len_bytes);
    let len = if raw & 1 == 0 {
        raw >> 1
    } else {
        (raw >> 1) % 1024
    };
    let Ok(header) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    match parse_range(header, len) {
        ByteRange::Part(start, end) => {
            assert!(start <= end, "{header:?} len {len}: {start}-{end}");
            assert!(end < len, "{header:?} len {len}: {start}-{end}");
        }
        ByteRange::Whole | ByteRange::Unsatisfiable => {}
    }
    if let Some((a, b)) = parse_content_range(header) {
        assert!(a <= b, "{header:?}: {a}-{b}");
    }
});
