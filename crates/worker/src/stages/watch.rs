//! The pipeline's side tasks: meters (engine and device busy, queue depths), probes
//! (Elasticsearch), and watches (the engine's thread, long memory-budget waits) that report to
//! `/readyz`, `/healthz` and the metrics.

use std::time::{Duration, Instant};

use ocrfleet_ocr::EngineHandle;
use tokio::sync::mpsc;

use super::Outcome;
use crate::budget::Budget;
use crate::envelope::Envelope;
use crate::es::client::EsClient;
use crate::failure::Component;
use crate::health::Health;
use crate::metrics::Metrics;

/// Exports the engine thread's and the device's busy fractions (over 10 s windows) and the
/// device-seconds counter (every second).
pub async fn busy_meter(engine: EngineHandle, metrics: Metrics) {
    let (mut last_busy, mut last_device) = (engine.busy_seconds(), engine.device_seconds());
    let mut counted = last_device;
    let mut at = Instant::now();
    loop {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let device = engine.device_seconds();
            metrics.device_seconds.inc_by((device - counted).max(0.0));
            counted = device;
        }
        let (busy, device) = (engine.busy_seconds(), engine.device_seconds());
        let wall = at.elapsed().as_secs_f64();
        metrics
            .busy_ratio
            .set(((busy - last_busy) / wall).clamp(0.0, 1.0));
        metrics
            .device_busy_ratio
            .set(((device - last_device) / wall).clamp(0.0, 1.0));
        (last_busy, last_device) = (busy, device);
        at = Instant::now();
    }
}

/// Weak handles on the pipeline's bounded queues (they keep no queue open), for
/// `ocrfleet_queue_depth{queue}`.
pub struct Queues {
    pub chunks: mpsc::WeakSender<Vec<Envelope>>,
    pub ready: mpsc::WeakSender<super::prepare::Ready>,
    pub outcomes: mpsc::WeakSender<Outcome>,
}

/// Items waiting in a bounded queue: its capacity less the free slots (0 once it is closed).
fn depth<T>(queue: &mpsc::WeakSender<T>) -> i64 {
    queue
        .upgrade()
        .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as i64)
}

/// Exports each queue's depth every second: where a backlog waits (full `ready` and an idle
/// `outcomes`: the engine is the bottleneck; a full `outcomes`: Elasticsearch is).
pub async fn queue_meter(queues: Queues, metrics: Metrics) {
    loop {
        for (name, n) in [
            ("chunks", depth(&queues.chunks)),
            ("ready", depth(&queues.ready)),
            ("outcomes", depth(&queues.outcomes)),
        ] {
            metrics.queue_depth.with_label_values(&[name]).set(n);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Probes Elasticsearch every 5 s for `/readyz` (with the documented least privileges), so an
/// idle worker also notices an outage or an expired key.
pub async fn es_probe(es: EsClient, health: std::sync::Arc<Health>) {
    loop {
        match es.probe().await {
            Ok(()) => health.clear(Component::Elasticsearch, "probe"),
            Err(reason) => health.fault(Component::Elasticsearch, "probe", reason),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Checks the engine thread every second: a worker whose engine is gone must not stay up.
pub async fn engine_watch(
    engine: EngineHandle,
    health: std::sync::Arc<Health>,
) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !engine.is_alive() {
            health.fault(Component::Engine, "thread", "the engine thread has stopped");
            anyhow::bail!("the OCR engine thread has stopped");
        }
    }
}

/// How long a decode may wait for the memory budget before that is reported as a fault.
pub const BUDGET_WAIT_FAULT: Duration = Duration::from_secs(120);

/// Exports the memory budget's use every second, and reports a `memory_budget` fault while a
/// decode has waited longer than [`BUDGET_WAIT_FAULT`]: the budget cannot deadlock (see
/// [`crate::budget`]), so a wait that long means the pages held are not leaving the engine.
pub async fn budget_watch(budget: Budget, metrics: Metrics, health: std::sync::Arc<Health>) {
    loop {
        let (waiting, oldest) = budget.waiting();
        metrics.budget_used.set(budget.used() as i64);
        metrics.budget_waiting.set(waiting as i64);
        if oldest >= BUDGET_WAIT_FAULT {
            health.fault(
                Component::MemoryBudget,
                "wait",
                format!(
                    "{waiting} decode(s) waiting for the memory budget, the longest for {} s: the {} MiB held are not leaving the engine (see ocrfleet_queue_depth)",
                    oldest.as_secs(),
                    budget.used() >> 20
                ),
            );
        } else {
            health.clear(Component::MemoryBudget, "wait");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Fetches `--fetch-probe-url` every [`crate::fetch::hosts::PROBE_URL_EVERY`]: while it fails,
/// the egress outage is open (see [`crate::fetch::hosts`]). Without a URL it does nothing.
pub async fn egress_probe(
    fetcher: crate::fetch::Fetcher,
    url: Option<String>,
    hosts: crate::fetch::hosts::Hosts,
) {
    let Some(url) = url else { return };
    let shown = crate::fetch::redact_url(&url);
    loop {
        match fetcher.fetch(&url).await {
            Ok(_) => hosts.probe_url(true),
            Err((e, _)) => {
                tracing::debug!(url = %shown, error = %e, "the egress probe URL fails");
                hosts.probe_url(false);
            }
        }
        tokio::time::sleep(crate::fetch::hosts::PROBE_URL_EVERY).await;
    }
}
