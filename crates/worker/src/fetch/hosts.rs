//! One image host's failure stays that host's: a breaker per host, a bound on every hold, and
//! an egress outage only when many hosts fail at once (or the operator's probe URL does).
//!
//! A **host** is a URL's origin: scheme, host and port. What a download's failure says:
//!
//! - The host **answered** (any HTTP status, a body over the cap, a transfer that broke or
//!   stalled after the headers): the host is up, and the failure, if any, is this record's
//!   (its class: `http_404`, `timeout`, `transfer`, ...). It closes the host's breaker.
//! - The host **did not answer** (the connection failed, DNS failed, or no headers came back
//!   within `--fetch-timeout`), after the download's attempts:
//!   - if the same host answered another download since this one started, the host is up and
//!     the failure is this record's: a dead letter now (class `connect` or `timeout`);
//!   - otherwise the host's **breaker** opens (or stays open) and the record is **held**: it
//!     gives its download slot back and waits, so that other hosts' records keep flowing. The
//!     breaker lets one held record **probe** the host after [`PROBE_FIRST`], then after twice
//!     as long each time it fails, up to [`PROBE_MAX`]; meanwhile new records of that host are
//!     held without a download. The first answer from the host closes the breaker and wakes
//!     its records, which download again.
//! - **Every hold is bounded** by `--host-hold`: a record held that long (from its first
//!   download) is a dead letter of class `fetch/host_unreachable`, naming the host, how long it
//!   was tried and the last error. It is replayable (`ocrfleet replay --class host_unreachable`)
//!   once the host answers.
//! - An answer from one host never closes another host's breaker nor shortens its records'
//!   holds: each host is judged on its own evidence.
//!
//! **An egress outage** (the pod's way out is broken: DNS, an egress proxy, a firewall) is an
//! infrastructure fault of the pod, reported as the `image_hosts` component (intake pauses,
//! `/readyz` 503), in two cases:
//! - **by evidence:** connections to at least `--egress-outage-hosts` distinct hosts failed in
//!   the last [`WINDOW`] and no download reached any host since the earliest of them. It closes
//!   at the first answer from any host, or when no record is held any more (nothing is left to
//!   prove it; the next failures open it again). One host, even one that carries all the
//!   traffic, never makes an outage. Holds keep their bound meanwhile: the pod cannot tell a
//!   broken way out from a producer whose every URL points at a dead host, so only the
//!   read-ahead (intake is paused) is at stake, and it ends as replayable dead letters.
//! - **by the operator's probe** (`--fetch-probe-url`, e.g. the object store every image comes
//!   from): while that URL fails, the outage is open, and the time it lasts does not count
//!   towards any hold (nothing is dead-lettered, however long); `/healthz` fails once it has
//!   lasted `--liveness-timeout`, so that a pod on a broken node is restarted elsewhere.
//!
//! Held records of a revoked partition are dropped (the new owner redoes them), and a host's
//! breaker and the outage are forgotten when no record is held for them. The rules are in the
//! pure [`Board`] (time passed in, property-tested); [`Hosts`] shares it between the download
//! tasks, wakes held records and reports the outage to [`Health`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::failure::Component;
use crate::health::Health;

/// How far back connection failures count towards an egress outage.
pub const WINDOW: Duration = Duration::from_secs(60);
/// A held host's first probe comes this long after its breaker opened.
pub const PROBE_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two probes of a held host (the wait doubles after each failure).
pub const PROBE_MAX: Duration = Duration::from_secs(60);
/// A probe not reported back within this long (its task was dropped) frees the host for another.
pub const PROBE_TTL: Duration = Duration::from_secs(120);
/// How often the probe URL is fetched (`--fetch-probe-url`).
pub const PROBE_URL_EVERY: Duration = Duration::from_secs(10);
/// Connection failures remembered at most (the oldest go first).
const KEEP: usize = 4096;
/// A host nobody waits for is forgotten after this long without news.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub struct HostRules {
    /// `--host-hold`: the longest a record is held for its host.
    pub hold: Duration,
    /// `--egress-outage-hosts`: distinct failing hosts that make an egress outage (0: never by
    /// evidence).
    pub outage_hosts: usize,
}

impl Default for HostRules {
    fn default() -> Self {
        HostRules {
            hold: Duration::from_secs(300),
            outage_hosts: 4,
        }
    }
}

/// The origin (`scheme://host:port`) of a URL, the unit a breaker covers; `None` when the URL
/// does not parse (the download then fails on its own, as `bad_url`).
pub fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        host,
        u.port_or_known_default().unwrap_or(0)
    ))
}

#[derive(Debug)]
struct Open {
    since: Instant,
    /// The wait after the next failed probe's predecessor (doubles).
    backoff: Duration,
    next_probe: Instant,
    /// A probe is in flight until then.
    probing_until: Option<Instant>,
    last_error: String,
}

