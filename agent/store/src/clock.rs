//! The agent's clock: what every due time, retry and age is measured in.
//!
//! # Invariants
//! - While the process runs, [`now_ms`] never goes back and advances with
//!   the monotonic clock (CLOCK_MONOTONIC), whatever the wall clock does:
//!   a retry scheduled for "in 30 s" happens 30 s later even if the system
//!   clock is set back or forward by hours meanwhile (the queue's keys are
//!   times of this clock, `index::outbox`).
//! - It is anchored on the wall clock once: at the first reading, or by
//!   [`rebase`] at start-up, never before the latest time the index
//!   recorded ([`crate::index::Index::clock_high_water`], written every few
//!   seconds by the running agent). So a wall clock set back while the
//!   agent was stopped does not postpone every retry by the jump either.
//! - [`drift_ms`] says how far the wall clock has moved from it since the
//!   anchor (a jump, or an NTP correction): the agent logs it; the times it
//!   shows stay in this clock until it restarts.
//!
//! # Crash behaviour
//! Nothing is kept but the high-water mark; after a crash the clock is
//! anchored at the later of the wall clock and that mark, which lags the
//! crash by at most the interval it is written at.

use std::sync::RwLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
struct Anchor {
    ms: u64,
    at: Instant,
}

/// A clock anchored once on a wall clock, then monotonic.
pub struct Clock {
    anchor: RwLock<Option<Anchor>>,
    wall: fn() -> u64,
}

static CLOCK: Clock = Clock::new(wall_ms);

/// The system's wall clock, in Unix milliseconds (0 before the epoch).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The agent's time, in Unix milliseconds: monotonic while it runs.
pub fn now_ms() -> u64 {
    CLOCK.now_ms()
}

/// Anchor the agent's clock again ([`Clock::rebase`]); start-up only.
pub fn rebase(not_before_ms: u64) -> u64 {
    CLOCK.rebase(not_before_ms)
}

/// How far the wall clock is from the agent's clock (positive: ahead).
pub fn drift_ms() -> i64 {
    CLOCK.drift_ms()
}

fn read(anchor: Anchor) -> u64 {
    anchor
        .ms
        .saturating_add(anchor.at.elapsed().as_millis() as u64)
}

impl Clock {
    /// A clock on `wall` (the system's, or a test's).
    pub const fn new(wall: fn() -> u64) -> Self {
        Clock {
            anchor: RwLock::new(None),
            wall,
        }
    }

    /// Its time: the anchor plus the monotonic time since.
    pub fn now_ms(&self) -> u64 {
        if let Some(a) = *self.anchor.read().unwrap_or_else(|p| p.into_inner()) {
            return read(a);
        }
        let mut w = self.anchor.write().unwrap_or_else(|p| p.into_inner());
        let a = *w.get_or_insert(Anchor {
            ms: (self.wall)(),
            at: Instant::now(),
        });
        read(a)
    }

    /// Anchor it again at the later of the wall clock and `not_before_ms`
    /// (never going back). Returns the new time.
    pub fn rebase(&self, not_before_ms: u64) -> u64 {
        let mut w = self.anchor.write().unwrap_or_else(|p| p.into_inner());
        let current = w.map(read).unwrap_or(0);
        let ms = (self.wall)().max(not_before_ms).max(current);
        *w = Some(Anchor {
            ms,
            at: Instant::now(),
        });
        ms
    }

    /// The wall clock less this clock.
    pub fn drift_ms(&self) -> i64 {
        (self.wall)() as i64 - self.now_ms() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    const HOUR: u64 = 3_600_000;
    static WALL: AtomicU64 = AtomicU64::new(1_800_000_000_000);

    fn fake_wall() -> u64 {
        WALL.load(Ordering::SeqCst)
    }

    #[test]
    fn wall_clock_jumps_move_nothing_and_a_restart_never_goes_back() {
        let clock = Clock::new(fake_wall);
        let t0 = clock.now_ms();
        assert_eq!(t0, 1_800_000_000_000);
        // a retry due in 50 ms
        let due = t0 + 50;
        // the wall clock is set back by 2 h: the retry is not 2 h late
        WALL.fetch_sub(2 * HOUR, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(60));
        let t1 = clock.now_ms();
        assert!(t1 >= due && t1 < due + 1000, "{t1} vs due {due}");
        assert!(clock.drift_ms() < -(2 * HOUR as i64) + 1000);
        // and forward by 4 h (2 h ahead of the start): nothing falls due at once
        WALL.fetch_add(4 * HOUR, Ordering::SeqCst);
        let t2 = clock.now_ms();
        assert!(t2 < t1 + 1000, "{t2} {t1}");
        assert!(
            t2 + 3 * 60 * 1000 < t0 + 2 * HOUR,
            "a 3-minute backoff is still ahead"
        );
        // a restart after the wall clock went back while stopped: anchored
        // on the index's high-water mark, not the earlier wall time
        WALL.fetch_sub(6 * HOUR, Ordering::SeqCst);
        let restarted = Clock::new(fake_wall);
        let t3 = restarted.rebase(t2);
        assert_eq!(t3, t2);
        // a mark older than the wall clock: the wall clock
        WALL.fetch_add(10 * HOUR, Ordering::SeqCst);
        let fresh = Clock::new(fake_wall);
        assert_eq!(fresh.rebase(t2), fake_wall());
        // never back within one process
        let before = fresh.now_ms();
        assert!(fresh.rebase(0) >= before);
    }
}
