//! Resolution: the settings as given (flags over environment over the TOML file over the
//! table's defaults) made into the typed configuration each part of the worker takes.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use ocrfleet_ocr::{streams_for, Device, EngineConfig};

use super::table::{
    EngineSettings, FetchSettings, KafkaConnectionSettings, PdfSettings, Settings, WorkerArgs,
};
use super::values::Secret;

/// How the worker reads PDFs.
#[derive(Debug, Clone)]
pub struct PdfConfig {
    pub read: ocrfleet_pdf::ReadOptions,
    /// `--pdf-timeout`.
    pub deadline: Duration,
    pub renderers: usize,
    pub memory: u64,
    /// PDFium (`<models-dir>/lib/libpdfium.so`).
    pub library: PathBuf,
    /// Test-only (the hidden `--test-pdf-faults`): the renderer children's fault hooks.
    pub test_faults: bool,
}

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub pdf: PdfConfig,
    /// How to start a PDF renderer child: the program and its arguments (the `ocrfleet`
    /// binary's `pdf-child` command, by default this process's own executable).
    pub pdf_program: (PathBuf, Vec<std::ffi::OsString>),
    pub kafka: KafkaConfig,
    pub es: EsConfig,
    pub fetch: FetchConfig,
    pub engine: EngineConfig,
    pub max_messages: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
    pub max_in_flight_bytes: u64,
    /// `--max-headers`.
    pub max_headers: usize,
    pub startup_timeout: Duration,
    pub engine_fault_timeout: Duration,
    /// `None`: derived from the warm-up (see `--engine-timeout`).
    pub engine_timeout: Option<Duration>,
    pub crash_loop_attempts: u32,
    pub liveness_timeout: Duration,
    /// `--replay-key`.
    pub replay_key: Option<Secret>,
    /// Test-only (the hidden `--test-prepare-panic`): a prepare task panics on a URL containing
    /// this text, so that the catching of panics can be tested end to end.
    pub test_prepare_panic: Option<String>,
    /// Test-only (the hidden `--test-device-costs`): the engine runs on a simulated device of
    /// these costs (`ocrfleet_ocr::device`), to show the worker keeping a device busy.
    pub test_device_costs: Option<ocrfleet_ocr::device::Costs>,
    pub memory_budget: u64,
    pub ocr_batch: usize,
    pub http_addr: std::net::SocketAddr,
    pub shutdown_grace: Duration,
    pub exit_when_idle: Option<Duration>,
    pub worker_id: String,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub dlq_topic: String,
    pub security_protocol: String,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    pub ssl_ca_location: Option<PathBuf>,
    /// Extra librdkafka settings (key, value): they override the connection settings and each
    /// client's defaults, but not the settings a client owns (see [`KafkaConfig::client_config_with`]).
    pub options: Vec<(String, String)>,
}

impl KafkaConfig {
    /// librdkafka settings shared by the consumer and the producers, with `--kafka-option`s.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        self.client_config_with(&[], &[])
    }

    /// One client's settings, in order of precedence from low to high: the connection settings,
    /// the client's `defaults`, the operator's `--kafka-option`s, and the settings the client
    /// `owns` because its delivery guarantees depend on them (an option for one of those is
    /// ignored with a warning).
    pub fn client_config_with(
        &self,
        defaults: &[(&str, String)],
        owns: &[(&str, String)],
    ) -> rdkafka::ClientConfig {
        let mut c = self.connection();
        for (k, v) in defaults {
            c.set(*k, v);
        }
        for (k, v) in &self.options {
            if owns.iter().any(|(o, _)| o == k) {
                tracing::warn!(option = %k, "--kafka-option ignored: the worker owns this setting");
            } else {
                c.set(k, v);
            }
        }
        for (k, v) in owns {
            c.set(*k, v);
        }
        c
    }

    /// Brokers, security and credentials.
    fn connection(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", &self.security_protocol);
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p.expose());
        }
        if let Some(ca) = &self.ssl_ca_location {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        c
    }
}

#[derive(Debug, Clone)]
pub struct EsConfig {
    pub url: String,
    /// The index or write alias written to.
    pub index: String,
    /// See `--manage-template`.
    pub manage_template: bool,
    pub api_key: Option<Secret>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_cert: Option<PathBuf>,
    pub bulk_docs: usize,
    pub bulk_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub attempts: usize,
    pub backoff: Duration,
    pub max_bytes: u64,
    pub max_redirects: usize,
    pub allow: Vec<IpNet>,
    /// `--fetch-nat64-prefix`.
    pub nat64: Vec<ipnet::Ipv6Net>,
    /// Extra trusted CA certificates (PEM) for image hosts.
    pub ca_cert: Option<PathBuf>,
    /// `--host-hold` and `--egress-outage-hosts`.
    pub hosts: crate::fetch::hosts::HostRules,
    /// `--fetch-probe-url`.
    pub probe_url: Option<String>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchSettings::default().fetch_config()
    }
}