#[derive(Debug, Default)]
struct Host {
    /// The last time this host answered a download.
    reached: Option<Instant>,
    open: Option<Open>,
    /// Records held for this host now.
    held: usize,
    /// The last time anything happened to this host (for forgetting it).
    touched: Option<Instant>,
}

/// What a download may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The host's breaker is closed: download, with every attempt.
    Go,
    /// The breaker is open and it is this record's turn to probe the host: one attempt.
    Probe,
    /// The breaker is open: wait (held) until then, or until woken.
    Wait(Instant),
}

/// One record's download, as the board sees it: its host, when it first tried (and the paused
/// clock then), whether it is held now.
#[derive(Debug, Clone)]
pub struct Record {
    pub origin: String,
    pub first: Instant,
    pub mark: Duration,
    pub held: bool,
}

/// What a record's download does next ([`Board::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Download: every attempt, or one (`probe`) when it probes its host's open breaker.
    Download { probe: bool },
    /// Held: wait until then (or news), then ask again.
    Wait(Instant),
    /// Held for the whole `--host-hold`: a dead letter (`fetch/host_unreachable`).
    Expired,
}

/// The verdict on a download whose host did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The host answered another download meanwhile: the record's own failure.
    DeadLetter,
    /// The host is not answering: hold the record on its breaker.
    Hold,
}

/// Something the waiting records should hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changed {
    /// A breaker closed (its held records may download again).
    pub breaker_closed: bool,
    /// The egress outage opened or closed.
    pub outage: bool,
}

impl Changed {
    fn any(self) -> bool {
        self.breaker_closed || self.outage
    }
}

/// The pure state of every host and of the way out (see the module documentation); time is
/// passed in.
#[derive(Debug)]
pub struct Board {
    rules: HostRules,
    hosts: HashMap<String, Host>,
    /// Connection failures (when, host), oldest first.
    failures: VecDeque<(Instant, String)>,
    /// The last time any host answered.
    reached: Option<Instant>,
    /// The outage by evidence, open since.
    evidence_since: Option<Instant>,
    /// The outage by the probe URL, open since.
    probe_since: Option<Instant>,
    /// Time the probe-URL outage was open before `probe_since` (the holds' paused time).
    probe_total: Duration,
    /// Records held now, over all hosts.
    held: usize,
    ops: u64,
}

impl Board {
    pub fn new(rules: HostRules) -> Board {
        Board {
            rules,
            hosts: HashMap::new(),
            failures: VecDeque::new(),
            reached: None,
            evidence_since: None,
            probe_since: None,
            probe_total: Duration::ZERO,
            held: 0,
            ops: 0,
        }
    }

    pub fn rules(&self) -> HostRules {
        self.rules
    }

    fn host(&mut self, origin: &str, now: Instant) -> &mut Host {
        self.ops += 1;
        if self.ops.is_multiple_of(1024) {
            self.forget(now);
        }
        let h = self.hosts.entry(origin.to_owned()).or_default();
        h.touched = Some(now);
        h
    }

    /// Drops hosts that nobody waits for and that have had no news for [`FORGET_AFTER`], so a
    /// producer of many distinct hosts cannot grow the table without bound.
    fn forget(&mut self, now: Instant) {
        self.hosts.retain(|_, h| {
            h.held > 0
                || h.open.as_ref().is_some_and(|o| o.probing_until.is_some())
                || h.touched
                    .is_some_and(|t| now.saturating_duration_since(t) < FORGET_AFTER)
        });
    }

    /// What a download of `origin` may do now (see [`Gate`]).
    pub fn gate(&mut self, origin: &str, now: Instant) -> Gate {
        let h = self.host(origin, now);
        let Some(open) = h.open.as_mut() else {
            return Gate::Go;
        };
        if let Some(until) = open.probing_until {
            if now < until {
                return Gate::Wait(until.min(now + PROBE_MAX));
            }
        }
        if now >= open.next_probe {
            open.probing_until = Some(now + PROBE_TTL);
            return Gate::Probe;
        }
        Gate::Wait(open.next_probe)
    }

    /// A record's download starts (it has not tried yet).
    pub fn record(&self, origin: &str, now: Instant) -> Record {
        Record {
            origin: origin.to_owned(),
            first: now,
            mark: self.paused_clock(now),
            held: false,
        }
    }

    /// What the record's download does now: download, probe, wait (held) or give up.
    pub fn step(&mut self, r: &mut Record, now: Instant) -> Step {
        match self.gate(&r.origin, now) {
            Gate::Go => Step::Download { probe: false },
            Gate::Probe => Step::Download { probe: true },
            Gate::Wait(until) => {
                if !r.held {
                    r.held = true;
                    self.hold(&r.origin, now);
                }
                if self.expired(r.first, r.mark, now) {
                    Step::Expired
                } else {
                    Step::Wait(until)
                }
            }
        }
    }

