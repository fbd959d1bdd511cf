//! `Range` (blob downloads) and `Content-Range` (chunked uploads) parsing.

/// How a `Range` header applies to a blob of a given length.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// Serve the whole blob (no usable single range: multi-range or foreign units are ignored,
    /// which RFC 9110 allows).
    Whole,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

pub fn parse_range(header: &str, len: u64) -> ByteRange {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        return match b.parse::<u64>() {
            Ok(0) | Err(_) => ByteRange::Unsatisfiable,
            Ok(_) if len == 0 => ByteRange::Unsatisfiable,
            Ok(n) => ByteRange::Part(len.saturating_sub(n), len - 1),
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return ByteRange::Unsatisfiable;
    };
    if start >= len {
        return ByteRange::Unsatisfiable;
    }
    let end = if b.is_empty() {
        len - 1
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len - 1),
            _ => return ByteRange::Unsatisfiable,
        }
    };
    ByteRange::Part(start, end)
}

/// `Content-Range` of a PATCH: `<start>-<end>` (OCI) or `bytes <start>-<end>[/<total>]`.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let s = header.trim();
    let s = s
        .strip_prefix("bytes ")
        .or_else(|| s.strip_prefix("bytes="))
        .unwrap_or(s);
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    (b >= a).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Part(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-3", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=x-3", 100), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=0-18446744073709551616", 100),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("5-4"), None);
        assert_eq!(parse_content_range("-4"), None);
    }

    proptest! {
        #[test]
        fn range_within_bounds(h in "bytes=[0-9]{0,21}-[0-9]{0,21}", len in 0u64..1_000_000) {
            if let ByteRange::Part(a, b) = parse_range(&h, len) {
                prop_assert!(a <= b && b < len);
            }
        }
    }
}
