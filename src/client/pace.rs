//! `--limit-rate`: the client's own pacing of the bytes it sends or receives, as curl and
//! rsync do it. The protocol has no part in it; the server sees a slower peer.
//!
//! A token bucket: bytes may go as fast as the link allows until they are ahead of the
//! rate, then each piece waits for its time. The bucket holds at most [`BURST`] worth of
//! time, so a pause (the server thinking, a slow disk) lets through a short burst and not
//! a catch-up of everything missed, and a rate holds over any stretch longer than that.

use std::time::{Duration, Instant};

/// How far behind its schedule a transfer may fall and still catch up at full speed.
pub const BURST: Duration = Duration::from_millis(250);

/// The largest piece that goes out between two checks of the pace: a tenth of a second
/// of the rate (at least 4 KiB), so the rate holds within a second even for slow limits,
/// and at most `most` (the chunk the caller reads anyway).
pub fn piece(rate: u64, most: usize) -> usize {
    usize::try_from(rate / 10).unwrap_or(usize::MAX).clamp(4096, most.max(4096)).min(most)
}

/// Bytes per second, and when the next byte is due.
#[derive(Debug, Clone)]
pub struct Pace {
    rate: u64,
    /// When the bytes accounted so far would have gone at exactly the rate.
    due: Instant,
}

impl Pace {
    /// A pace of `rate` bytes per second (at least 1), starting at `now`.
    pub fn new(rate: u64, now: Instant) -> Self {
        Pace { rate: rate.max(1), due: now }
    }

    /// The rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Accounts for `n` bytes about to go at `now`; returns how long to wait first.
    pub fn delay(&mut self, n: usize, now: Instant) -> Duration {
        // A transfer far behind (paused) restarts its schedule BURST ago, not earlier.
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        if self.due < earliest {
            self.due = earliest;
        }
        let wait = self.due.saturating_duration_since(now);
        self.due += Duration::from_secs_f64(n as f64 / self.rate as f64);
        wait
    }

    /// Accounts for `n` bytes that already came at `now` (a download takes whole frames,
    /// up to 1 MiB, as the server sends them); returns how long to wait before taking
    /// more: until they are no more than [`BURST`] ahead of the rate.
    pub fn hold(&mut self, n: usize, now: Instant) -> Duration {
        let _ = self.delay(n, now);
        self.due.saturating_duration_since(now + BURST)
    }
}

/// A writer that paces what goes through it (protocol 3's content is one long write).
pub struct PacedWrite<'a, W: ?Sized> {
    inner: &'a mut W,
    pace: Pace,
}

impl<'a, W: std::io::Write + ?Sized> PacedWrite<'a, W> {
    pub fn new(inner: &'a mut W, rate: u64) -> Self {
        PacedWrite { inner, pace: Pace::new(rate, Instant::now()) }
    }
}

impl<W: std::io::Write + ?Sized> std::io::Write for PacedWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(piece(self.pace.rate(), 1 << 20));
        std::thread::sleep(self.pace.delay(n, Instant::now()));
        self.inner.write(&buf[..n])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bytes_ahead_of_the_rate_wait_for_their_time() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1000, t0);
        assert_eq!(pace.delay(500, t0), Duration::ZERO, "the first piece goes at once");
        assert_eq!(pace.delay(500, t0), 500 * MS, "the second is due after half a second");
        assert_eq!(pace.delay(100, t0 + 400 * MS), 600 * MS);
    }

    #[test]
    fn bytes_that_came_hold_the_next_until_they_are_within_the_burst() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1000, t0);
        assert_eq!(pace.hold(200, t0), Duration::ZERO, "within the burst");
        assert_eq!(pace.hold(800, t0), 750 * MS, "a second's worth, less the burst");
        assert_eq!(pace.hold(0, t0 + 750 * MS), Duration::ZERO);
    }

    #[test]
    fn a_pause_lets_through_one_burst_and_no_catch_up() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1000, t0);
        pace.delay(1000, t0);
        // Ten seconds idle: only BURST worth (250 bytes) goes without waiting.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(pace.delay(250, later), Duration::ZERO);
        assert_eq!(pace.delay(250, later), Duration::ZERO);
        assert_eq!(pace.delay(250, later), 250 * MS);
    }

    #[test]
    fn over_any_long_stretch_the_rate_holds() {
        let t0 = Instant::now();
        let mut pace = Pace::new(64 * 1024, t0);
        let mut now = t0;
        let mut sent = 0u64;
        while sent < 10 * 64 * 1024 {
            let n = piece(pace.rate(), 1 << 20);
            now += pace.delay(n, now);
            sent += n as u64;
        }
        let took = now - t0;
        assert!(
            took >= Duration::from_millis(9_800) && took <= Duration::from_millis(10_000),
            "{took:?}"
        );
    }

    #[test]
    fn pieces_are_a_tenth_of_a_second_within_4_kib_and_the_callers_chunk() {
        assert_eq!(piece(100, 1 << 20), 4096);
        assert_eq!(piece(1_000_000, 1 << 20), 100_000);
        assert_eq!(piece(1 << 40, 1 << 20), 1 << 20);
        assert_eq!(piece(1 << 40, 1000), 1000);
    }

    #[test]
    fn a_paced_writer_passes_every_byte_in_order_at_the_rate() {
        let mut out = Vec::new();
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let started = Instant::now();
        {
            let mut paced = PacedWrite::new(&mut out, 100_000);
            std::io::Write::write_all(&mut paced, &data).unwrap();
        }
        let took = started.elapsed();
        assert_eq!(out, data);
        // 40 kB at 100 kB/s: 0.4 s less the first piece, which goes at once.
        assert!(took >= Duration::from_millis(290), "{took:?}");
    }
}