/// Reads a secret from `value`, else from `file` (trailing newline removed).
fn secret(
    value: Option<Secret>,
    file: Option<PathBuf>,
    what: &str,
) -> anyhow::Result<Option<Secret>> {
    if let Some(v) = value {
        return Ok(Some(v));
    }
    match file {
        Some(p) => {
            let s = std::fs::read_to_string(&p)
                .map_err(|e| anyhow::anyhow!("cannot read {what} file {}: {e}", p.display()))?;
            Ok(Some(Secret::from(
                s.trim_end_matches(['\n', '\r']).to_owned(),
            )))
        }
        None => Ok(None),
    }
}

/// `--replay-key` (or its file): an empty key is refused, since anyone could sign with it.
pub fn replay_key(value: Option<Secret>, file: Option<PathBuf>) -> anyhow::Result<Option<Secret>> {
    let key = secret(value, file, "replay key")?;
    if key.as_ref().is_some_and(|k| k.expose().is_empty()) {
        anyhow::bail!(
            "the replay key is empty (--replay-key or --replay-key-file): an empty key signs nothing anyone could not sign; give a long random key, or none"
        );
    }
    Ok(key)
}

impl WorkerConfig {
    /// Resolves flags/environment (`cli`) over the TOML file (if any) over the defaults.
    pub fn load(cli: WorkerArgs, file: Option<&std::path::Path>) -> anyhow::Result<WorkerConfig> {
        let from_file = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str::<WorkerArgs>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", p.display()))?
            }
            None => WorkerArgs::default(),
        };
        let a = cli.or(from_file).settle().map_err(anyhow::Error::msg)?;
        Self::resolve(a)
    }

    fn resolve(a: Settings) -> anyhow::Result<WorkerConfig> {
        let topic = a.kafka.topic.clone();
        let engine = a.engine.engine_config();
        let pdf = PdfConfig {
            read: a.pdf.read_options(&engine),
            deadline: a.pdf_renderers.pdf_timeout.0,
            renderers: a.pdf_renderers.pdf_renderers.max(1),
            memory: a.pdf_renderers.pdf_renderer_memory.as_u64(),
            library: a.engine.models_dir.join("lib/libpdfium.so"),
            test_faults: false,
        };
        let (k, d, e, o, h) = (&a.kafka, &a.dead_letters, &a.es, &a.ocr, &a.process);
        let dlq_topic = nonempty(d.dlq_topic.clone()).unwrap_or_else(|| format!("{topic}.dlq"));
        Ok(WorkerConfig {
            pdf,
            pdf_program: (
                std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ocrfleet")),
                vec!["pdf-child".into()],
            ),
            kafka: a
                .kafka_connection
                .kafka_config(&topic, &k.group, &dlq_topic)?,
            es: EsConfig {
                url: e.es_url.clone(),
                index: e.es_index.clone(),
                manage_template: e.manage_template,
                api_key: secret(
                    e.es_api_key.clone(),
                    e.es_api_key_file.clone(),
                    "Elasticsearch API key",
                )?,
                username: nonempty(e.es_username.clone()),
                password: secret(
                    e.es_password.clone(),
                    e.es_password_file.clone(),
                    "Elasticsearch password",
                )?,
                ca_cert: e.es_ca_cert.clone(),
                bulk_docs: e.es_bulk_docs.max(1),
                bulk_bytes: e.es_bulk_bytes.as_u64().max(1024) as usize,
            },
            fetch: a.fetch.fetch_config(),
            engine,
            max_messages: k.max_messages.max(1),
            linger: k.linger.0,
            max_in_flight: match k.max_in_flight {
                0 => 2 * k.max_messages.max(1),
                n => n,
            },
            max_in_flight_bytes: k.max_in_flight_bytes.as_u64().max(1),
            max_headers: k.max_headers,
            startup_timeout: k.startup_timeout.0,
            engine_fault_timeout: o.engine_fault_timeout.0,
            engine_timeout: o.engine_timeout.map(|d| d.0),
            crash_loop_attempts: o.crash_loop_attempts,
            liveness_timeout: h.liveness_timeout.0,
            replay_key: replay_key(d.replay_key.clone(), d.replay_key_file.clone())?,
            test_prepare_panic: None,
            test_device_costs: None,
            memory_budget: o.memory_budget.as_u64(),
            ocr_batch: o.ocr_batch.max(1),
            http_addr: h.http_addr,
            shutdown_grace: h.shutdown_grace.0,
            exit_when_idle: h.exit_when_idle.map(|d| d.0),
            worker_id: nonempty(h.worker_id.clone())
                .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
        })
    }
}

