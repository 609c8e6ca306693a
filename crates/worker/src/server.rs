//! Running one worker: start-up (topics, engine, PDF renderer, Elasticsearch), the pipeline's
//! tasks, and supervising them until a stop request or a fatal fault, then draining within the
//! grace period. The caller owns the shutdown signal ([`run`] takes it as a future, as
//! mini-redis's `server::run` does), so tests can stop a worker without a real signal.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::FutureExt;
use ocrfleet_ocr::EngineHandle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WorkerConfig;
use crate::envelope::{Done, Envelope};
use crate::failure::{Component, Stage};
use crate::{budget, es, fetch, health, kafka, message, metrics, retry, stages, Summary};

/// Runs the worker until `shutdown` resolves (or `--exit-when-idle`), then drains within the
/// grace period, commits, leaves the group and returns what it did. Returns `Err` on a fault
/// that cannot clear inside the process (engine or source thread gone, engine down past
/// `--engine-fault-timeout`), so that the process exits non-zero and is restarted.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let cfg = Arc::new(cfg);
    let metrics = metrics::Metrics::new();
    let health = Arc::new(health::Health::new(&metrics.registry));
    let http_stop = CancellationToken::new();
    let addr = metrics::serve(
        cfg.http_addr,
        metrics.clone(),
        health.clone(),
        http_stop.clone().cancelled_owned(),
    )
    .await?;
    tracing::info!(%addr, worker = %cfg.worker_id, topic = %cfg.kafka.topic, dlq = %cfg.kafka.dlq_topic, es = %fetch::redact_url(&cfg.es.url), index = %cfg.es.index, "ocrfleet worker starting");
    tokio::pin!(shutdown);
    let result = run_inner(&cfg, &metrics, &health, &mut shutdown).await;
    http_stop.cancel();
    let summary = Summary {
        consumed: metrics.consumed.get(),
        indexed: metrics.indexed.get(),
        superseded: metrics.superseded.get(),
        dead_lettered: Stage::ALL
            .iter()
            .map(|s| {
                (
                    *s,
                    metrics.dead_lettered.with_label_values(&[s.as_str()]).get(),
                )
            })
            .collect(),
        wall: started.elapsed(),
    };
    match &result {
        Ok(()) => tracing::info!("worker stopped: {summary}"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "worker stopped on a fatal fault: {summary}")
        }
    }
    result.map(|()| summary)
}

