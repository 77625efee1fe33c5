//! How much a target sends at once: for a DICOM target the associations
//! open, for an object store the uploads in flight; adapted to what the
//! link and the target deliver, between 1 and the target's `concurrency`.
//!
//! A DICOM target's workers (as many as `concurrency`) each take a
//! [`Permit`] before they claim work; an object store's workers take one
//! per upload. The [`Limiter`] hands out as many as its current limit. It measures what the target's deliveries achieve per
//! window ([`WINDOW`]: objects and bytes, as work units of bytes plus a
//! per-object cost, so that small objects, bound by round trips, count) and:
//!
//! - **starts** at [`START`] associations or [`START_UPLOADS`] uploads (or
//!   the maximum if lower) and **doubles** the
//!   limit after each window in which work waited for a permit and the rate
//!   rose by at least [`GAIN`] over the window before (slow start);
//! - **holds** once a doubling no longer pays (going back to the last limit
//!   that did), and **probes** one more association every
//!   [`PROBE_EVERY`] windows while work waits, keeping it only if it pays;
//! - **halves** on trouble: a timeout, an abort, a rejected association, an
//!   A7xx out-of-resources answer ([`Limiter::trouble`]); a rejection because
//!   the mirror has too many associations also caps the limit at what was
//!   open then, for [`CAP_FOR`].
//!
//! In memory only: after a restart it starts again. The state is shown in
//! `status` (associations in use and the limit) through [`Limiter::snapshot`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The measuring window.
pub const WINDOW: Duration = Duration::from_millis(1000);
/// Associations to start with.
pub const START: usize = 4;
/// Uploads in flight to start with (an object store takes many at once;
/// each costs a request, not an association).
pub const START_UPLOADS: usize = 8;
/// The least rise of the rate that keeps a larger limit.
pub const GAIN: f64 = 1.10;
/// Windows between probes of one more association once steady.
pub const PROBE_EVERY: u32 = 3;
/// How long a "too many associations" cap holds.
pub const CAP_FOR: Duration = Duration::from_secs(300);
/// What one object costs beyond its bytes, in bytes of work (a round trip,
/// a command, a response).
pub const PER_OBJECT: u64 = 64 * 1024;

/// Why the limit was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Timeout, abort, refused connection, rejected association, A7xx.
    Overload,
    /// The mirror rejected the association: too many open (PS3.8 reason
    /// "local limit exceeded").
    TooManyAssociations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    SlowStart,
    Steady,
    /// One more association is being tried; the limit before it.
    Probing(usize),
}

#[derive(Debug, Clone)]
struct State {
    limit: usize,
    start: usize,
    max: usize,
    in_use: usize,
    phase: Phase,
    window_start: Instant,
    units: u64,
    waited: bool,
    /// The rate of the last completed window and the limit it ran at.
    last: Option<(f64, usize)>,
    steady_windows: u32,
    cap: Option<(usize, Instant)>,
}

/// What `status` shows of a target's associations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Associations open (permits held).
    pub in_use: usize,
    /// The current limit.
    pub limit: usize,
    /// The configured maximum.
    pub max: usize,
}

/// The permits of one target.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    freed: Notify,
}

/// One association's right to run; given back on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut s = self.limiter.lock();
            s.in_use = s.in_use.saturating_sub(1);
        }
        self.limiter.freed.notify_waiters();
    }
}

impl Permit {
    /// Whether this association should end after its current claim (the
    /// limit went down below what is open).
    pub fn over_limit(&self) -> bool {
        let s = self.limiter.lock();
        s.in_use > s.limit
    }
}

impl Limiter {
    /// A limiter between 1 and `max` associations, starting at [`START`].
    pub fn new(max: usize) -> Arc<Self> {
        Self::starting_at(START, max)
    }

    /// A limiter between 1 and `max`, starting at `start` (at most `max`).
    pub fn starting_at(start: usize, max: usize) -> Arc<Self> {
        let max = max.max(1);
        let start = start.clamp(1, max);
        Arc::new(Limiter {
            state: Mutex::new(State {
                limit: start,
                start,
                max,
                in_use: 0,
                phase: Phase::SlowStart,
                window_start: Instant::now(),
                units: 0,
                waited: false,
                last: None,
                steady_windows: 0,
                cap: None,
            }),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a permit. Call it only with work waiting: a wait counts as
    /// demand for more associations.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.lock();
                s.tick(Instant::now());
                if s.in_use < s.effective_limit(Instant::now()) {
                    s.in_use += 1;
                    return Permit {
                        limiter: self.clone(),
                    };
                }
                s.waited = true;
            }
            // Re-checked at least every window (the limit may grow).
            let _ = tokio::time::timeout(WINDOW, freed).await;
        }
    }

    /// An object was delivered (`bytes` on the wire).
    pub fn delivered(&self, bytes: u64) {
        let mut s = self.lock();
        s.units += bytes + PER_OBJECT;
        s.tick(Instant::now());
        drop(s);
        self.freed.notify_waiters();
    }