    /// The record's download (started at `started`) ended without an answer from its host:
    /// the record's own failure, or held on the host's breaker.
    pub fn failed(
        &mut self,
        r: &mut Record,
        started: Instant,
        now: Instant,
        error: &str,
    ) -> Verdict {
        let v = self.judge(&r.origin, started, now, error);
        if v == Verdict::Hold && !r.held {
            r.held = true;
            self.hold(&r.origin, now);
        }
        v
    }

    /// The record is done with its host (downloaded, dead-lettered or dropped).
    pub fn release(&mut self, r: &mut Record, now: Instant) -> Changed {
        if std::mem::take(&mut r.held) {
            self.unhold(&r.origin, now)
        } else {
            Changed::default()
        }
    }

    /// Whether `origin`'s breaker is open (its downloads stop retrying).
    pub fn is_open(&self, origin: &str) -> bool {
        self.hosts.get(origin).is_some_and(|h| h.open.is_some())
    }

    /// `origin` answered a download: its breaker closes, and the way out works.
    pub fn answered(&mut self, origin: &str, now: Instant) -> Changed {
        let h = self.host(origin, now);
        h.reached = Some(now);
        let breaker_closed = h.open.take().is_some();
        self.reached = Some(now);
        let outage = self.evidence_since.take().is_some();
        Changed {
            breaker_closed,
            outage,
        }
    }

    /// A connection to `origin` failed (an attempt: DNS, refused, reset, TLS, connect
    /// time-out): evidence about the way out.
    pub fn connect_failed(&mut self, origin: &str, now: Instant) -> Changed {
        self.host(origin, now);
        self.failures.push_back((now, origin.to_owned()));
        while self.failures.len() > KEEP
            || self
                .failures
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            self.failures.pop_front();
        }
        if self.evidence_since.is_some() || self.rules.outage_hosts == 0 {
            return Changed::default();
        }
        let since = self.reached;
        let distinct: HashSet<&str> = self
            .failures
            .iter()
            .filter(|(t, _)| since.is_none_or(|r| *t > r))
            .map(|(_, o)| o.as_str())
            .collect();
        if distinct.len() >= self.rules.outage_hosts {
            self.evidence_since = Some(now);
            return Changed {
                outage: true,
                ..Changed::default()
            };
        }
        Changed::default()
    }

    /// The verdict on a download of `origin` that started at `started` and ended without an
    /// answer from its host (`error`); opens the host's breaker when it holds.
    pub fn judge(&mut self, origin: &str, started: Instant, now: Instant, error: &str) -> Verdict {
        let h = self.host(origin, now);
        if h.reached.is_some_and(|r| r >= started) {
            return Verdict::DeadLetter;
        }
        match h.open.as_mut() {
            Some(open) => {
                open.last_error = error.to_owned();
                // A failed probe: the next one waits twice as long.
                if open.probing_until.take().is_some() {
                    open.backoff = (open.backoff * 2).min(PROBE_MAX);
                    open.next_probe = now + open.backoff;
                }
            }
            None => {
                h.open = Some(Open {
                    since: now,
                    backoff: PROBE_FIRST,
                    next_probe: now + PROBE_FIRST,
                    probing_until: None,
                    last_error: error.to_owned(),
                })
            }
        }
        Verdict::Hold
    }

    /// A probe of `origin` ended without a verdict (the record was dropped, or the host
    /// refused the request before any answer): another record may probe at once.
    pub fn probe_abandoned(&mut self, origin: &str) {
        if let Some(open) = self.hosts.get_mut(origin).and_then(|h| h.open.as_mut()) {
            open.probing_until = None;
        }
    }

    /// A record starts waiting for `origin`.
    pub fn hold(&mut self, origin: &str, now: Instant) {
        self.host(origin, now).held += 1;
        self.held += 1;
    }

    /// A record stopped waiting for `origin` (downloaded, dead-lettered or dropped). When no
    /// record is held any more, the outage by evidence has nothing left to stand on and closes.
    pub fn unhold(&mut self, origin: &str, now: Instant) -> Changed {
        let h = self.host(origin, now);
        h.held = h.held.saturating_sub(1);
        if h.held == 0 {
            // Nobody waits: a new record of this host tries it afresh rather than waiting out
            // a backoff that nothing is probing.
            if let Some(open) = h.open.as_mut() {
                if open.probing_until.is_none() {
                    open.next_probe = open.next_probe.min(now);
                }
            }
        }
        self.held = self.held.saturating_sub(1);
        if self.held == 0 && self.evidence_since.take().is_some() {
            return Changed {
                outage: true,
                ..Changed::default()
            };
        }
        Changed::default()
    }

    /// The operator's probe URL answered (`ok`) or failed.
    pub fn probe_url(&mut self, ok: bool, now: Instant) -> Changed {
        match (ok, self.probe_since) {
            (true, Some(since)) => {
                self.probe_total += now.saturating_duration_since(since);
                self.probe_since = None;
                Changed {
                    outage: true,
                    ..Changed::default()
                }
            }
            (false, None) => {
                self.probe_since = Some(now);
                Changed {
                    outage: true,
                    ..Changed::default()
                }
            }
            _ => Changed::default(),
        }
    }

    /// Whether an egress outage is open (by evidence or by the probe URL).
    pub fn outage(&self) -> bool {
        self.evidence_since.is_some() || self.probe_since.is_some()
    }

    /// Whether the probe URL's outage is open, and since when.
    pub fn probe_outage_since(&self) -> Option<Instant> {
        self.probe_since
    }

    /// The holds' paused clock: how long the probe URL's outage has been open in all, up to
    /// `now`. A hold counts wall time minus what this clock advanced meanwhile.
    pub fn paused_clock(&self, now: Instant) -> Duration {
        self.probe_total
            + self
                .probe_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// How much of its hold a record that first tried at `started` (when the paused clock read
    /// `mark`) has used by `now`.
    pub fn held_for(&self, started: Instant, mark: Duration, now: Instant) -> Duration {
        now.saturating_duration_since(started)
            .saturating_sub(self.paused_clock(now).saturating_sub(mark))
    }

    /// Whether that record's hold is over.
    pub fn expired(&self, started: Instant, mark: Duration, now: Instant) -> bool {
        self.held_for(started, mark, now) >= self.rules.hold
    }

    /// (breakers open, records held).
    pub fn counts(&self) -> (usize, usize) {
        (
            self.hosts.values().filter(|h| h.open.is_some()).count(),
            self.held,
        )
    }

    /// A line for `/readyz` and the logs about the outage.
    pub fn describe_outage(&self, now: Instant) -> String {
        let hosts: HashSet<&str> = self
            .failures
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= WINDOW)
            .map(|(_, o)| o.as_str())
            .collect();
        let mut parts = Vec::new();
        if self.probe_since.is_some() {
            parts.push("the probe URL (--fetch-probe-url) fails".to_string());
        }
        if self.evidence_since.is_some() {
            parts.push(format!(
                "connections to {} distinct hosts failed in the last {} s and none answered",
                hosts.len(),
                WINDOW.as_secs()
            ));
        }
        format!(
            "egress outage: {}; intake paused, held downloads probe their hosts",
            parts.join("; ")
        )
    }

    /// How long `origin`'s breaker has been open and its last error, for a dead letter.
    pub fn open_since(&self, origin: &str) -> Option<(Instant, String)> {
        self.hosts
            .get(origin)
            .and_then(|h| h.open.as_ref())
            .map(|o| (o.since, o.last_error.clone()))
    }
}