/// The worker's life in three steps: start-up checks, the pipeline's tasks, then supervising
/// them until a stop request or a fatal fault (and draining on a stop).
async fn run_inner(
    cfg: &Arc<WorkerConfig>,
    metrics: &metrics::Metrics,
    health: &Arc<health::Health>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<()> {
    let Some(started) = start_up(cfg, metrics, health, shutdown).await? else {
        anyhow::bail!("stopped before Elasticsearch became ready");
    };
    let pipeline = Pipeline::spawn(cfg, started, metrics, health)?;
    health.set_started();
    tracing::info!("worker ready");
    pipeline.supervise(cfg.shutdown_grace, shutdown).await
}

/// What start-up made: a warmed-up engine, the PDF renderers (probed) and an Elasticsearch
/// client whose index is ready.
struct Started {
    engine: EngineHandle,
    pdf: ocrfleet_pdf::Renderers,
    es: es::client::EsClient,
}

/// Fails fast on what cannot fix itself (the topics, the models); waits for what can
/// (Elasticsearch), reporting it as a fault meanwhile. `None`: stopped while waiting.
async fn start_up(
    cfg: &Arc<WorkerConfig>,
    metrics: &metrics::Metrics,
    health: &Arc<health::Health>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<Started>> {
    let kafka_cfg = cfg.kafka.clone();
    let topics = [cfg.kafka.topic.clone(), cfg.kafka.dlq_topic.clone()];
    let startup = cfg.startup_timeout;
    health.set_phase("checking the Kafka topics");
    tokio::task::spawn_blocking(move || {
        kafka::check_topics(&kafka_cfg, &[&topics[0], &topics[1]], startup)
    })
    .await??;
    let engine_cfg = cfg.engine.clone();
    let lanes = cfg.engine_lanes();
    let simulated = cfg.test_device_costs;
    health.set_phase("loading the OCR models and warming up every input shape");
    let engine = tokio::task::spawn_blocking(move || {
        EngineHandle::spawn_on(engine_cfg, lanes, 2 * lanes, simulated)
    })
    .await?
    .context("cannot start the OCR engine")?;
    let warm = engine.warm_up();
    metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            if ocrfleet_ocr::CUDA_BUILT { "cuda" } else { "" },
            &ocrfleet_ocr::runtime_version(),
            cfg.engine.model_set.version(),
            if cfg.engine.fp16 { "true" } else { "false" },
            engine.provider(),
        ])
        .set(1);
    metrics.engine_warmup_seconds.set(warm.seconds);
    metrics.engine_sessions.set(warm.sessions as i64);
    health.set_phase("starting a PDF renderer and reading a test page");
    let pdf = ocrfleet_pdf::Renderers::new(ocrfleet_pdf::RendererConfig {
        program: cfg.pdf_program.0.clone(),
        args: cfg.pdf_program.1.clone(),
        library: cfg.pdf.library.clone(),
        children: cfg.pdf.renderers,
        memory_limit: cfg.pdf.memory,
        test_faults: cfg.pdf.test_faults,
    });
    pdf.probe().await.with_context(|| {
        format!(
            "cannot read PDFs (PDFium at {}; models/fetch.sh installs it)",
            cfg.pdf.library.display()
        )
    })?;
    health.set_phase("preparing the Elasticsearch index (template, write alias)");
    let es = es::client::EsClient::new(&cfg.es, metrics.clone())?;
    let mut delays = retry::unbounded(Duration::from_millis(500));
    loop {
        match es.prepare(cfg.es.manage_template).await {
            Ok(()) => break,
            Err(e) => {
                health.fault(Component::Elasticsearch, "template", format!("{e:#}"));
                tokio::select! {
                    _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))) => {},
                    _ = &mut *shutdown => return Ok(None),
                }
            }
        }
    }
    health.clear(Component::Elasticsearch, "template");
    Ok(Some(Started { engine, pdf, es }))
}

/// The running pipeline: the Kafka source on its own thread, the prepare, OCR and sink stages,
/// and the side tasks (meters, probes, the engine watch).
struct Pipeline {
    source: std::thread::JoinHandle<()>,
    source_end: SourceEndRx,
    ocr: futures::future::Fuse<tokio::task::JoinHandle<anyhow::Result<()>>>,
    sink: futures::future::Fuse<tokio::task::JoinHandle<anyhow::Result<()>>>,
    engine_watch: futures::future::Fuse<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Stopped at the end, whatever they are doing.
    aborts: Vec<tokio::task::AbortHandle>,
    /// Stop taking new work (a stop request, an idle exit or a fatal fault).
    stop: CancellationToken,
    /// The stages have drained (or the grace period is over): the source commits and leaves.
    drained: CancellationToken,
}

/// The source's channels: chunks out, finished events and engine journals in.
type SourceChannels = (
    mpsc::Sender<Vec<Envelope>>,
    mpsc::UnboundedReceiver<Done>,
    (
        kafka::committer::Commits,
        mpsc::UnboundedReceiver<kafka::committer::Job>,
    ),
);

/// Where the source thread's end is reported.
type SourceEndRx = oneshot::Receiver<anyhow::Result<kafka::source::SourceEnd>>;

/// What several stages share: the meters, the health, the assignment, the memory budget, the
/// image hosts' board and the downloader. Each stage's settings are made from it and the
/// worker's configuration once, here.
struct Shared {
    metrics: metrics::Metrics,
    health: Arc<health::Health>,
    assignment: kafka::Assignment,
    budget: budget::Budget,
    hosts: fetch::hosts::Hosts,
    fetcher: fetch::Fetcher,
    replay_key: Option<message::ReplayKey>,
}

