//! The settings table: every worker setting, once, with its flag (also its TOML key), its
//! environment variable, its default and its meaning. The `settings!` macro makes of each
//! section a pair of structs, one as given (`…Args`: clap flags and TOML keys, every field an
//! `Option` so that the layers can tell "not given" apart) and one resolved (`…Settings`: the
//! value given, else the default written here), and of the whole table [`WorkerArgs`],
//! [`Settings`] and [`REFERENCE`]. Other commands flatten the sections they share with the
//! worker (`ocrfleet ocr` and `bench` the engine's, `produce` and `replay` the Kafka
//! connection's), so that a flag is declared in one place.

use std::path::PathBuf;

use bytesize::ByteSize;
use ipnet::IpNet;
use ocrfleet_ocr::{Device, ModelSet};
use serde::Deserialize;

use super::reference::{help_text, parse_default, Setting};
use super::values::{HumanDuration, List, Secret};

/// A resolved setting's type: the setting's own type when it has a default, `Option` when not.
macro_rules! resolved_ty {
    ($ty:ty, "") => { Option<$ty> };
    ($ty:ty, $default:tt) => { $ty };
}

/// A resolved setting's value: as given, else its default (parsed from the table's text).
macro_rules! resolved_value {
    ($given:expr, $ty:ty, $flag:literal, "") => {
        $given
    };
    ($given:expr, $ty:ty, $flag:literal, $default:tt) => {
        match $given {
            Some(v) => v,
            None => parse_default::<$ty>($flag, $default)?,
        }
    };
}

/// A switch (a `bool` setting) may be given bare (`--fp16`) as well as with its value
/// (`--fp16 false`, `OCRFLEET_FP16=false`, `fp16 = false`); every other flag takes one value.
fn values_of<T: 'static>() -> clap::builder::ValueRange {
    if is_switch::<T>() {
        (0..=1).into()
    } else {
        1.into()
    }
}

/// What a bare switch means: on.
fn bare_value_of<T: 'static>() -> Option<&'static str> {
    is_switch::<T>().then_some("true")
}

fn is_switch<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<bool>()
}

