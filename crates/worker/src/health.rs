//! Infrastructure health: which [`Component`]s are failing and why.
//!
//! Each part of the worker reports faults it sees (`fault`) and their end (`clear`) under a
//! short source name (`"bulk"`, `"probe"`, ...), so two observers of the same component (the
//! bulk requests and the readiness probe of Elasticsearch, say) do not clear each other's
//! faults. A component is up when none of its sources has a fault.
//!
//! What depends on it:
//! - `/readyz` answers 503 with every open fault listed, until start-up is complete and no
//!   fault is open;
//! - the Kafka source pauses intake while a component that [`Component::blocks_intake`] is down;
//! - `ocrfleet_component_up{component}` and `ocrfleet_component_faults_total{component}`;
//! - a warning when a fault opens, then at most one every 30 s while it lasts (with how often it
//!   was seen), and an info line when it clears.
//!
//! **Liveness** ([`Health::stuck`], `/healthz`): a worker that has work pending and has made no
//! progress for `--liveness-timeout` (nothing finished, committed or dead-lettered, and no
//! fault being reported, which a component that is retrying does every few seconds) is stuck
//! in a way no fault explains, and `/healthz` fails so that Kubernetes restarts it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::failure::{truncate, Component};

/// How often a lasting fault is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

struct Fault {
    reason: String,
    since: Instant,
    seen: u64,
    logged_at: Instant,
    logged_seen: u64,
}

/// Shared health state. Cheap to query from hot loops (`intake_blocked` is one atomic load).
pub struct Health {
    faults: Mutex<BTreeMap<(Component, &'static str), Fault>>,
    blocking: AtomicUsize,
    started: AtomicBool,
    /// What start-up is doing, for `/readyz` until it is done.
    phase: Mutex<&'static str>,
    /// Messages taken and not finished (published by the Kafka source).
    pending: AtomicUsize,
    /// Of those, records held for an image host that does not answer: each has its own bound
    /// (`--host-hold`), so they are not stuck work.
    held: AtomicUsize,
    /// The last progress: a message finished, a fault reported, or nothing pending.
    progress_at: Mutex<Instant>,
    liveness_timeout: Mutex<Option<Duration>>,
    up: IntGaugeVec,
    count: IntCounterVec,
}

impl Health {
    /// A health state whose metrics are registered in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Health {
        let up = IntGaugeVec::new(
            Opts::new(
                "ocrfleet_component_up",
                "1 when the component (broker, elasticsearch, dead_letter, engine) has no open fault",
            ),
            &["component"],
        )
        .expect("valid metric");
        let count = IntCounterVec::new(
            Opts::new(
                "ocrfleet_component_faults_total",
                "Infrastructure faults seen, by component (each failed request or probe counts)",
            ),
            &["component"],
        )
        .expect("valid metric");
        for c in Component::ALL {
            up.with_label_values(&[c.as_str()]).set(1);
            count.with_label_values(&[c.as_str()]);
        }
        let _ = registry.register(Box::new(up.clone()));
        let _ = registry.register(Box::new(count.clone()));
        Health {
            faults: Mutex::new(BTreeMap::new()),
            blocking: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            phase: Mutex::new("not ready yet"),
            pending: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            progress_at: Mutex::new(Instant::now()),
            liveness_timeout: Mutex::new(None),
            up,
            count,
        }
    }

