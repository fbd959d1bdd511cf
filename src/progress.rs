//! Counters a long job (verify, gc) advances as it goes, for whoever wants to show progress.
//! The library only counts; the binary draws a bar on a terminal or prints plain lines.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Tally {
    phase: Mutex<&'static str>,
    pub items_total: AtomicU64,
    pub items_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// A snapshot of a [`Tally`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub phase: &'static str,
    pub items_total: u64,
    pub items_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

impl Tally {
    /// Start a phase with this many items and bytes to go (0 bytes: not counted in bytes).
    pub fn phase(&self, name: &'static str, items: u64, bytes: u64) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = name;
        self.items_total.store(items, Relaxed);
        self.bytes_total.store(bytes, Relaxed);
        self.items_done.store(0, Relaxed);
        self.bytes_done.store(0, Relaxed);
    }

    pub fn done(&self, items: u64, bytes: u64) {
        self.items_done.fetch_add(items, Relaxed);
        self.bytes_done.fetch_add(bytes, Relaxed);
    }

    pub fn read(&self) -> Reading {
        Reading {
            phase: *self.phase.lock().unwrap_or_else(|p| p.into_inner()),
            items_total: self.items_total.load(Relaxed),
            items_done: self.items_done.load(Relaxed),
            bytes_total: self.bytes_total.load(Relaxed),
            bytes_done: self.bytes_done.load(Relaxed),
        }
    }
}
