//! A dead image host or an egress outage? Judging a download that could not reach its host.
//!
//! A download that fails to connect (DNS, refused, TLS) or times out, after its retries, is one
//! of two things. If other downloads reach their hosts meanwhile, the fault is this URL's host:
//! the record is bad and is dead-lettered, as before. If most downloads fail that way at the
//! same time, the fault is the worker's way out (a DNS or egress-proxy outage, a firewall
//! change, the one object store every image comes from being down): an infrastructure fault,
//! which must not dead-letter and commit the whole backlog at full speed. Then the
//! `image_hosts` component is down (intake pauses, `/readyz` 503), the failed downloads are
//! held and retried as probes every [`PROBE_EVERY`], and the first one that gets through
//! closes the outage and wakes the others.
//!
//! The rule ([`Judge::verdict`]), over the downloads that ended since the failed one started
//! or in the last [`WINDOW`] (whichever reaches back further), counting each download once,
//! after its own retries:
//! - at least [`MIN_OUTCOMES`] of them, and at least [`OUTAGE_SHARE`] could not reach their
//!   hosts: an outage;
//! - at least [`MIN_OUTCOMES`], fewer unreachable: this host's fault, a dead letter;
//! - fewer than that, and one of them reached its host after this download started: a dead
//!   letter (the way out worked meanwhile);
//! - otherwise undecided: the record is held (retried every [`REFETCH_EVERY`]; the retries
//!   do not count as evidence) while other downloads give evidence, for at most [`HOLD`], and
//!   then dead-lettered. On a worker with almost no traffic the record cannot be judged
//!   sooner, and a stall would be worse.
//!
//! Only connect and time-out failures count as unreachable; an HTTP status, a body over the cap
//! or a transfer that breaks after the headers all show a host that was reached.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::failure::Component;
use crate::health::Health;

/// How far back outcomes count, at least (see the module documentation).
pub const WINDOW: Duration = Duration::from_secs(30);
/// Outcomes needed to judge by share.
pub const MIN_OUTCOMES: usize = 8;
/// Share of unreachable outcomes that makes an outage.
pub const OUTAGE_SHARE: f64 = 0.8;
/// How long an undecided record is held before it is dead-lettered.
pub const HOLD: Duration = Duration::from_secs(60);
/// How often a held record is downloaded again.
pub const REFETCH_EVERY: Duration = Duration::from_secs(20);
/// How often a download held by an open outage probes its host (plus up to 1 s of jitter).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Outcomes kept at most (the oldest go first).
const KEEP: usize = 4096;
/// Outcomes are kept this long at most (a download with all its retries ends well within it).
const KEEP_FOR: Duration = Duration::from_secs(600);

/// What to do with a download that could not reach its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The host's fault: dead-letter the record.
    DeadLetter,
    /// The way out is down: hold the record, report the fault, retry when it clears.
    Outage,
    /// Not enough evidence yet.
    Undecided,
}

/// The outcomes of recent downloads and whether an outage is open (pure, time passed in).
#[derive(Debug, Default)]
pub struct Judge {
    /// (when it ended, whether it could not reach its host), oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    open: bool,
}