impl Shared {
    fn new(
        cfg: &WorkerConfig,
        metrics: &metrics::Metrics,
        health: &Arc<health::Health>,
    ) -> anyhow::Result<Shared> {
        Ok(Shared {
            metrics: metrics.clone(),
            health: health.clone(),
            assignment: kafka::Assignment::default(),
            budget: budget::Budget::new(cfg.memory_budget),
            hosts: fetch::hosts::Hosts::new(cfg.fetch.hosts, health.clone())
                .with_gauges(metrics.hosts_open.clone(), metrics.records_held.clone()),
            fetcher: fetch::Fetcher::new(cfg.fetch.clone())?,
            replay_key: cfg
                .replay_key
                .as_ref()
                .map(|k| message::ReplayKey::new(k.expose().as_bytes())),
        })
    }

    /// The prepare stage: downloads, PDFs, decoding.
    fn prepare(
        &self,
        cfg: &WorkerConfig,
        pdf: ocrfleet_pdf::Renderers,
    ) -> stages::prepare::Prepare {
        stages::prepare::Prepare {
            fetcher: self.fetcher.clone(),
            hosts: self.hosts.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.fetch.concurrency.max(1))),
            budget: self.budget.clone(),
            max_pixels: cfg.engine.max_pixels,
            max_pages: cfg.engine.max_pages,
            max_headers: cfg.max_headers,
            attempts: cfg.fetch.attempts,
            assignment: Some(self.assignment.clone()),
            pdfs: stages::prepare::Pdfs {
                renderers: pdf,
                cfg: cfg.pdf.clone(),
            },
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            test_panic: cfg.test_prepare_panic.clone(),
        }
    }

    /// The OCR stage's settings; the hang deadline follows the engine's slowest warm-up run
    /// unless `--engine-timeout` is given.
    fn ocr_settings(
        &self,
        cfg: &WorkerConfig,
        engine: &EngineHandle,
        journal: kafka::committer::JournalTx,
    ) -> stages::ocr::OcrSettings {
        stages::ocr::OcrSettings {
            batch: cfg.ocr_batch,
            fault_timeout: cfg.engine_fault_timeout,
            call_timeout: stages::ocr::OcrSettings::call_timeout(
                cfg.engine_timeout,
                engine.warm_up().slowest_run,
            ),
            topic: cfg.kafka.topic.clone(),
            worker_id: cfg.worker_id.clone(),
            journal: (cfg.crash_loop_attempts > 0).then_some(journal),
            replay_key: self.replay_key.clone(),
            assignment: Some(self.assignment.clone()),
        }
    }

    /// The sink: bulk requests to Elasticsearch, dead letters to Kafka.
    fn sink(
        &self,
        cfg: &WorkerConfig,
        es: es::client::EsClient,
        done: mpsc::UnboundedSender<Done>,
    ) -> anyhow::Result<stages::sink::Sink> {
        Ok(stages::sink::Sink {
            indexer: stages::sink::Indexer {
                api: es,
                health: self.health.clone(),
                metrics: self.metrics.clone(),
                max_docs: cfg.es.bulk_docs,
                max_bytes: cfg.es.bulk_bytes,
                first_backoff: Duration::from_millis(200),
            },
            dlq: kafka::dlq::DeadLetter::new(
                &cfg.kafka,
                &cfg.worker_id,
                self.replay_key.clone(),
                self.metrics.clone(),
            )?,
            assignment: self.assignment.clone(),
            done,
            linger: stages::sink::LINGER,
        })
    }

    /// The Kafka source on its own OS thread; its end comes back on the receiver.
    fn spawn_source(
        &self,
        cfg: &WorkerConfig,
        (chunk_tx, done_rx, (commits, commits_rx)): SourceChannels,
        (stop, drained): (CancellationToken, CancellationToken),
    ) -> anyhow::Result<(std::thread::JoinHandle<()>, SourceEndRx)> {
        let source_cfg = kafka::source::SourceConfig::from_worker(cfg);
        let consumer = kafka::source::consumer(
            &source_cfg,
            kafka::source::context(
                &source_cfg,
                self.assignment.clone(),
                self.metrics.clone(),
                self.health.clone(),
                commits,
            ),
        )?;
        let (end_tx, end) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kafka-source".into())
            .spawn(move || {
                let r = kafka::source::run(
                    consumer,
                    &source_cfg,
                    chunk_tx,
                    done_rx,
                    commits_rx,
                    stop,
                    drained,
                );
                let _ = end_tx.send(r);
            })?;
        Ok((thread, end))
    }

    /// The meters and probes beside the stages; their abort handles.
    fn spawn_watches(
        self,
        cfg: &WorkerConfig,
        engine: EngineHandle,
        es: es::client::EsClient,
        queues: stages::watch::Queues,
    ) -> Vec<tokio::task::AbortHandle> {
        let Shared {
            metrics,
            health,
            budget,
            hosts,
            fetcher,
            ..
        } = self;
        [
            tokio::spawn(stages::watch::busy_meter(engine, metrics.clone())),
            tokio::spawn(stages::watch::es_probe(es, health.clone())),
            tokio::spawn(stages::watch::egress_probe(
                fetcher,
                cfg.fetch.probe_url.clone(),
                hosts,
            )),
            tokio::spawn(stages::watch::queue_meter(queues, metrics.clone())),
            tokio::spawn(stages::watch::budget_watch(budget, metrics, health)),
        ]
        .iter()
        .map(|t| t.abort_handle())
        .collect()
    }
}

