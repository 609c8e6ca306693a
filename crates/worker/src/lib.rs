//! # ocrfleet-worker
//!
//! `ocrfleet worker`: a stateless consumer-group member that drains an image-URL topic into an
//! Elasticsearch index, at least once, with every failure on a dead-letter topic.
//! One module per stage: [`source`] (Kafka), [`fetch`] (HTTP + SSRF guard), the OCR stage in
//! [`pipeline`], [`sink`] (Elasticsearch), [`dlq`] (dead letters) and [`offsets`] (commits).

pub mod config;
pub mod dlq;
pub mod envelope;
pub mod fetch;
pub mod message;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod produce;
pub mod retry;
pub mod sink;
pub mod source;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ocrfleet_ocr::EngineHandle;
use tokio::sync::mpsc;

pub use config::{WorkerArgs, WorkerConfig};

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the worker until SIGTERM/SIGINT (or `--exit-when-idle`), then drains, commits, leaves
/// the group and returns.
pub async fn run(cfg: WorkerConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let metrics = metrics::Metrics::new();
    let health = Arc::new(metrics::Health::default());
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = metrics::serve(cfg.http_addr, metrics.clone(), health.clone(), async {
        let _ = http_stop_rx.await;
    })
    .await?;
    tracing::info!(%addr, worker = %cfg.worker_id, topic = %cfg.kafka.topic, dlq = %cfg.kafka.dlq_topic, index = %cfg.es.index, "ocrfleet worker starting");

    let engine_cfg = cfg.engine.clone();
    let engine = tokio::task::spawn_blocking(move || EngineHandle::spawn(engine_cfg, 2))
        .await?
        .context("cannot start the OCR engine")?;
    health.engine_up.store(true, Ordering::Relaxed);

    let es = sink::EsSink::new(&cfg.es, metrics.clone())?;
    let mut delays = retry::unbounded(Duration::from_millis(500));
    loop {
        match es.ensure_template().await {
            Ok(()) => break,
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %format!("{e:#}"), url = %cfg.es.url, retry_in = ?delay, "Elasticsearch not ready; index template not set yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {},
                    _ = termination() => anyhow::bail!("stopped before Elasticsearch became ready"),
                }
            }
        }
    }
    health.es_up.store(true, Ordering::Relaxed);
    let dlq = dlq::DeadLetter::new(&cfg, metrics.clone())?;
    let fetcher = fetch::Fetcher::new(cfg.fetch.clone())?;

    let tracker = Arc::new(Mutex::new(offsets::OffsetTracker::default()));
    let control = Arc::new(source::SourceControl::default());
    let consumer = source::consumer(
        &cfg,
        source::SourceContext {
            topic: cfg.kafka.topic.clone(),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        },
    )?;

    let (chunk_tx, chunk_rx) = mpsc::channel(1);
    let (ready_tx, ready_rx) = mpsc::channel(cfg.ocr_batch * 2);
    let (out_tx, out_rx) = mpsc::channel(cfg.es.bulk_docs * 2);

    let source_cfg = cfg.clone();
    let source_control = control.clone();
    let source = std::thread::Builder::new()
        .name("kafka-source".into())
        .spawn(move || source::run(consumer, &source_cfg, chunk_tx, source_control))?;

    let mut stages = tokio::task::JoinSet::new();
    stages.spawn(pipeline::fetch_stage(
        chunk_rx,
        cfg.clone(),
        fetcher,
        ready_tx,
        out_tx.clone(),
        metrics.clone(),
    ));
    stages.spawn(pipeline::ocr_stage(
        ready_rx,
        cfg.clone(),
        engine.clone(),
        out_tx,
        metrics.clone(),
    ));
    let sink = tokio::spawn(pipeline::sink_stage(
        out_rx,
        cfg.clone(),
        es.clone(),
        dlq,
        tracker.clone(),
        metrics.clone(),
    ));
    let side = [
        tokio::spawn(pipeline::busy_meter(engine.clone(), metrics.clone())),
        tokio::spawn(pipeline::es_health(es, health.clone())),
    ];

    // Wait for a stop request: a signal, or the source deciding it is idle.
    tokio::select! {
        _ = termination() => {
            tracing::info!("termination signal received");
            control.stop.store(true, Ordering::Relaxed);
        }
        _ = async { while !control.stop.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(100)).await; } } => {}
    }
    // The source stops taking chunks; the stages drain. Whatever is not finished within the
    // grace period is dropped uncommitted.
    match tokio::time::timeout(cfg.shutdown_grace, sink).await {
        Ok(_) => tracing::info!("in-flight work finished"),
        Err(_) => {
            tracing::warn!(grace = ?cfg.shutdown_grace, "grace period over; dropping unfinished work (it will be redelivered)");
        }
    }
    stages.abort_all();
    control.drained.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || source.join()).await?;
    for s in side {
        s.abort();
    }
    let _ = http_stop_tx.send(());
    match joined {
        Ok(r) => r,
        Err(_) => anyhow::bail!("kafka source thread panicked"),
    }
}