impl Judge {
    /// A download ended at `at`; `unreachable` when it failed to connect or timed out. One
    /// that reached its host closes an open outage, and the outage's failures are forgotten.
    pub fn record(&mut self, at: Instant, unreachable: bool) {
        if !unreachable && self.open {
            self.open = false;
            self.outcomes.clear();
        }
        self.outcomes.push_back((at, unreachable));
        while self.outcomes.len() > KEEP
            || self
                .outcomes
                .front()
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) > KEEP_FOR)
        {
            self.outcomes.pop_front();
        }
    }

    /// Whether an outage is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The verdict on a download that started at `started` and could not reach its host (see
    /// the module documentation); opens the outage when it finds one.
    pub fn verdict(&mut self, started: Instant, now: Instant) -> Verdict {
        if self.open {
            return Verdict::Outage;
        }
        let from = now.checked_sub(WINDOW).map_or(started, |w| w.min(started));
        let (mut n, mut unreachable, mut reached_since_start) = (0usize, 0usize, false);
        for &(t, u) in self.outcomes.iter().rev() {
            if t < from {
                break;
            }
            n += 1;
            if u {
                unreachable += 1;
            } else if t >= started {
                reached_since_start = true;
            }
        }
        if n >= MIN_OUTCOMES {
            if unreachable as f64 >= OUTAGE_SHARE * n as f64 {
                self.open = true;
                Verdict::Outage
            } else {
                Verdict::DeadLetter
            }
        } else if reached_since_start {
            Verdict::DeadLetter
        } else {
            Verdict::Undecided
        }
    }

    /// (outcomes, unreachable ones) in the last [`WINDOW`] before `now`.
    pub fn recent(&self, now: Instant) -> (usize, usize) {
        let from = now.checked_sub(WINDOW);
        self.outcomes
            .iter()
            .filter(|(t, _)| from.is_none_or(|f| *t >= f))
            .fold((0, 0), |(n, u), (_, x)| (n + 1, u + usize::from(*x)))
    }
}

/// What a download task does after its download could not reach the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    DeadLetter,
    /// Download again (a probe during an outage, or a held record's periodic retry).
    Refetch,
}

/// The shared judge, with the `image_hosts` health fault and a wake-up for held downloads
/// when an outage closes.
#[derive(Clone)]
pub struct Outages {
    judge: Arc<Mutex<Judge>>,
    closed: Arc<Notify>,
    health: Arc<Health>,
}

impl Outages {
    pub fn new(health: Arc<Health>) -> Outages {
        Outages {
            judge: Arc::default(),
            closed: Arc::default(),
            health,
        }
    }

    fn judge(&self) -> std::sync::MutexGuard<'_, Judge> {
        self.judge.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A download reached its host (whatever it answered).
    pub fn reached(&self) {
        let was_open = {
            let mut j = self.judge();
            let was = j.is_open();
            j.record(Instant::now(), false);
            was
        };
        if was_open {
            self.health.clear(Component::ImageHosts, "downloads");
            self.closed.notify_waiters();
        }
    }

    /// A download could not reach its host. `evidence`: count it (false for a held record's
    /// repeated tries, so that one URL cannot make an outage on its own).
    pub fn unreachable(&self, evidence: bool) {
        if evidence {
            self.judge().record(Instant::now(), true);
        }
    }