impl WorkerConfig {
    /// Engine calls kept in flight: one per runner on CPU (where calls share the cores), two per
    /// runner on CUDA (so that a call's host work overlaps another's model runs).
    pub fn engine_lanes(&self) -> usize {
        match self.engine.device {
            // A simulated device is fed as a GPU is.
            Device::Cpu if self.test_device_costs.is_none() => self.engine.streams.max(1),
            Device::Cpu | Device::Cuda(_) => 2 * self.engine.streams.max(1),
        }
    }
}

impl FetchSettings {
    /// The downloader's settings.
    pub fn fetch_config(&self) -> FetchConfig {
        let a = self;
        FetchConfig {
            concurrency: a.fetch_concurrency.max(1),
            connect_timeout: a.fetch_connect_timeout.0,
            timeout: a.fetch_timeout.0,
            attempts: a.fetch_attempts.max(1),
            backoff: a.fetch_backoff.0,
            max_bytes: a.fetch_max_bytes.as_u64(),
            max_redirects: a.fetch_max_redirects,
            allow: a.fetch_allow.clone().map(|l| l.0).unwrap_or_default(),
            nat64: a
                .fetch_nat64_prefix
                .clone()
                .map(|l| l.0)
                .unwrap_or_default(),
            ca_cert: a.fetch_ca_cert.clone(),
            hosts: crate::fetch::hosts::HostRules {
                hold: a.host_hold.0,
                outage_hosts: a.egress_outage_hosts,
            },
            probe_url: a.fetch_probe_url.clone().filter(|u| !u.is_empty()),
        }
    }
}

/// An empty text given for an optional setting is the same as none.
fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl EngineSettings {
    /// The engine's configuration: the one mapping from the table's engine section, used by
    /// the worker, `ocrfleet ocr` and `ocrfleet bench` alike (the tuning knobs that are not
    /// worker settings keep the engine's defaults).
    pub fn engine_config(&self) -> EngineConfig {
        let mut c = EngineConfig {
            models_dir: self.models_dir.clone(),
            model_set: self.models,
            device: self.device,
            intra_threads: self.threads,
            host_threads: self.host_threads,
            fp16: self.fp16,
            fused: self.fused_graphs,
            ..EngineConfig::default()
        };
        c.det.limit_side_len = self.det_limit;
        c.rec.spaces.enabled = self.word_spaces;
        c.det.upscale_to = self.det_upscale_to;
        c.max_pages = self.max_pages.max(1);
        c.device_memory_limit = self.device_memory_limit.map(|b| b.as_u64());
        c.shared_arena = !self.separate_arenas;
        c.u8_input = self.u8_input;
        c.io_binding = self.io_binding;
        c.streams = streams_for(c.device, self.device_streams);
        c
    }
}

impl PdfSettings {
    /// How a PDF is read, within the limits of the engine that reads its rendered pages: the
    /// one mapping for the worker, `ocrfleet ocr` and `ocrfleet bench pdf`.
    pub fn read_options(&self, engine: &EngineConfig) -> ocrfleet_pdf::ReadOptions {
        ocrfleet_pdf::ReadOptions {
            mode: self.pdf_text,
            dpi: self.pdf_dpi.clamp(36.0, 600.0),
            max_scan_dpi: self.pdf_max_scan_dpi.clamp(72.0, 1200.0),
            // A rendered page stays within the engine's --max-pixels as well.
            max_side: self
                .pdf_max_side
                .clamp(64, 32_768)
                .min((engine.max_pixels as f64).sqrt().max(64.0) as u32),
            max_pages: engine.max_pages,
            page_deadline: self.pdf_page_timeout.0,
        }
    }
}

impl KafkaConnectionSettings {
    /// The connection to Kafka (brokers, security, credentials, `--kafka-option`s) for a client
    /// of `topic`, in consumer group `group`, dead-lettering to `dlq_topic` (empty where the
    /// command has none).
    pub fn kafka_config(
        &self,
        topic: &str,
        group: &str,
        dlq_topic: &str,
    ) -> anyhow::Result<KafkaConfig> {
        Ok(KafkaConfig {
            brokers: self.brokers.clone(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            security_protocol: self.kafka_security_protocol.clone(),
            sasl_mechanism: nonempty(self.kafka_sasl_mechanism.clone()),
            sasl_username: nonempty(self.kafka_sasl_username.clone()),
            sasl_password: secret(
                self.kafka_sasl_password.clone(),
                self.kafka_sasl_password_file.clone(),
                "Kafka SASL password",
            )?,
            ssl_ca_location: self.kafka_ssl_ca_location.clone(),
            options: self
                .kafka_options
                .clone()
                .map(|l| l.0)
                .unwrap_or_default()
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--kafka-option {kv:?} is not key=value"))
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}
