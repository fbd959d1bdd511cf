//! Progress for people. `sync`: bars on a terminal (overall bytes plus one bar per large blob),
//! one plain line per blob otherwise. `verify` and `gc`: one bar with blobs (and bytes) done and
//! an ETA on a terminal, a plain line every [`PLAIN_EVERY`] otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::digest::Digest;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Bars {
    tty: bool,
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, BlobBar>>,
}

/// A blob's bar and the task that moves it from the byte counter.
struct BlobBar {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            tty: std::io::stderr().is_terminal(),
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl ferry::sync::Progress for Bars {
    fn start_blob(&self, digest: &Digest, size: u64) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        if self.tty {
            let bar = self.multi.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(digest.hex()[..12].to_owned());
            let (b, c) = (bar.clone(), counter.clone());
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_position(c.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            if let Ok(mut m) = self.bars.lock() {
                m.insert(digest.clone(), BlobBar { bar, ticker });
            }
        }
        counter
    }

    fn finish_blob(&self, digest: &Digest, size: u64, outcome: &str) {
        if let Some(b) = self.bars.lock().ok().and_then(|mut m| m.remove(digest)) {
            b.ticker.abort();
            b.bar.finish_and_clear();
        }
        let line = format!("{outcome} {digest} ({size} bytes)");
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    fn message(&self, msg: &str) {
        if self.tty {
            let _ = self.multi.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }
}

/// How often a [`Meter`] prints a plain line when standard error is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Shows a [`ferry::progress::Tally`] while a long job runs; stops when dropped.
pub struct Meter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meter {
    /// `bytes`: the job counts bytes (verify re-hashes them), so show and time by bytes.
    pub fn start(job: &'static str, tally: Arc<ferry::progress::Tally>, bytes: bool) -> Meter {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let tty = std::io::stderr().is_terminal();
        let thread = std::thread::spawn(move || {
            if tty {
                draw_bar(job, &tally, bytes, &stopped)
            } else {
                print_lines(job, &tally, bytes, &stopped)
            }
        });
        Meter {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn draw_bar(
    job: &str,
    tally: &ferry::progress::Tally,
    bytes: bool,
    stopped: &std::sync::mpsc::Receiver<()>,
) {
    // One short line (it must fit an 80-column terminal, or it wraps on every redraw).
    let template = if bytes {
        "{msg} [{bar:20}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg} [{bar:20}] ETA {eta}"
    };
    // Nothing to show until the job has started a phase (and knows its totals).
    while tally.read().phase.is_empty() {
        match stopped.recv_timeout(Duration::from_millis(50)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
    // Built hidden, shown once it has its first figures (else its first frame reads 0/0).
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut phase = "";
    loop {
        let r = tally.read();
        if r.phase != phase {
            // A new phase starts from zero: a fresh rate and ETA.
            phase = r.phase;
            bar.reset();
        }
        let (pos, len) = if bytes && r.bytes_total > 0 {
            (r.bytes_done, r.bytes_total)
        } else {
            (r.items_done, r.items_total)
        };
        bar.set_message(format!(
            "{job}: {} {}/{}",
            r.phase, r.items_done, r.items_total
        ));
        bar.set_length(len);
        bar.set_position(pos);
        if bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        match stopped.recv_timeout(Duration::from_millis(200)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    bar.finish_and_clear();
}

fn print_lines(
    job: &str,
    tally: &ferry::progress::Tally,
    bytes: bool,
    stopped: &std::sync::mpsc::Receiver<()>,
) {
    let start = std::time::Instant::now();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PLAIN_EVERY) {
        eprintln!("{}", plain_line(job, &tally.read(), bytes, start.elapsed()));
    }
}

/// One plain progress line: `verify: re-hashing 120/400 blobs, 1000/4000 bytes, about 30 s left`.
fn plain_line(job: &str, r: &ferry::progress::Reading, bytes: bool, elapsed: Duration) -> String {
    let mut line = format!(
        "{job}: {} {}/{} blobs",
        r.phase, r.items_done, r.items_total
    );
    let by_bytes = bytes && r.bytes_total > 0;
    if by_bytes {
        line.push_str(&format!(", {}/{} bytes", r.bytes_done, r.bytes_total));
    }
    let (done, total) = if by_bytes {
        (r.bytes_done, r.bytes_total)
    } else {
        (r.items_done, r.items_total)
    };
    if done > 0 && total >= done {
        let left = elapsed.as_secs_f64() / done as f64 * (total - done) as f64;
        line.push_str(&format!(", about {left:.0} s left"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_what_is_done_and_what_is_left() {
        let t = ferry::progress::Tally::default();
        t.phase("re-hashing", 400, 4000);
        t.done(100, 1000);
        let r = t.read();
        assert_eq!(
            plain_line("verify", &r, true, Duration::from_secs(10)),
            "verify: re-hashing 100/400 blobs, 1000/4000 bytes, about 30 s left"
        );
        // GC counts blobs only; before anything is done there is no estimate.
        t.phase("sweeping", 50, 0);
        assert_eq!(
            plain_line("gc", &t.read(), false, Duration::from_secs(1)),
            "gc: sweeping 0/50 blobs"
        );
        t.done(25, 0);
        assert_eq!(
            plain_line("gc", &t.read(), false, Duration::from_secs(2)),
            "gc: sweeping 25/50 blobs, about 2 s left"
        );
    }
}