    /// Waits for the verdict on a record whose download, started at `started` (its first
    /// try), could not reach its host; `error` is the last failure, for the fault's reason.
    /// Returns when the record is to be dead-lettered or downloaded again.
    pub async fn settle(&self, started: Instant, error: &str) -> Next {
        let entered = Instant::now();
        loop {
            let now = Instant::now();
            let verdict = self.judge().verdict(started, now);
            match verdict {
                Verdict::DeadLetter => return Next::DeadLetter,
                Verdict::Outage => {
                    let (n, u) = self.judge().recent(now);
                    self.health.fault(
                        Component::ImageHosts,
                        "downloads",
                        format!(
                            "downloads cannot reach their hosts ({u} of the last {n} failed to connect or timed out; latest: {error}); holding them and probing until one gets through"
                        ),
                    );
                    // Woken when another download gets through; else a probe after a while
                    // (spread, so that the held downloads do not all probe at once).
                    let wait = PROBE_EVERY + Duration::from_millis(rand_ms(1000));
                    let _ = tokio::time::timeout(wait, self.closed.notified()).await;
                    return Next::Refetch;
                }
                Verdict::Undecided if now.duration_since(started) >= HOLD => {
                    return Next::DeadLetter
                }
                Verdict::Undecided if now.duration_since(entered) >= REFETCH_EVERY => {
                    return Next::Refetch
                }
                Verdict::Undecided => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
}

/// A few random milliseconds below `max` (jitter; no cryptographic use).
fn rand_ms(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max);
    h.finish() % max.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_dead_host_among_live_ones_is_a_dead_letter() {
        let t0 = Instant::now();
        let mut j = Judge::default();
        for s in 0..20 {
            j.record(at(t0, s), s % 10 == 3); // 2 of 20 unreachable
        }
        assert_eq!(j.verdict(at(t0, 5), at(t0, 20)), Verdict::DeadLetter);
        assert!(!j.is_open());
    }

    #[test]
    fn most_downloads_unreachable_is_an_outage_until_one_gets_through() {
        let t0 = Instant::now();
        let mut j = Judge::default();
        // Successes before the outage, then everything fails.
        for s in 0..5 {
            j.record(at(t0, s), false);
        }
        for s in 40..60 {
            j.record(at(t0, s), true);
        }
        assert_eq!(j.verdict(at(t0, 45), at(t0, 60)), Verdict::Outage);
        assert!(j.is_open());
        assert_eq!(j.verdict(at(t0, 59), at(t0, 61)), Verdict::Outage, "open");
        j.record(at(t0, 62), false);
        assert!(!j.is_open(), "closed by a download that got through");
        // The outage's failures are forgotten: one new failure next to that success is the
        // host's.
        j.record(at(t0, 63), true);
        assert_eq!(j.verdict(at(t0, 61), at(t0, 63)), Verdict::DeadLetter);
    }

    #[test]
    fn the_window_reaches_back_to_when_the_download_started() {
        let t0 = Instant::now();
        let mut j = Judge::default();
        // A download started at 0 and retried until 100; meanwhile 10 others got through
        // early on. They count, though they are older than the window.
        for s in 1..11 {
            j.record(at(t0, s), false);
        }
        j.record(at(t0, 100), true);
        assert_eq!(j.verdict(at(t0, 0), at(t0, 100)), Verdict::DeadLetter);
    }

    #[test]
    fn few_outcomes_decide_only_on_a_download_that_got_through_meanwhile() {
        let t0 = Instant::now();
        let mut j = Judge::default();
        j.record(at(t0, 1), false); // before this download started: stale
        j.record(at(t0, 12), true);
        assert_eq!(j.verdict(at(t0, 10), at(t0, 12)), Verdict::Undecided);
        j.record(at(t0, 13), false); // got through while this one was failing
        assert_eq!(j.verdict(at(t0, 10), at(t0, 13)), Verdict::DeadLetter);
        assert!(!j.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_record_is_held_then_dead_lettered() {
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        let o = Outages::new(health.clone());
        let started = Instant::now();
        o.unreachable(true);
        assert_eq!(o.settle(started, "connect").await, Next::Refetch);
        assert!(started.elapsed() >= REFETCH_EVERY, "held, then tried again");
        o.unreachable(false); // a held retry is no evidence
        loop {
            if o.settle(started, "connect").await == Next::DeadLetter {
                break;
            }
        }
        assert!(started.elapsed() >= HOLD);
        assert!(
            health.is_up(Component::ImageHosts),
            "never judged an outage"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_a_fault_and_a_download_that_gets_through_wakes_the_held_ones() {
        let health = Arc::new(Health::new(&prometheus::Registry::new()));
        health.set_started();
        let o = Outages::new(health.clone());
        let started = Instant::now();
        for _ in 0..MIN_OUTCOMES {
            o.unreachable(true);
        }
        let o2 = o.clone();
        let held = tokio::spawn(async move { o2.settle(started, "dns error").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!health.is_up(Component::ImageHosts) && health.intake_blocked());
        assert!(
            health.describe().contains("dns error"),
            "{}",
            health.describe()
        );
        o.reached();
        assert_eq!(held.await.unwrap(), Next::Refetch);
        assert!(health.ready(), "{}", health.describe());
    }
}