impl Pipeline {
    /// Builds each stage's settings from the worker's and spawns every task.
    fn spawn(
        cfg: &Arc<WorkerConfig>,
        started: Started,
        metrics: &metrics::Metrics,
        health: &Arc<health::Health>,
    ) -> anyhow::Result<Pipeline> {
        let Started { engine, es, pdf } = started;
        let shared = Shared::new(cfg, metrics, health)?;
        let (commits, journal_tx, commits_rx) = kafka::committer::channel();
        let prep = shared.prepare(cfg, pdf);
        let ocr_settings = shared.ocr_settings(cfg, &engine, journal_tx);
        tracing::info!(engine_timeout = %humantime::format_duration(ocr_settings.call_timeout), "an engine call running longer than this is a hung engine");
        health.set_liveness_timeout(cfg.liveness_timeout);

        let (chunk_tx, chunk_rx) = mpsc::channel(1);
        let (ready_tx, ready_rx) = mpsc::channel(cfg.ocr_batch * 2);
        let (out_tx, out_rx) = mpsc::channel(cfg.es.bulk_docs * 2);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let queues = stages::watch::Queues {
            chunks: chunk_tx.downgrade(),
            ready: ready_tx.downgrade(),
            outcomes: out_tx.downgrade(),
        };
        let stop = CancellationToken::new();
        let drained = CancellationToken::new();
        // Everything that can fail is made before the source starts taking messages.
        let sink = shared.sink(cfg, es.clone(), done_tx)?;
        let (source, source_end) = shared.spawn_source(
            cfg,
            (chunk_tx, done_rx, (commits, commits_rx)),
            (stop.clone(), drained.clone()),
        )?;

        let tasks = TaskTracker::new();
        tasks.spawn(stages::prepare::prepare_stage(
            chunk_rx,
            prep,
            ready_tx,
            out_tx.clone(),
        ));
        let ocr = tasks.spawn(stages::ocr::ocr_stage(
            ready_rx,
            ocr_settings,
            engine.clone(),
            out_tx,
            metrics.clone(),
            health.clone(),
        ));
        let sink = tasks.spawn(stages::sink::sink_stage(out_rx, sink));
        tasks.close();
        let engine_watch =
            tokio::spawn(stages::watch::engine_watch(engine.clone(), health.clone()));
        let mut aborts = vec![
            ocr.abort_handle(),
            sink.abort_handle(),
            engine_watch.abort_handle(),
        ];
        aborts.extend(shared.spawn_watches(cfg, engine, es, queues));
        // Fused, so that a task that ended in the first wait can be waited on again (it stays
        // pending) while the stages drain; the abort handles stop them at the end.
        Ok(Pipeline {
            source,
            source_end,
            ocr: ocr.fuse(),
            sink: sink.fuse(),
            engine_watch: engine_watch.fuse(),
            aborts,
            stop,
            drained,
        })
    }

