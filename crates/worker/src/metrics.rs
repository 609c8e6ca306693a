//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{
    exponential_buckets, Counter, CounterVec, Gauge, Histogram, HistogramOpts, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the worker exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub consumed: IntCounter,
    pub indexed: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub chunk_size: Histogram,
    pub batch_size: HistogramVec,
    pub stage_seconds: HistogramVec,
    pub busy_ratio: Gauge,
    pub device_busy_ratio: Gauge,
    pub device_seconds: Counter,
    pub engine_stage_seconds: CounterVec,
    pub engine_warmup_seconds: Gauge,
    pub build_info: IntGaugeVec,
    pub engine_sessions: IntGauge,
    pub bytes_downloaded: IntCounter,
    pub lag: IntGaugeVec,
    pub rebalances: IntCounter,
    pub in_flight: IntGauge,
    pub queue_depth: IntGaugeVec,
    pub fetch_retries: IntCounter,
    pub es_retries: IntCounter,
    pub superseded: IntCounter,
    pub dead_letters_minimal: IntCounter,
    pub budget_used: IntGauge,
    pub budget_waiting: IntGauge,
    pub end_to_end: Histogram,
    pub hosts_open: IntGauge,
    pub records_held: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let sizes = vec![
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0, 2000.0,
        ];
        let m = Metrics {
            consumed: IntCounter::new("ocrfleet_messages_consumed_total", "Messages taken from Kafka").unwrap(),
            indexed: IntCounter::new("ocrfleet_messages_indexed_total", "Messages indexed into Elasticsearch").unwrap(),
            dead_lettered: IntCounterVec::new(
                Opts::new("ocrfleet_messages_dead_lettered_total", "Messages sent to the dead-letter topic, by failing stage"),
                &["stage"],
            )
            .unwrap(),
            chunk_size: Histogram::with_opts(
                HistogramOpts::new("ocrfleet_chunk_size", "Messages per chunk taken from Kafka").buckets(sizes.clone()),
            )
            .unwrap(),
            batch_size: HistogramVec::new(
                HistogramOpts::new("ocrfleet_batch_size", "Items per batch, by stage (ocr: images per engine call; index: docs per bulk)")
                    .buckets(sizes),
                &["stage"],
            )
            .unwrap(),
            stage_seconds: HistogramVec::new(
                HistogramOpts::new("ocrfleet_stage_seconds", "Latency per stage call (fetch: per image; decode: per image; ocr: per engine call; journal: the crash-loop journal's commit before an engine call; index: per bulk; dlq: per record)")
                    .buckets(exponential_buckets(0.001, 2.0, 16).unwrap()),
                &["stage"],
            )
            .unwrap(),
            busy_ratio: Gauge::new("ocrfleet_inference_busy_ratio", "Fraction of wall time the inference thread was busy, over the last 10 s").unwrap(),
            device_busy_ratio: Gauge::new("ocrfleet_device_busy_ratio", "Fraction of wall time spent inside ONNX Runtime's run (all models), over the last 10 s: the device's busy fraction").unwrap(),
            device_seconds: Counter::new("ocrfleet_device_seconds_total", "Seconds spent inside ONNX Runtime's run (all models)").unwrap(),
            engine_stage_seconds: CounterVec::new(
                Opts::new("ocrfleet_engine_stage_seconds_total", "Engine work per stage (det, crop, cls, rec), summed over images and host threads: each image's share of its batches' tensor fill and model run, plus its own post-processing"),
                &["stage"],
            )
            .unwrap(),
            build_info: IntGaugeVec::new(
                Opts::new("ocrfleet_build_info", "Always 1: the worker's version, build features, ONNX Runtime version, model set, fp16 and device"),
                &["version", "features", "onnxruntime", "models", "fp16", "device"],
            )
            .unwrap(),
            engine_warmup_seconds: Gauge::new("ocrfleet_engine_warmup_seconds", "Seconds the engine spent at start making and running every input shape once (0 on CPU, where shapes share one session)").unwrap(),
            engine_sessions: IntGauge::new("ocrfleet_engine_sessions", "ONNX Runtime sessions alive after warm-up, all models (one per input shape on CUDA)").unwrap(),
            bytes_downloaded: IntCounter::new("ocrfleet_downloaded_bytes_total", "Image bytes downloaded").unwrap(),
            lag: IntGaugeVec::new(Opts::new("ocrfleet_consumer_lag", "Consumer lag per partition (librdkafka statistics)"), &["topic", "partition"]).unwrap(),
            rebalances: IntCounter::new("ocrfleet_rebalances_total", "Consumer group rebalances seen (assign or revoke)").unwrap(),
            in_flight: IntGauge::new("ocrfleet_messages_in_flight", "Messages received and not yet indexed or dead-lettered").unwrap(),
            queue_depth: IntGaugeVec::new(
                Opts::new("ocrfleet_queue_depth", "Items waiting in each bounded queue between the pipeline's stages, sampled every second: chunks (Kafka source → prepare, in chunks), ready (prepare → OCR, in images), outcomes (prepare and OCR → Elasticsearch sink, in messages)"),
                &["queue"],
            )
            .unwrap(),
            fetch_retries: IntCounter::new("ocrfleet_fetch_retries_total", "Download attempts beyond the first").unwrap(),
            es_retries: IntCounter::new("ocrfleet_es_retries_total", "Bulk requests retried (after a request-level failure or items Elasticsearch asked to retry)").unwrap(),
            superseded: IntCounter::new("ocrfleet_messages_superseded_total", "Messages not written because a newer record's document with the same id was already indexed (external versioning)").unwrap(),
            dead_letters_minimal: IntCounter::new("ocrfleet_dead_letters_minimal_total", "Dead letters sent without key and value because Kafka refused the full record as too large").unwrap(),
            budget_used: IntGauge::new("ocrfleet_memory_budget_used_bytes", "Bytes of the memory budget held now: decodes in progress and decoded pages waiting for the engine").unwrap(),
            budget_waiting: IntGauge::new("ocrfleet_memory_budget_waiting", "Decodes waiting for the memory budget now").unwrap(),
            end_to_end: Histogram::with_opts(
                HistogramOpts::new("ocrfleet_end_to_end_seconds", "From the Kafka record's timestamp to its document indexed (records with a timestamp)")
                    .buckets(exponential_buckets(0.05, 2.0, 18).unwrap()),
            )
            .unwrap(),
            hosts_open: IntGauge::new("ocrfleet_fetch_hosts_open", "Image hosts whose breaker is open now: they did not answer, and their records are held without download slots").unwrap(),
            records_held: IntGauge::new("ocrfleet_fetch_records_held", "Records held now for an image host that does not answer (each for at most --host-hold)").unwrap(),
            registry,
        };
        for c in [
            Box::new(m.consumed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.indexed.clone()),
            Box::new(m.dead_lettered.clone()),
            Box::new(m.chunk_size.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.stage_seconds.clone()),
            Box::new(m.busy_ratio.clone()),
            Box::new(m.device_busy_ratio.clone()),
            Box::new(m.device_seconds.clone()),
            Box::new(m.engine_stage_seconds.clone()),
            Box::new(m.engine_warmup_seconds.clone()),
            Box::new(m.build_info.clone()),
            // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
            Box::new(m.engine_sessions.clone()),
            Box::new(m.bytes_downloaded.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.rebalances.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.fetch_retries.clone()),
            Box::new(m.es_retries.clone()),
            Box::new(m.superseded.clone()),
            Box::new(m.dead_letters_minimal.clone()),
            Box::new(m.budget_used.clone()),
            Box::new(m.budget_waiting.clone()),
            Box::new(m.end_to_end.clone()),
            Box::new(m.hosts_open.clone()),
            Box::new(m.records_held.clone()),
        ] {
            m.registry.register(c).expect("unique metric names");
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<crate::health::Health>,
}

/// Serves `/metrics`, `/healthz` (the process answers and is not stuck, see
/// [`crate::health::Health::stuck`]) and `/readyz` (start-up complete and no
/// open infrastructure fault; the body lists each component and why it is down) until
/// `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<crate::health::Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                match s.health.stuck() {
                    None => (StatusCode::OK, "ok\n".to_owned()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                let code = if s.health.ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, s.health.describe())
            }),
        )
        .with_state(AppState { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(local)
}