    /// The target had trouble: cut the limit.
    pub fn trouble(&self, kind: Trouble) {
        let mut s = self.lock();
        let now = Instant::now();
        if kind == Trouble::TooManyAssociations {
            let mut cap = s.in_use.saturating_sub(1).max(1);
            if let Some((c, until)) = s.cap
                && now < until
            {
                cap = cap.min(c);
            }
            s.cap = Some((cap, now + CAP_FOR));
        }
        let halved = (s.limit / 2).max(1);
        if halved < s.limit {
            tracing::debug!(from = s.limit, to = halved, ?kind, "fewer associations");
        }
        s.limit = halved;
        s.phase = Phase::Steady;
        s.steady_windows = 0;
        s.last = None;
        s.units = 0;
        s.waited = false;
        s.window_start = now;
    }

    /// Start again from the start value in slow start (the target answers
    /// again after an outage: what held before says little now). A cap from
    /// a busy rejection stays.
    pub fn restart(&self) {
        let mut s = self.lock();
        s.limit = s.start;
        s.phase = Phase::SlowStart;
        s.last = None;
        s.units = 0;
        s.waited = false;
        s.steady_windows = 0;
        s.window_start = Instant::now();
        drop(s);
        self.freed.notify_waiters();
    }

    /// What `status` shows.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            in_use: s.in_use,
            limit: s.effective_limit(Instant::now()),
            max: s.max,
        }
    }
}

impl State {
    fn effective_limit(&self, now: Instant) -> usize {
        match self.cap {
            Some((cap, until)) if now < until => self.limit.min(cap),
            _ => self.limit,
        }
    }

    /// Close the window if it is over, and adapt.
    fn tick(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let rate = self.units as f64 / elapsed.as_secs_f64();
        let waited = self.waited;
        let limit = self.limit;
        self.window_start = now;
        self.units = 0;
        self.waited = false;
        if rate == 0.0 {
            // Nothing delivered (idle, or every association still on its
            // first object): no evidence either way.
            return;
        }
        let paid = |before: Option<(f64, usize)>| before.is_none_or(|(r, _)| rate >= r * GAIN);
        match self.phase {
            Phase::SlowStart => {
                if paid(self.last) {
                    if waited && limit < self.max {
                        self.limit = (limit * 2).min(self.max);
                    }
                } else {
                    // The last doubling did not pay: back to the limit that
                    // did (more associations for nothing load the mirror).
                    if let Some((_, l)) = self.last {
                        self.limit = l;
                    }
                    self.phase = Phase::Steady;
                    self.steady_windows = 0;
                }
            }
            Phase::Steady => {
                self.steady_windows += 1;
                if waited && self.steady_windows >= PROBE_EVERY && limit < self.max {
                    self.phase = Phase::Probing(limit);
                    self.limit = limit + 1;
                    self.steady_windows = 0;
                }
            }
            Phase::Probing(before) => {
                if paid(self.last) {
                    self.phase = Phase::Steady;
                } else {
                    self.limit = before;
                    self.phase = Phase::Steady;
                }
            }
        }
        self.last = Some((rate, limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link that delivers `per_assoc` units per association per second up
    /// to `cap` in all: the limiter doubles to the first limit that fills
    /// it, then stays there.
    fn settle(max: usize, per_assoc: f64, cap: f64) -> usize {
        let mut s = Limiter::new(max).lock().clone();
        let mut now = Instant::now();
        for _ in 0..40 {
            s.units = (s.limit as f64 * per_assoc).min(cap) as u64;
            s.waited = true;
            now += WINDOW;
            s.tick(now);
        }
        s.limit
    }

    #[test]
    fn grows_while_it_pays_and_stops_where_the_link_is_full() {
        // 1 MB/s per association, link 12.5 MB/s: 16 is the first doubling
        // that fills it; probing past it never pays.
        let l = settle(64, 1e6, 12.5e6);
        assert!((13..=16).contains(&l), "{l}");
        // A maximum below that: the maximum.
        assert_eq!(settle(6, 1e6, 12.5e6), 6);
        // One association fills the link: it stays at the start.
        assert_eq!(settle(64, 20e6, 12.5e6), START);
    }

    #[test]
    fn trouble_halves_and_a_full_mirror_caps() {
        let l = Limiter::new(16);
        {
            let mut s = l.lock();
            s.limit = 8;
            s.in_use = 6;
        }
        l.trouble(Trouble::Overload);
        assert_eq!(l.snapshot().limit, 4);
        l.trouble(Trouble::TooManyAssociations);
        assert_eq!(l.snapshot().limit, 2);
        {
            let mut s = l.lock();
            s.limit = 16;
        }
        // capped at what was open minus one
        assert_eq!(l.snapshot().limit, 5);
    }

    #[tokio::test]
    async fn permits_wait_for_the_limit_and_come_back_on_drop() {
        let l = Limiter::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        assert_eq!(l.snapshot().in_use, 2);
        let l2 = l.clone();
        let waiting = tokio::spawn(async move { l2.acquire().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("a freed permit is handed on")
            .expect("task");
        assert!(!c.over_limit());
        assert_eq!(l.snapshot().in_use, 2);
    }
}