    /// Waits for a stop request or a fatal fault; on a stop, lets the stages drain for up to
    /// `grace`; then the source commits what is finished and leaves the group.
    async fn supervise(
        self,
        grace: Duration,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<()> {
        let Pipeline {
            source,
            mut source_end,
            mut ocr,
            mut sink,
            mut engine_watch,
            aborts,
            stop,
            drained,
        } = self;
        let mut fatal: Option<anyhow::Error> = None;
        let mut source_seen = false;
        let mut sink_done = false;
        tokio::select! {
            _ = &mut *shutdown => tracing::info!("termination signal received"),
            _ = stop.cancelled() => {}
            r = &mut source_end => {
                source_seen = true;
                fatal = match r {
                    // An idle exit cancels `stop` before the source returns: not a fault.
                    Ok(Ok(_)) if stop.is_cancelled() => None,
                    Ok(Ok(end)) => Some(anyhow::anyhow!("the Kafka source ended unexpectedly ({end:?})")),
                    Ok(Err(e)) => Some(e.context("the Kafka source failed")),
                    Err(_) => Some(anyhow::anyhow!("the Kafka source thread panicked")),
                };
            }
            r = &mut ocr => fatal = match r {
                Ok(Err(e)) => Some(e),
                // An idle exit closes the pipeline from the source: the stages end on their own.
                Ok(Ok(())) if stop.is_cancelled() => None,
                Ok(Ok(())) => Some(anyhow::anyhow!("the OCR stage ended unexpectedly")),
                Err(e) => Some(anyhow::anyhow!("the OCR stage panicked: {e}")),
            },
            r = &mut engine_watch => fatal = Some(match r {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow::anyhow!("the engine watch ended"),
                Err(e) => anyhow::anyhow!("the engine watch panicked: {e}"),
            }),
            r = &mut sink => {
                sink_done = true;
                fatal = match r {
                    Ok(Ok(())) if stop.is_cancelled() => None,
                    Ok(Ok(())) => Some(anyhow::anyhow!("the sink stage ended unexpectedly")),
                    Ok(Err(e)) => Some(e),
                    Err(e) => Some(anyhow::anyhow!("the sink stage panicked: {e}")),
                };
            }
        }
        stop.cancel();
        if fatal.is_none() && !sink_done {
            // The source stops taking chunks; the stages drain. Whatever is not finished within
            // the grace period is dropped uncommitted (redelivered to the next owner).
            let deadline = tokio::time::sleep(grace);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    r = &mut sink => {
                        if let Ok(Err(e)) = r {
                            fatal = Some(e);
                        } else {
                            tracing::info!("in-flight work finished");
                        }
                        break;
                    }
                    r = &mut ocr => if let Ok(Err(e)) = r {
                        fatal = Some(e);
                        break;
                    },
                    _ = &mut deadline => {
                        tracing::warn!(?grace, "grace period over; dropping unfinished work (it will be redelivered)");
                        break;
                    }
                }
            }
        }
        drained.cancel();
        for a in aborts {
            a.abort();
        }
        // The source commits what is finished and leaves the group.
        let joined = tokio::task::spawn_blocking(move || source.join()).await?;
        if joined.is_err() && fatal.is_none() {
            fatal = Some(anyhow::anyhow!("the Kafka source thread panicked"));
        }
        if !source_seen {
            if let Ok(Err(e)) = source_end.try_recv() {
                if fatal.is_none() {
                    fatal = Some(e.context("the Kafka source failed"));
                }
            }
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
