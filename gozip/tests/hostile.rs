//! Recognition reads blobs from outside: whatever the bytes, it answers (`not-go` with a
//! reason, or a Go writer that rebuilds them exactly) and never panics or hangs.

use ferry_gozip::{encode, recognise, Generation, Recognition};
use proptest::prelude::*;

fn go_stream(generation: Generation, level: i32) -> Vec<u8> {
    let text: Vec<u8> = (0..200_000u32)
        .map(|i| {
            b"layer tar bytes, some repeated, some not "[(i % 41) as usize] ^ ((i / 977) as u8 & 3)
        })
        .collect();
    let mut out = Vec::new();
    encode(&text[..], &mut out, generation, level).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Go streams with bytes changed, cut or extended: a damaged stream is never taken for Go's,
    /// unless the change happens to leave bytes some Go writer makes (then it must rebuild them).
    #[test]
    fn damaged_go_streams(
        classic in any::<bool>(),
        level in prop::sample::select(vec![-2, 0, 1, 6, 9]),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let generation = if classic { Generation::Classic } else { Generation::Go127 };
        let mut blob = go_stream(generation, level);
        for (at, b) in &edits {
            let i = at.index(blob.len());
            blob[i] = *b;
        }
        if let Some(c) = cut {
            blob.truncate(c.index(blob.len() + 1));
        }
        blob.extend_from_slice(&extra);
        match recognise(&blob[..]).unwrap() {
            Recognition::NotGo(why) => prop_assert!(!why.is_empty()),
            Recognition::Go { generation, level, mtime } => {
                // Only possible when the edits left Go's own bytes: rebuilding must give them.
                let mut plain = Vec::new();
                let mut d = flate2::read::GzDecoder::new(&blob[..]);
                std::io::Read::read_to_end(&mut d, &mut plain).unwrap();
                let mut again = Vec::new();
                let mut enc = ferry_gozip::GzipEncoder::with_mtime(&mut again, generation, level, mtime).unwrap();
                // In io.Copy's writes, as recognition feeds them.
                for chunk in plain.chunks(ferry_gozip::COPY_CHUNK) {
                    std::io::Write::write_all(&mut enc, chunk).unwrap();
                }
                enc.finish().unwrap();
                prop_assert_eq!(again, blob);
            }
        }
    }

    /// Arbitrary bytes behind Go's header.
    #[test]
    fn arbitrary_bytes_behind_gos_header(body in proptest::collection::vec(any::<u8>(), 0..4096), xfl in prop::sample::select(vec![0u8, 2, 4])) {
        let mut blob = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255];
        blob.extend_from_slice(&body);
        let _ = recognise(&blob[..]).unwrap();
    }
}