    /// Reports a fault of `component` seen by `source`.
    pub fn fault(
        &self,
        component: Component,
        source: &'static str,
        reason: impl std::fmt::Display,
    ) {
        let reason = truncate(&reason.to_string(), 500);
        self.count.with_label_values(&[component.as_str()]).inc();
        // A fault being reported is progress of a kind (the worker is not stuck, it waits for
        // something outside it), except an egress outage: a fresh process, maybe on another
        // node, may well get out where this one cannot, so it must not keep /healthz green.
        if component != Component::ImageHosts {
            self.progress();
        }
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match faults.get_mut(&(component, source)) {
            Some(f) => {
                f.seen += 1;
                f.reason = reason;
                if now.duration_since(f.logged_at) >= LOG_EVERY {
                    tracing::warn!(%component, source, reason = %f.reason, for_s = f.since.elapsed().as_secs(), seen = f.seen - f.logged_seen, "infrastructure fault continues; intake stays paused");
                    f.logged_at = now;
                    f.logged_seen = f.seen;
                }
            }
            None => {
                tracing::warn!(%component, source, %reason, "infrastructure fault: pausing intake and retrying (nothing is dead-lettered or committed meanwhile)");
                faults.insert(
                    (component, source),
                    Fault {
                        reason,
                        since: now,
                        seen: 1,
                        logged_at: now,
                        logged_seen: 1,
                    },
                );
                if component.blocks_intake() {
                    self.blocking.fetch_add(1, Ordering::SeqCst);
                }
                self.up.with_label_values(&[component.as_str()]).set(0);
            }
        }
    }

