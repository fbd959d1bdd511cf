//! Memory is bounded by the window, whatever the input: the peak of live heap bytes while
//! 64 MiB go through each encoder (every generation and level) stays under 8 MiB. Measured with
//! a counting allocator, so the figure is the encoder's own, not the process's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_gozip::{Generation, GzipEncoder};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// A sink that keeps nothing.
struct Null;
impl Write for Null {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn peak_heap_per_encoder_is_under_8_mib() {
    // Half text-like, half random, in 1 MiB writes (a write is taken whole, as Go takes it).
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x2545f4914f6cdd1du64;
    for (i, b) in chunk.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = if i % 2048 < 1024 {
            b"the quick brown fox "[i % 20]
        } else {
            x as u8
        };
    }
    let mut worst = (0, Generation::Classic, 0);
    for generation in Generation::ALL {
        for level in [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
            let before = LIVE.load(Ordering::SeqCst);
            PEAK.store(before, Ordering::SeqCst);
            let mut enc = GzipEncoder::new(Null, generation, level).unwrap();
            for _ in 0..64 {
                enc.write_all(&chunk).unwrap();
            }
            enc.finish().unwrap();
            let peak = PEAK.load(Ordering::SeqCst) - before;
            eprintln!("{generation} level {level}: peak {} KiB", peak >> 10);
            if peak > worst.0 {
                worst = (peak, generation, level);
            }
        }
    }
    assert!(
        worst.0 < 8 << 20,
        "{} level {}: peak {} bytes",
        worst.1,
        worst.2,
        worst.0
    );
}