/// The shared [`Board`]: wakes held records on news, keeps the `image_hosts` fault in step with
/// the outage, and exports the breaker gauges.
#[derive(Clone)]
pub struct Hosts {
    board: Arc<Mutex<Board>>,
    news: Arc<Notify>,
    health: Arc<Health>,
    gauges: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
}

impl Hosts {
    pub fn new(rules: HostRules, health: Arc<Health>) -> Hosts {
        Hosts {
            board: Arc::new(Mutex::new(Board::new(rules))),
            news: Arc::default(),
            health,
            gauges: None,
        }
    }

    /// Exports (breakers open, records held) in these gauges.
    pub fn with_gauges(mut self, open: prometheus::IntGauge, held: prometheus::IntGauge) -> Hosts {
        self.gauges = Some((open, held));
        self
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries out what a change means: wake the waiting records, report the outage.
    fn changed(&self, c: Changed) {
        let (outage, why) = {
            let b = self.board();
            // The counts are published under the board's lock: set after it, the count of an
            // earlier change could land after a later one's and stay (CI, 2026-12-07: 5
            // records "held" with none left, after 70 expired at once on several threads).
            let counts = b.counts();
            if let Some((open, held)) = &self.gauges {
                open.set(counts.0 as i64);
                held.set(counts.1 as i64);
            }
            self.health.set_held(counts.1);
            (b.outage(), b.describe_outage(Instant::now()))
        };
        if c.outage {
            if outage {
                self.health.fault(Component::ImageHosts, "egress", why);
            } else {
                self.health.clear(Component::ImageHosts, "egress");
            }
        }
        if c.any() {
            self.news.notify_waiters();
        }
    }

    pub fn rules(&self) -> HostRules {
        self.board().rules()
    }

    pub fn is_open(&self, origin: &str) -> bool {
        self.board().is_open(origin)
    }

    pub fn answered(&self, origin: &str) {
        let c = self.board().answered(origin, Instant::now());
        if c.breaker_closed {
            tracing::info!(host = %origin, "image host answers again; its held records download again");
        }
        self.changed(c);
    }

    pub fn connect_failed(&self, origin: &str) {
        let c = self.board().connect_failed(origin, Instant::now());
        self.changed(c);
    }

    /// A record's download of `origin` starts.
    pub fn record(&self, origin: &str) -> Record {
        self.board().record(origin, Instant::now())
    }

    /// See [`Board::step`].
    pub fn step(&self, r: &mut Record) -> Step {
        let was_held = r.held;
        let step = self.board().step(r, Instant::now());
        if r.held != was_held {
            self.changed(Changed::default());
        }
        step
    }

    /// See [`Board::failed`]; logs when the host's breaker opens.
    pub fn failed(&self, r: &mut Record, started: Instant, error: &str) -> Verdict {
        let (v, opened) = {
            let mut b = self.board();
            let was = b.is_open(&r.origin);
            let v = b.failed(r, started, Instant::now(), error);
            (v, !was && b.is_open(&r.origin))
        };
        if opened {
            let hold = self.rules().hold;
            tracing::warn!(host = %r.origin, %error, hold = %humantime::format_duration(hold), "image host does not answer: its records are held without download slots (other hosts go on), one probes it at a time with growing waits, and they are dead-lettered (fetch/host_unreachable) after --host-hold");
        }
        self.changed(Changed::default());
        v
    }

    /// See [`Board::release`].
    pub fn release(&self, r: &mut Record) {
        let c = self.board().release(r, Instant::now());
        self.changed(c);
    }

    pub fn probe_abandoned(&self, origin: &str) {
        self.board().probe_abandoned(origin);
        self.news.notify_waiters();
    }

    pub fn probe_url(&self, ok: bool) {
        let c = self.board().probe_url(ok, Instant::now());
        self.changed(c);
    }

    /// How much of its hold the record has used.
    pub fn held_for(&self, r: &Record) -> Duration {
        self.board().held_for(r.first, r.mark, Instant::now())
    }

    pub fn open_since(&self, origin: &str) -> Option<(Instant, String)> {
        self.board().open_since(origin)
    }

    /// Waits until `until`, at most `max`, or until news (a breaker closed, the outage moved).
    pub async fn wait(&self, until: Instant, max: Duration) {
        let until = until.min(Instant::now() + max);
        let news = self.news.notified();
        let _ = tokio::time::timeout_at(until, news).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    const A: &str = "http://a:80";
    const B: &str = "http://b:80";

    #[test]
    fn origins_name_scheme_host_and_port() {
        assert_eq!(
            origin("http://x.example/a.png").as_deref(),
            Some("http://x.example:80")
        );
        assert_eq!(
            origin("https://x.example:8443/a?q=1").as_deref(),
            Some("https://x.example:8443")
        );
        assert_eq!(
            origin("http://127.0.0.1:9/").as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(origin("not a url"), None);
    }

    #[test]
    fn the_held_gauge_ends_at_zero_when_records_are_released_on_many_threads() {
        let registry = prometheus::Registry::new();
        let health = Arc::new(Health::new(&registry));
        let (open, held) = (
            prometheus::IntGauge::new("open", "open").unwrap(),
            prometheus::IntGauge::new("held", "held").unwrap(),
        );
        let hosts =
            Hosts::new(HostRules::default(), health).with_gauges(open.clone(), held.clone());
        // Every thread holds its records, then all release at once: the last changes race.
        let all_held = std::sync::Barrier::new(8);
        for round in 0..20 {
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        let mut records: Vec<Record> = (0..10)
                            .map(|_| {
                                let mut r = hosts.record(A);
                                let v = hosts.failed(&mut r, Instant::now(), "refused");
                                assert_eq!(v, Verdict::Hold);
                                r
                            })
                            .collect();
                        all_held.wait();
                        for r in &mut records {
                            hosts.release(r);
                        }
                    });
                }
            });
            assert_eq!(held.get(), 0, "round {round}: every record was released");
            assert_eq!(open.get(), 1, "round {round}: A's breaker is open");
        }
    }

    #[test]
    fn a_dead_host_opens_its_own_breaker_and_no_one_elses() {
        let t0 = Instant::now();
        let mut b = Board::new(HostRules::default());
        assert_eq!(b.gate(A, t0), Gate::Go);
        assert_eq!(b.judge(A, t0, secs(t0, 1), "refused"), Verdict::Hold);
        assert!(b.is_open(A) && !b.is_open(B));
        assert_eq!(b.gate(B, secs(t0, 1)), Gate::Go, "B is not A");
        assert_eq!(
            b.gate(A, secs(t0, 2)),
            Gate::Wait(secs(t0, 1) + PROBE_FIRST)
        );
        // B answering says nothing about A.
        b.answered(B, secs(t0, 3));
        assert!(b.is_open(A));
        assert_eq!(b.gate(A, secs(t0, 6)), Gate::Probe, "first probe");
        assert!(
            matches!(b.gate(A, secs(t0, 6)), Gate::Wait(_)),
            "one probe at a time"
        );
        assert_eq!(
            b.judge(A, secs(t0, 6), secs(t0, 7), "refused"),
            Verdict::Hold
        );
        assert_eq!(
            b.gate(A, secs(t0, 8)),
            Gate::Wait(secs(t0, 7) + 2 * PROBE_FIRST),
            "backoff doubles"
        );
        let c = b.answered(A, secs(t0, 20));
        assert!(c.breaker_closed && !b.is_open(A));
        assert_eq!(b.gate(A, secs(t0, 20)), Gate::Go);
    }

    #[test]
    fn a_host_that_answered_meanwhile_makes_the_failure_the_records() {
        let t0 = Instant::now();
        let mut b = Board::new(HostRules::default());
        b.answered(A, secs(t0, 2));
        assert_eq!(
            b.judge(A, secs(t0, 1), secs(t0, 5), "timeout"),
            Verdict::DeadLetter
        );
        assert!(!b.is_open(A));
        assert_eq!(
            b.judge(A, secs(t0, 3), secs(t0, 5), "timeout"),
            Verdict::Hold
        );
    }

    #[test]
    fn an_egress_outage_needs_many_hosts_and_no_answer() {
        let t0 = Instant::now();
        let rules = HostRules {
            outage_hosts: 3,
            ..HostRules::default()
        };
        let mut b = Board::new(rules);
        for s in 0..50 {
            assert!(
                !b.connect_failed(A, secs(t0, s)).outage,
                "one host is one host"
            );
        }
        assert!(!b.outage());
        b.connect_failed(B, secs(t0, 50));
        assert!(b.connect_failed("http://c:80", secs(t0, 51)).outage);
        assert!(b.outage());
        b.hold(A, secs(t0, 51));
        // A stray answer closes the outage, and says nothing about A, B or C.
        b.judge(A, t0, secs(t0, 51), "refused");
        let c = b.answered("http://d:80", secs(t0, 52));
        assert!(c.outage && !c.breaker_closed && !b.outage());
        assert!(b.is_open(A));
        // Failures before that answer no longer count.
        b.connect_failed(A, secs(t0, 53));
        b.connect_failed(B, secs(t0, 53));
        assert!(!b.outage());
        b.connect_failed("http://c:80", secs(t0, 54));
        assert!(b.outage());
        // Nothing held any more: nothing left to prove it.
        assert!(b.unhold(A, secs(t0, 55)).outage);
        assert!(!b.outage());
    }

    #[test]
    fn an_answer_before_the_failures_does_not_cancel_them() {
        let t0 = Instant::now();
        let mut b = Board::new(HostRules {
            outage_hosts: 2,
            ..HostRules::default()
        });
        b.answered(A, t0);
        b.connect_failed(A, secs(t0, 1));
        assert!(b.connect_failed(B, secs(t0, 2)).outage);
    }

    #[test]
    fn the_probe_url_outage_pauses_every_holds_clock() {
        let t0 = Instant::now();
        let mut b = Board::new(HostRules {
            hold: Duration::from_secs(100),
            outage_hosts: 0,
        });
        let mark = b.paused_clock(t0);
        assert!(b.probe_url(false, secs(t0, 10)).outage);
        assert!(b.outage());
        assert!(
            !b.expired(t0, mark, secs(t0, 500)),
            "10 s used, the rest paused"
        );
        b.probe_url(true, secs(t0, 510));
        assert!(!b.outage());
        assert_eq!(b.held_for(t0, mark, secs(t0, 550)), Duration::from_secs(50));
        assert!(b.expired(t0, mark, secs(t0, 600)));
        // Evidence alone never opens an outage with `outage_hosts` 0.
        for (i, o) in [A, B, "http://c:80", "http://d:80"].iter().enumerate() {
            b.connect_failed(o, secs(t0, 601 + i as u64));
        }
        assert!(!b.outage());
    }

    #[test]
    fn a_lost_probe_frees_the_host_after_its_ttl_or_when_abandoned() {
        let t0 = Instant::now();
        let mut b = Board::new(HostRules::default());
        b.judge(A, t0, t0, "refused");
        assert_eq!(b.gate(A, secs(t0, 5)), Gate::Probe);
        assert!(matches!(b.gate(A, secs(t0, 6)), Gate::Wait(_)));
        assert_eq!(b.gate(A, secs(t0, 5) + PROBE_TTL), Gate::Probe, "ttl over");
        b.probe_abandoned(A);
        assert_eq!(b.gate(A, secs(t0, 5) + PROBE_TTL), Gate::Probe);
    }

    #[test]
    fn hosts_nobody_waits_for_are_forgotten() {
        let t0 = Instant::now();
        let mut b = Board::new(HostRules::default());
        for i in 0..5000 {
            let o = format!("http://h{i}:80");
            b.judge(&o, t0, secs(t0, 1), "refused");
        }
        b.hold(A, secs(t0, 1));
        b.judge(A, t0, secs(t0, 1), "refused");
        let later = secs(t0, 1) + FORGET_AFTER + Duration::from_secs(1);
        for _ in 0..1024 {
            b.gate(B, later);
        }
        assert!(b.hosts.len() <= 2, "{} hosts kept", b.hosts.len());
        assert!(b.is_open(A), "a host with held records is kept");
    }

    /// A simulated fleet of hosts and records driven through the board's record API (the same
    /// calls `stages::prepare` makes), one tick a second.
    mod simulated {
        use super::*;
        use proptest::prelude::*;

        const ATTEMPTS: u64 = 4;

        #[derive(Debug, Clone)]
        struct Scenario {
            /// Per host: dead in [from, until) (from == until: never dead).
            hosts: Vec<(u64, u64)>,
            /// Per record: (host, partition, arrival).
            records: Vec<(usize, u8, u64)>,
            /// (tick, partition) revokes.
            revokes: Vec<(u64, u8)>,
            /// An egress outage: every download fails in [from, until).
            egress: Option<(u64, u64)>,
            /// Whether the operator's probe URL sees that outage.
            probe_url: bool,
            hold: u64,
            outage_hosts: usize,
        }

        fn scenario() -> impl Strategy<Value = Scenario> {
            (1usize..6, 1usize..40).prop_flat_map(|(nh, nr)| {
                (
                    proptest::collection::vec(
                        (0u64..200, 0u64..400).prop_map(|(a, len)| {
                            if len < 100 {
                                (0, 0)
                            } else {
                                (a, a + len)
                            }
                        }),
                        nh,
                    ),
                    proptest::collection::vec((0..nh, 0u8..3, 0u64..300), nr),
                    proptest::collection::vec((0u64..500, 0u8..3), 0..3),
                    proptest::option::of((0u64..200, 1u64..300).prop_map(|(a, l)| (a, a + l))),
                    any::<bool>(),
                    30u64..200,
                    0usize..4,
                )
                    .prop_map(
                        |(hosts, records, revokes, egress, probe_url, hold, outage_hosts)| {
                            Scenario {
                                hosts,
                                records,
                                revokes,
                                egress,
                                probe_url,
                                hold,
                                outage_hosts,
                            }
                        },
                    )
            })
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum State {
            NotYet,
            Ready,
            Downloading {
                started: u64,
                attempt_end: u64,
                probe: bool,
                attempts: u64,
            },
            Waiting {
                until: u64,
            },
            Done,
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum End {
            Downloaded,
            OwnFailure,
            Expired,
            Dropped,
        }

        fn origin(h: usize) -> String {
            format!("http://h{h}:80")
        }

        fn run(sc: &Scenario) -> Result<(), TestCaseError> {
            let t0 = Instant::now();
            let at = |t: u64| t0 + Duration::from_secs(t);
            let mut b = Board::new(HostRules {
                hold: Duration::from_secs(sc.hold),
                outage_hosts: sc.outage_hosts,
            });
            let in_egress = |t: u64| sc.egress.is_some_and(|(a, z)| (a..z).contains(&t));
            let live = |h: usize, t: u64| {
                let (a, z) = sc.hosts[h];
                !(a..z).contains(&t) && !in_egress(t)
            };
            let n = sc.records.len();
            let mut state = vec![State::NotYet; n];
            let mut rec: Vec<Option<Record>> = vec![None; n];
            let mut first = vec![0u64; n];
            let mut end: Vec<Option<(u64, End)>> = vec![None; n];
            let mut waited = vec![false; n];
            let mut revoked = [u64::MAX; 3];
            for &(t, p) in &sc.revokes {
                revoked[p as usize] = revoked[p as usize].min(t);
            }
            let mut news = false;
            let mut t = 0u64;
            while end.iter().any(Option::is_none) {
                prop_assert!(t < 5000, "still running at {t}: {state:?}");
                if sc.probe_url {
                    if let Some((a, z)) = sc.egress {
                        if t == a {
                            b.probe_url(false, at(t));
                        }
                        if t == z {
                            b.probe_url(true, at(t));
                        }
                    }
                }
                let woken = std::mem::take(&mut news);
                for i in 0..n {
                    let (h, part, arrive) = sc.records[i];
                    let o = origin(h);
                    loop {
                        let ours = t < revoked[part as usize];
                        match state[i] {
                            State::NotYet if t >= arrive => {
                                if !ours {
                                    first[i] = t;
                                    state[i] = State::Done;
                                    end[i] = Some((t, End::Dropped));
                                    break;
                                }
                                first[i] = t;
                                rec[i] = Some(b.record(&o, at(t)));
                                state[i] = State::Ready;
                            }
                            State::Ready | State::Waiting { .. } if !ours => {
                                let c = b.release(rec[i].as_mut().unwrap(), at(t));
                                news |= c.breaker_closed;
                                state[i] = State::Done;
                                end[i] = Some((t, End::Dropped));
                            }
                            State::Waiting { until } if t >= until || woken => {
                                state[i] = State::Ready;
                            }
                            State::Ready => match b.step(rec[i].as_mut().unwrap(), at(t)) {
                                Step::Download { probe } => {
                                    state[i] = State::Downloading {
                                        started: t,
                                        attempt_end: t + 1,
                                        probe,
                                        attempts: 1,
                                    }
                                }
                                Step::Wait(until) => {
                                    waited[i] = true;
                                    let until = (until - t0).as_secs().max(t + 1);
                                    state[i] = State::Waiting {
                                        until: until.min(t + 1),
                                    };
                                    break;
                                }
                                Step::Expired => {
                                    let r = rec[i].as_mut().unwrap();
                                    prop_assert!(
                                        b.held_for(r.first, r.mark, at(t))
                                            >= Duration::from_secs(sc.hold),
                                        "expired early"
                                    );
                                    let c = b.release(r, at(t));
                                    news |= c.breaker_closed;
                                    state[i] = State::Done;
                                    end[i] = Some((t, End::Expired));
                                }
                            },
                            State::Downloading {
                                started,
                                attempt_end,
                                probe,
                                attempts,
                            } if t >= attempt_end => {
                                if live(h, t) {
                                    news |= b.answered(&o, at(t)).breaker_closed;
                                    let c = b.release(rec[i].as_mut().unwrap(), at(t));
                                    news |= c.breaker_closed;
                                    state[i] = State::Done;
                                    end[i] = Some((t, End::Downloaded));
                                    break;
                                }
                                b.connect_failed(&o, at(t));
                                let more = !probe && attempts < ATTEMPTS && !b.is_open(&o);
                                if more {
                                    state[i] = State::Downloading {
                                        started,
                                        attempt_end: t + 1,
                                        probe,
                                        attempts: attempts + 1,
                                    };
                                    break;
                                }
                                let r = rec[i].as_mut().unwrap();
                                match b.failed(r, at(started), at(t), "refused") {
                                    Verdict::DeadLetter => {
                                        let c = b.release(r, at(t));
                                        news |= c.breaker_closed;
                                        state[i] = State::Done;
                                        end[i] = Some((t, End::OwnFailure));
                                    }
                                    Verdict::Hold => state[i] = State::Ready,
                                }
                            }
                            _ => break,
                        }
                    }
                }
                t += 1;
            }
            // Nothing leaked: no record is counted as held, and no outage outlives its evidence.
            prop_assert_eq!(b.counts().1, 0);
            prop_assert!(!b.outage() || sc.probe_url && sc.egress.is_some_and(|(_, z)| z >= t));
            let slack = PROBE_MAX.as_secs() + ATTEMPTS + 2;
            for i in 0..n {
                let (h, _, _) = sc.records[i];
                let (e, how) = end[i].unwrap();
                // Every hold ends within its bound (the probe URL's outage paused it).
                let paused = match (sc.probe_url, sc.egress) {
                    (true, Some((a, z))) => z.min(e).saturating_sub(a.max(first[i])),
                    _ => 0,
                };
                prop_assert!(
                    e - first[i] <= sc.hold + paused + slack,
                    "record {i} ended {how:?} after {} s (hold {}, paused {paused})",
                    e - first[i],
                    sc.hold
                );
                if how == End::Dropped {
                    continue;
                }
                // A record whose host always answered never waited on anyone (another host's
                // failure never holds it).
                let (da, dz) = sc.hosts[h];
                if da == dz && sc.egress.is_none() {
                    prop_assert!(!waited[i], "record {i} of a live host was held");
                    prop_assert_eq!(how, End::Downloaded);
                    prop_assert!(
                        e - first[i] <= 1,
                        "record {i} of a live host took {} s",
                        e - first[i]
                    );
                }
                // Once its host answers again, a held record goes within one probe interval.
                let revived = [Some((da, dz)), sc.egress]
                    .into_iter()
                    .flatten()
                    .filter(|&(a, z)| a < z && a <= e)
                    .map(|(_, z)| z)
                    .max()
                    .unwrap_or(0);
                if revived < e {
                    prop_assert!(
                        e <= first[i].max(revived) + slack,
                        "record {i} ended {how:?} at {e}, its host answering since {revived}"
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
            #[test]
            fn every_hold_is_bounded_and_live_hosts_never_wait_on_dead_ones(sc in scenario()) {
                run(&sc)?;
            }
        }
    }
}