    /// Something moved: a message finished (indexed, superseded, dead-lettered or dropped).
    pub fn progress(&self) {
        *self.progress_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Messages taken and not finished now; nothing pending counts as progress.
    pub fn set_pending(&self, n: usize) {
        self.pending.store(n, Ordering::Relaxed);
        if n == 0 {
            self.progress();
        }
    }

    /// Records held for their image host now (see [`crate::fetch::hosts`]).
    pub fn set_held(&self, n: usize) {
        self.held.store(n, Ordering::Relaxed);
    }

    /// Sets `--liveness-timeout` (none: never stuck).
    pub fn set_liveness_timeout(&self, timeout: Duration) {
        *self
            .liveness_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(timeout);
    }

    /// Why the worker is stuck, if it is: work pending and no progress for longer than the
    /// liveness time-out (see the module documentation).
    pub fn stuck(&self) -> Option<String> {
        let timeout = (*self
            .liveness_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()))?;
        // An egress outage that lasts: a fresh process, maybe on another node, may get out.
        let egress = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((c, _), _)| *c == Component::ImageHosts)
            .map(|(_, f)| f.since.elapsed())
            .max();
        if let Some(open) = egress.filter(|open| *open > timeout) {
            return Some(format!(
                "stuck: the image hosts' egress outage has lasted {} s (--liveness-timeout {}); a fresh process may get out",
                open.as_secs(),
                humantime::format_duration(timeout)
            ));
        }
        let pending = self
            .pending
            .load(Ordering::Relaxed)
            .saturating_sub(self.held.load(Ordering::Relaxed));
        let quiet = self
            .progress_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        (pending > 0 && quiet > timeout).then(|| {
            format!(
                "stuck: {pending} message(s) pending and no progress for {} s (nothing finished or committed, no fault reported; --liveness-timeout {})",
                quiet.as_secs(),
                humantime::format_duration(timeout)
            )
        })
    }

    /// Reports that `source` sees `component` working again.
    pub fn clear(&self, component: Component, source: &'static str) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = faults.remove(&(component, source)) {
            tracing::info!(%component, source, after_s = f.since.elapsed().as_secs_f64(), seen = f.seen, "infrastructure fault cleared");
            if component.blocks_intake() {
                self.blocking.fetch_sub(1, Ordering::SeqCst);
            }
            if !faults.keys().any(|(c, _)| *c == component) {
                self.up.with_label_values(&[component.as_str()]).set(1);
            }
        }
    }

    /// Whether `component` has no open fault.
    pub fn is_up(&self, component: Component) -> bool {
        let faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        !faults.keys().any(|(c, _)| *c == component)
    }

    /// True while a fault that stops intake is open.
    pub fn intake_blocked(&self) -> bool {
        self.blocking.load(Ordering::SeqCst) > 0
    }

    /// Says what start-up is doing now (shown by `/readyz` until [`Health::set_started`]).
    pub fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    /// Marks start-up complete (engine loaded, index template in place, topics checked).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Ready: started and no open fault.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::SeqCst)
            && self
                .faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }

    /// A text report for `/readyz`: one line per component, with the open faults' reasons.
    pub fn describe(&self) -> String {
        let faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::new();
        if !self.started.load(Ordering::SeqCst) {
            let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str(&format!("starting: {phase}\n"));
        }
        for c in Component::ALL {
            let open: Vec<String> = faults
                .iter()
                .filter(|((fc, _), _)| *fc == c)
                .map(|((_, src), f)| {
                    format!(
                        "{src}: {} (for {:.0} s, seen {}x)",
                        f.reason,
                        f.since.elapsed().as_secs_f64(),
                        f.seen
                    )
                })
                .collect();
            if open.is_empty() {
                s.push_str(&format!("{c}: up\n"));
            } else {
                s.push_str(&format!("{c}: down: {}\n", open.join("; ")));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_open_and_clear_per_source() {
        let h = Health::new(&prometheus::Registry::new());
        h.set_started();
        assert!(h.ready() && !h.intake_blocked());
        h.fault(Component::Elasticsearch, "bulk", "HTTP 401");
        h.fault(Component::Elasticsearch, "probe", "HTTP 401");
        assert!(!h.ready() && h.intake_blocked());
        assert!(h.describe().contains("elasticsearch: down: bulk: HTTP 401"));
        h.clear(Component::Elasticsearch, "probe");
        assert!(!h.is_up(Component::Elasticsearch), "bulk still failing");
        h.clear(Component::Elasticsearch, "bulk");
        assert!(h.is_up(Component::Elasticsearch) && h.ready() && !h.intake_blocked());
        h.clear(Component::Elasticsearch, "bulk"); // clearing twice is harmless
        assert!(!h.intake_blocked());
    }

    #[test]
    fn broker_faults_do_not_block_intake_but_do_block_readiness() {
        let h = Health::new(&prometheus::Registry::new());
        h.set_started();
        h.fault(Component::Broker, "connection", "all brokers down");
        assert!(!h.intake_blocked());
        assert!(!h.ready());
    }

    #[test]
    fn stuck_only_with_work_pending_and_nothing_moving() {
        let h = Health::new(&prometheus::Registry::new());
        assert_eq!(h.stuck(), None, "no time-out set");
        h.set_liveness_timeout(Duration::from_millis(50));
        h.set_pending(3);
        std::thread::sleep(Duration::from_millis(80));
        let why = h.stuck().expect("3 pending, 80 ms without progress");
        assert!(why.contains("3 message(s) pending"), "{why}");
        h.progress();
        assert_eq!(h.stuck(), None, "a message finished");
        std::thread::sleep(Duration::from_millis(80));
        assert!(h.stuck().is_some());
        h.set_held(3);
        assert_eq!(
            h.stuck(),
            None,
            "records held for their host have their own bound"
        );
        h.set_held(0);
        h.fault(Component::Elasticsearch, "bulk", "HTTP 503");
        assert_eq!(h.stuck(), None, "a fault being reported is not silence");
        h.fault(Component::ImageHosts, "egress", "no host answers");
        std::thread::sleep(Duration::from_millis(80));
        let why = h
            .stuck()
            .expect("an egress outage is no excuse: a restart may help");
        assert!(why.contains("egress outage"), "{why}");
        h.clear(Component::ImageHosts, "egress");
        std::thread::sleep(Duration::from_millis(80));
        h.set_pending(0);
        assert_eq!(h.stuck(), None, "nothing pending");
    }

    #[test]
    fn not_ready_before_start() {
        let h = Health::new(&prometheus::Registry::new());
        assert!(!h.ready());
        assert!(h.describe().starts_with("starting"));
    }
}