macro_rules! settings {
    ($( $field:ident : $args:ident => $settings:ident, $section:literal { $( $(#[doc = $doc:literal])+ $name:ident : $ty:ty, $flag:literal, $env:literal, $default:tt; )* } )*) => {
        $(
            #[doc = concat!("The \"", $section, "\" settings as given (file, environment or flags); `None` means \"not given\".")]
            #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
            #[serde(default)]
            pub struct $args {
                $(
                    #[doc = concat!($($doc, "\n"),+)]
                    #[arg(long = $flag, env = $env, hide_env = true, help = help_text(concat!($($doc),+), $env, $default), help_heading = $section, num_args = values_of::<$ty>(), default_missing_value = bare_value_of::<$ty>())]
                    #[serde(rename = $flag)]
                    pub $name: Option<$ty>,
                )*
            }

            #[doc = concat!("The \"", $section, "\" settings with their values: as given, else the table's default (the only place a default is written); settings without a default stay `Option`.")]
            #[derive(Debug, Clone)]
            pub struct $settings {
                $(
                    #[doc = concat!($($doc, "\n"),+)]
                    pub $name: resolved_ty!($ty, $default),
                )*
            }

            impl $args {
                /// Fills every setting not given here from `lower` (a lower-precedence source).
                pub fn or(self, lower: $args) -> $args {
                    $args { $( $name: self.$name.or(lower.$name), )* }
                }

                /// Every setting not given takes its documented default.
                pub fn settle(self) -> Result<$settings, String> {
                    Ok($settings { $( $name: resolved_value!(self.$name, $ty, $flag, $default), )* })
                }
            }

            impl Default for $settings {
                /// Every setting at its default.
                fn default() -> Self {
                    $args::default().settle().expect("the table's defaults parse (every_default_parses)")
                }
            }
        )*

        /// Every worker setting as given, a section at a time.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct WorkerArgs {
            $(
                #[command(flatten)]
                pub $field: $args,
            )*
        }

        /// Every worker setting with its value, a section at a time.
        #[derive(Debug, Clone, Default)]
        pub struct Settings {
            $( pub $field: $settings, )*
        }

        impl WorkerArgs {
            /// Fills every setting not given here from `lower` (a lower-precedence source).
            pub fn or(self, lower: WorkerArgs) -> WorkerArgs {
                WorkerArgs { $( $field: self.$field.or(lower.$field), )* }
            }

            /// Every setting not given takes its documented default.
            pub fn settle(self) -> Result<Settings, String> {
                Ok(Settings { $( $field: self.$field.settle()?, )* })
            }
        }

        /// A TOML file is one flat table keyed by the flag names, whatever section a key
        /// belongs to; a key that names no setting is an error.
        impl<'de> Deserialize<'de> for WorkerArgs {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let table = toml::Table::deserialize(d)?;
                if let Some(k) = table.keys().find(|k| !REFERENCE.iter().any(|r| r.flag == k.as_str())) {
                    return Err(D::Error::custom(format!(
                        "unknown setting `{k}` (`ocrfleet worker --print-reference` lists them)"
                    )));
                }
                Ok(WorkerArgs { $(
                    $field: toml::Value::Table(table.clone()).try_into().map_err(D::Error::custom)?,
                )* })
            }
        }

        /// Every setting: flag (also the TOML key), environment variable, default, meaning.
        pub const REFERENCE: &[Setting] = &[
            $( $( Setting { section: $section, flag: $flag, env: $env, default: $default, doc: concat!($($doc),+).trim_ascii() }, )* )*
        ];
    };
}

settings! {
    kafka_connection: KafkaConnectionArgs => KafkaConnectionSettings, "Kafka connection" {
        /// Kafka bootstrap servers, comma-separated.
        brokers: String, "brokers", "OCRFLEET_KAFKA_BROKERS", "127.0.0.1:9092";
        /// Kafka security.protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
        kafka_security_protocol: String, "kafka-security-protocol", "OCRFLEET_KAFKA_SECURITY_PROTOCOL", "plaintext";
        /// Kafka SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
        kafka_sasl_mechanism: String, "kafka-sasl-mechanism", "OCRFLEET_KAFKA_SASL_MECHANISM", "";
        /// Kafka SASL username.
        kafka_sasl_username: String, "kafka-sasl-username", "OCRFLEET_KAFKA_SASL_USERNAME", "";
        /// Kafka SASL password (prefer the _FILE variant).
        kafka_sasl_password: Secret, "kafka-sasl-password", "OCRFLEET_KAFKA_SASL_PASSWORD", "";
        /// File holding the Kafka SASL password.
        kafka_sasl_password_file: PathBuf, "kafka-sasl-password-file", "OCRFLEET_KAFKA_SASL_PASSWORD_FILE", "";
        /// CA certificate (PEM) for Kafka TLS.
        kafka_ssl_ca_location: PathBuf, "kafka-ssl-ca-location", "OCRFLEET_KAFKA_SSL_CA_LOCATION", "";
        /// Extra librdkafka settings for the consumer and producers, as key=value, comma-separated (e.g. fetch.wait.max.ms=500).
        kafka_options: List<String>, "kafka-option", "OCRFLEET_KAFKA_OPTIONS", "";
    }
    kafka: KafkaArgs => KafkaSettings, "Kafka" {
        /// Source topic of image-URL messages.
        topic: String, "topic", "OCRFLEET_KAFKA_TOPIC", "ocr.requests";
        /// Consumer group id.
        group: String, "group", "OCRFLEET_KAFKA_GROUP", "ocrfleet";
        /// Messages per chunk taken from Kafka.
        max_messages: usize, "max-messages", "OCRFLEET_MAX_MESSAGES", "1000";
        /// A chunk is closed after this long even if not full (the online micro-batch window).
        linger: HumanDuration, "linger", "OCRFLEET_LINGER", "100ms";
        /// Messages taken from Kafka and not yet indexed or dead-lettered, at most (0 = two chunks). At the bound the source pauses its partitions.
        max_in_flight: usize, "max-in-flight", "OCRFLEET_MAX_IN_FLIGHT", "0";
        /// Bytes of the messages (keys, values, headers) taken from Kafka and not yet indexed or dead-lettered, at most. At the bound the source pauses its partitions, so read-ahead memory is bounded whatever the messages' size.
        max_in_flight_bytes: ByteSize, "max-in-flight-bytes", "OCRFLEET_MAX_IN_FLIGHT_BYTES", "64MiB";
        /// Headers a message may carry at most; a record with more is dead-lettered (parse/too_many_headers) with its first this-many headers, and only those are ever copied out of librdkafka.
        max_headers: usize, "max-headers", "OCRFLEET_MAX_HEADERS", "100";
        /// How long start-up waits for Kafka to answer the topic check before it fails.
        startup_timeout: HumanDuration, "startup-timeout", "OCRFLEET_STARTUP_TIMEOUT", "30s";
    }
    dead_letters: DeadLetterArgs => DeadLetterSettings, "Dead letters" {
        /// Dead-letter topic (default: <topic>.dlq).
        dlq_topic: String, "dlq-topic", "OCRFLEET_KAFKA_DLQ_TOPIC", "";
        /// Key shared by the workers and `ocrfleet replay`: replay signs the headers of the records it re-publishes with it, and a worker gives a replayed record its original's document id and version only when the signature checks out under its own key. Without it (or with another key) replay headers are ignored, so that no other producer can take over an id (prefer the _FILE variant).
        replay_key: Secret, "replay-key", "OCRFLEET_REPLAY_KEY", "";
        /// File holding the replay key.
        replay_key_file: PathBuf, "replay-key-file", "OCRFLEET_REPLAY_KEY_FILE", "";
    }
    fetch: FetchArgs => FetchSettings, "Fetch" {
        /// Concurrent image downloads.
        fetch_concurrency: usize, "fetch-concurrency", "OCRFLEET_FETCH_CONCURRENCY", "64";
        /// TCP/TLS connect time-out per attempt.
        fetch_connect_timeout: HumanDuration, "fetch-connect-timeout", "OCRFLEET_FETCH_CONNECT_TIMEOUT", "5s";
        /// Total time-out per download attempt (headers and body).
        fetch_timeout: HumanDuration, "fetch-timeout", "OCRFLEET_FETCH_TIMEOUT", "30s";
        /// Attempts per download (time-outs, 5xx and 429 are retried with exponential backoff and jitter).
        fetch_attempts: usize, "fetch-attempts", "OCRFLEET_FETCH_ATTEMPTS", "4";
        /// First retry delay; doubles per attempt.
        fetch_backoff: HumanDuration, "fetch-backoff", "OCRFLEET_FETCH_BACKOFF", "200ms";
        /// Largest image body accepted.
        fetch_max_bytes: ByteSize, "fetch-max-bytes", "OCRFLEET_FETCH_MAX_BYTES", "20MiB";
        /// Redirects followed at most.
        fetch_max_redirects: usize, "fetch-max-redirects", "OCRFLEET_FETCH_MAX_REDIRECTS", "5";
        /// Networks allowed despite the SSRF guard (e.g. 127.0.0.0/8 for a local stack); comma-separated CIDRs.
        fetch_allow: List<IpNet>, "fetch-allow", "OCRFLEET_FETCH_ALLOW", "";
        /// NAT64 prefixes of the cluster's DNS64 besides the well-known 64:ff9b::/96 (a network-specific prefix, RFC 6052: /32, /40, /48, /56, /64 or /96); addresses under them are judged by the IPv4 address they embed; comma-separated.
        fetch_nat64_prefix: List<ipnet::Ipv6Net>, "fetch-nat64-prefix", "OCRFLEET_FETCH_NAT64_PREFIX", "";
        /// The longest a record is held for an image host that does not answer (its breaker is open: held records take no download slot, and one at a time probes the host with growing waits). After it the record is dead-lettered (fetch/host_unreachable), replayable once the host answers. Time while the --fetch-probe-url outage is open does not count. Held records do not count as stuck work for /healthz: the hold is their bound.
        host_hold: HumanDuration, "host-hold", "OCRFLEET_HOST_HOLD", "5m";
        /// An egress outage (an infrastructure fault: intake pauses, /readyz 503) is recognised when connections to at least this many distinct hosts (scheme, host, port) failed within a minute and no download reached any host since; one host never makes an outage, however much of the traffic it carries. 0: only --fetch-probe-url decides.
        egress_outage_hosts: usize, "egress-outage-hosts", "OCRFLEET_EGRESS_OUTAGE_HOSTS", "4";
        /// A URL that answers whenever the pod's way out to the image hosts works (e.g. the object store that serves every image): fetched every 10 s; while it fails the egress outage is open, nothing is dead-lettered however long it lasts (held records' hold time stops), and /healthz fails after --liveness-timeout so that the pod is restarted. It goes through the SSRF guard like any image URL.
        fetch_probe_url: String, "fetch-probe-url", "OCRFLEET_FETCH_PROBE_URL", "";
        /// PEM file of extra CA certificates to trust for image hosts (a private CA, or a TLS-inspecting corporate proxy's), besides the built-in Mozilla roots.
        fetch_ca_cert: PathBuf, "fetch-ca-cert", "OCRFLEET_FETCH_CA_CERT", "";
    }
    engine: EngineArgs => EngineSettings, "Engine" {
        /// Pages read of a multi-page TIFF at most; a file with more is refused whole (the worker dead-letters it: decode/too_many_pages). Animated GIF and WebP give their first frame.
        max_pages: u32, "max-pages", "OCRFLEET_MAX_PAGES", "50";
        /// Inference device: cpu, cuda or cuda:N (no silent fallback).
        device: Device, "device", "OCRFLEET_DEVICE", "cpu";
        /// Runners per model, each with its own sessions (on CUDA its own stream), so that this many runs of each model can be in flight; the worker then keeps 2 × this many engine calls in flight on CUDA, this many on CPU. 0 picks by device: 1 on CPU, 2 on CUDA.
        device_streams: usize, "device-streams", "OCRFLEET_DEVICE_STREAMS", "0";
        /// On CUDA, the device memory all the engine's sessions together may take: the limit of the one arena they share (see --separate-arenas; empty: no limit).
        device_memory_limit: ByteSize, "device-memory-limit", "OCRFLEET_DEVICE_MEMORY_LIMIT", "";
        /// Give every ONNX Runtime session its own memory arena (ONNX Runtime's default) instead of one arena per device shared by all of them. Each arena keeps its own peak, and --device-memory-limit is then shared out evenly between the sessions; for comparison runs.
        separate_arenas: bool, "separate-arenas", "OCRFLEET_SEPARATE_ARENAS", "false";
        /// Load the uint8-input variants of the fused or fp16 graphs (models/make_u8.py): the normalisation runs in the graph and each run sends 4 bytes a pixel instead of 12 (a third of the host-to-device copy); same readings. For CUDA; not yet measured on a GPU.
        u8_input: bool, "u8-input", "OCRFLEET_U8_INPUT", "false";
        /// On CUDA, run each fixed-shape session through an IoBinding: the batch goes through a pinned host buffer made once per session, and the outputs come back into pinned memory. Not yet run on a GPU.
        io_binding: bool, "io-binding", "OCRFLEET_IO_BINDING", "false";
        /// Model set: v4det-v6rec (PP-OCRv4 detector, PP-OCRv6 recogniser: best on real documents), v4 or v6.
        models: ModelSet, "models", "OCRFLEET_MODELS", "v4det-v6rec";
        /// Load the fp16 model variants (installed by models/fetch.sh; made by models/make_fp16.py): for CUDA, where they were 5-15 % faster.
        fp16: bool, "fp16", "OCRFLEET_FP16", "false";
        /// Load the fused fp32 graphs (models/make_fused.py: the same networks with their element-wise chains folded into the convolutions; v4 pages read about twice as fast on CPU); false loads the downloaded graphs.
        fused_graphs: bool, "fused-graphs", "OCRFLEET_FUSED_GRAPHS", "true";
        /// Detector input limit: the longer side of an image is scaled down to at most this many pixels.
        det_limit: u32, "det-limit", "OCRFLEET_DET_LIMIT", "960";
        /// Images whose long side is shorter than this are scaled up to it for detection (0 = never).
        det_upscale_to: u32, "det-upscale-to", "OCRFLEET_DET_UPSCALE_TO", "736";
        /// Put back the spaces between Latin words that the recogniser dropped, from its CTC alignment.
        word_spaces: bool, "word-spaces", "OCRFLEET_WORD_SPACES", "true";
        /// Folder with v4/, v6/ and lib/ (models/fetch.sh).
        models_dir: PathBuf, "models-dir", "OCRFLEET_MODELS_DIR", "models";
        /// ONNX Runtime intra-op threads per model (0 = all cores).
        threads: usize, "threads", "OCRFLEET_THREADS", "0";
        /// Threads of the engine's host pool, which runs its CPU stages (resize, boxes, crops, decoding) beside the model runs (0 = all cores).
        host_threads: usize, "host-threads", "OCRFLEET_HOST_THREADS", "0";
    }
    ocr: OcrStageArgs => OcrStageSettings, "OCR" {
        /// Upper bound on the memory of images being decoded or waiting for the engine: each decode is charged its body and its decoder's measured peak, then keeps its RGB pages until the engine is done. An image that needs more than the whole budget is dead-lettered (decode/over_memory_budget).
        memory_budget: ByteSize, "memory-budget", "OCRFLEET_MEMORY_BUDGET", "2GiB";
        /// Pages per OCR engine call at most (an image is one page; a message's pages are never split across calls).
        ocr_batch: usize, "ocr-batch", "OCRFLEET_OCR_BATCH", "16";
        /// When the engine fails its health probe this long (a lost GPU, say), the worker exits non-zero so that a fresh process is started; meanwhile intake pauses and nothing is dead-lettered.
        engine_fault_timeout: HumanDuration, "engine-fault-timeout", "OCRFLEET_ENGINE_FAULT_TIMEOUT", "2m";
        /// An engine call (one batch) still running after this long is a hung engine (a stuck device call): the worker reports it and exits non-zero, committing nothing of the batch. Default: 20 times the slowest warm-up run, at least 5m.
        engine_timeout: HumanDuration, "engine-timeout", "OCRFLEET_ENGINE_TIMEOUT", "";
        /// A record whose image crashed the worker process (a crash that is not a panic: a segfault in ONNX Runtime, an out-of-memory kill) this many times, each time run alone, is dead-lettered (ocr/crash_loop) instead of crash-looping the fleet; the count is kept in the committed offset's metadata. 0 turns this off.
        crash_loop_attempts: u32, "crash-loop-attempts", "OCRFLEET_CRASH_LOOP_ATTEMPTS", "3";
    }
    pdf: PdfArgs => PdfSettings, "PDF" {
        /// Where a PDF page's text comes from: auto (its text layer when usable, else render and OCR it), ocr (always render and OCR) or text (never render: the layer as it is).
        pdf_text: ocrfleet_pdf::TextMode, "pdf-text", "OCRFLEET_PDF_TEXT", "auto";
        /// Resolution PDF pages drawn as text and vectors are rendered at for OCR (the detector scales a page to --det-limit; the recogniser reads the rendered pixels). A page that carries a scan is rendered at the scan's own resolution instead.
        pdf_dpi: f32, "pdf-dpi", "OCRFLEET_PDF_DPI", "150";
        /// A scanned PDF page (an image over a quarter of the page or more) is rendered at its scan's own resolution, so that its pixels reach the engine as scanned; at most this.
        pdf_max_scan_dpi: f32, "pdf-max-scan-dpi", "OCRFLEET_PDF_MAX_SCAN_DPI", "400";
        /// Longest side of a rendered PDF page in pixels: a larger page (a poster) is rendered smaller, to fit.
        pdf_max_side: u32, "pdf-max-side", "OCRFLEET_PDF_MAX_SIDE", "4096";
        /// Each call to a PDF renderer (open the document, read a page's text layer, render a page) must end within this; else the child is killed and the document refused (the worker dead-letters it: decode/pdf_timeout).
        pdf_page_timeout: HumanDuration, "pdf-page-timeout", "OCRFLEET_PDF_PAGE_TIMEOUT", "20s";
    }
    pdf_renderers: PdfRendererArgs => PdfRendererSettings, "PDF renderers" {
        /// PDF renderer child processes (PDFium, one document at a time each): PDFs read at once.
        pdf_renderers: usize, "pdf-renderers", "OCRFLEET_PDF_RENDERERS", "2";
        /// Address-space limit of each PDF renderer child (a document that needs more ends as decode/pdf_crash).
        pdf_renderer_memory: ByteSize, "pdf-renderer-memory", "OCRFLEET_PDF_RENDERER_MEMORY", "1GiB";
        /// A whole PDF (every page's text layer and renders) must be read within this (decode/pdf_timeout).
        pdf_timeout: HumanDuration, "pdf-timeout", "OCRFLEET_PDF_TIMEOUT", "2m";
    }
    es: EsArgs => EsSettings, "Elasticsearch" {
        /// Elasticsearch URL.
        es_url: String, "es-url", "OCRFLEET_ES_URL", "http://127.0.0.1:9200";
        /// Elasticsearch write alias (or index). When neither exists, NAME-000001 is created with NAME as its write alias (with --manage-template).
        es_index: String, "es-index", "OCRFLEET_ES_INDEX", "ocrfleet";
        /// Install the index template (named like --es-index) when missing or older than this worker's, keeping an operator's settings; create the first index and its alias; add new fields. With false the worker changes nothing in Elasticsearch and waits, not ready, until the index or alias exists.
        manage_template: bool, "manage-template", "OCRFLEET_MANAGE_TEMPLATE", "true";
        /// Elasticsearch API key (base64 id:key; prefer the _FILE variant).
        es_api_key: Secret, "es-api-key", "OCRFLEET_ES_API_KEY", "";
        /// File holding the Elasticsearch API key.
        es_api_key_file: PathBuf, "es-api-key-file", "OCRFLEET_ES_API_KEY_FILE", "";
        /// Elasticsearch basic-auth user.
        es_username: String, "es-username", "OCRFLEET_ES_USERNAME", "";
        /// Elasticsearch basic-auth password (prefer the _FILE variant).
        es_password: Secret, "es-password", "OCRFLEET_ES_PASSWORD", "";
        /// File holding the Elasticsearch password.
        es_password_file: PathBuf, "es-password-file", "OCRFLEET_ES_PASSWORD_FILE", "";
        /// CA certificate (PEM) for Elasticsearch TLS.
        es_ca_cert: PathBuf, "es-ca-cert", "OCRFLEET_ES_CA_CERT", "";
        /// Documents per bulk request at most.
        es_bulk_docs: usize, "es-bulk-docs", "OCRFLEET_ES_BULK_DOCS", "500";
        /// Bytes per bulk request at most (a larger document is sent alone; HTTP 413 splits a request).
        es_bulk_bytes: ByteSize, "es-bulk-bytes", "OCRFLEET_ES_BULK_BYTES", "8MiB";
    }
    process: ProcessArgs => ProcessSettings, "HTTP and process" {
        /// Address of the /metrics, /healthz and /readyz server.
        http_addr: std::net::SocketAddr, "http-addr", "OCRFLEET_HTTP_ADDR", "0.0.0.0:9464";
        /// On SIGTERM/SIGINT, in-flight work gets this long to finish before it is dropped uncommitted.
        shutdown_grace: HumanDuration, "shutdown-grace", "OCRFLEET_SHUTDOWN_GRACE", "30s";
        /// /healthz fails (so that Kubernetes restarts the worker) when work has been pending this long with no progress: nothing committed, finished or dead-lettered, and no infrastructure fault being reported.
        liveness_timeout: HumanDuration, "liveness-timeout", "OCRFLEET_LIVENESS_TIMEOUT", "10m";
        /// Stop (as on SIGTERM) once no message has arrived for this long and nothing is in flight.
        exit_when_idle: HumanDuration, "exit-when-idle", "OCRFLEET_EXIT_WHEN_IDLE", "";
        /// Worker id in dead-letter headers and documents (default: host name).
        worker_id: String, "worker-id", "OCRFLEET_WORKER_ID", "";
    }
}
