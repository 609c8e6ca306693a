//! Worker configuration: one typed struct, loaded from a TOML file, then `OCRFLEET_*`
//! environment variables, then command-line flags (each later source wins).
//!
//! Every setting is declared once, in the `settings!` table below, which generates the clap
//! flags (so `ocrfleet worker --help` lists each flag with its environment variable), the TOML
//! keys (the flag's name), and [`REFERENCE`], from which deploy/docs/configuration.md's table is
//! made (`ocrfleet worker --print-reference`; a test checks that the document agrees).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use ipnet::IpNet;
use ocrfleet_ocr::{streams_for, Device, EngineConfig, ModelSet};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A duration written as `100ms`, `30s`, `5m`: parsed by `humantime` on the command line and
/// in the environment, and by `humantime-serde` in the TOML file. (A newtype, because the
/// `settings!` table needs one type that both clap and serde take as it is.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("{s:?} is not a duration like 100ms, 30s or 5m: {e}"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d).map(HumanDuration)
    }
}

/// A secret value (`secrecy`): never printed by `Debug`, zeroed when dropped. A newtype only so
/// that clap can parse it from a flag or variable like every other setting.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(SecretString::from(s))
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(SecretString::from(s)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One row of the configuration reference.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The group it is listed under in `--help` and the reference.
    pub section: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

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

macro_rules! settings {
    ($( $section:literal { $( $(#[doc = $doc:literal])+ $name:ident : $ty:ty, $flag:literal, $env:literal, $default:tt; )* } )*) => {
        /// Worker settings as given (file, environment or flags); `None` means "not given".
        #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct WorkerArgs {
            $( $(
                #[doc = concat!($($doc, "\n"),+)]
                #[arg(long = $flag, env = $env, hide_env = true, help = help_text(concat!($($doc),+), $env, $default), help_heading = $section)]
                #[serde(rename = $flag)]
                pub $name: Option<$ty>,
            )* )*
        }

        /// Every setting with its value: as given, else the default of the table below (the
        /// only place a default is written); settings without a default stay `Option`.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(
                #[doc = concat!($($doc, "\n"),+)]
                pub $name: resolved_ty!($ty, $default),
            )* )*
        }

        impl WorkerArgs {
            /// Fills every setting not given here from `lower` (a lower-precedence source).
            pub fn or(self, lower: WorkerArgs) -> WorkerArgs {
                WorkerArgs { $( $( $name: self.$name.or(lower.$name), )* )* }
            }

            /// Every setting not given takes its documented default.
            pub fn settle(self) -> Result<Settings, String> {
                Ok(Settings { $( $( $name: resolved_value!(self.$name, $ty, $flag, $default), )* )* })
            }
        }

        /// Every setting: flag (also the TOML key), environment variable, default, meaning.
        pub const REFERENCE: &[Setting] = &[
            $( $( Setting { section: $section, flag: $flag, env: $env, default: $default, doc: concat!($($doc),+).trim_ascii() }, )* )*
        ];
    };
}

/// The default of the setting `flag` in the table (the text of `--help` and the reference), for
/// the other commands' flags that mean the same thing; a flag not in the table fails the build.
pub const fn default_of(flag: &str) -> &'static str {
    let mut i = 0;
    while i < REFERENCE.len() {
        if const_eq(REFERENCE[i].flag, flag) {
            return REFERENCE[i].default;
        }
        i += 1;
    }
    panic!("no such setting")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A flag's help: its text, then `[env: …]` and `[default: …]` in the order clap gives them for
/// the other commands' flags (clap's own `[env]` is hidden, because the default has to be
/// written here: a setting is an `Option` so that the layers can tell "not given" apart).
fn help_text(doc: &str, env: &str, default: &str) -> String {
    let doc = doc.trim();
    if default.is_empty() {
        format!("{doc} [env: {env}]")
    } else {
        format!("{doc} [env: {env}] [default: {default}]")
    }
}

fn parse_default<T: FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("built-in default {s:?} for --{flag} does not parse"))
}

/// A list given as `a,b,c` (flag or environment) or as a TOML array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T: FromStr> FromStr for List<T>
where
    T::Err: fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<T>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(List)
    }
}

/// In a TOML file a list is an array (`fetch-allow = ["10.0.0.0/8"]`) or, as on the command line,
/// one comma-separated string (`kafka-option = "a=b,c=d"`).
impl<'de, T> Deserialize<'de> for List<T>
where
    T: Deserialize<'de> + FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form<T> {
            Many(Vec<T>),
            One(String),
        }
        match Form::<T>::deserialize(d)? {
            Form::Many(v) => Ok(List(v)),
            Form::One(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Environment variables that start with `OCRFLEET_` but name no setting (a typo, or a name
/// from an older release): the worker warns about each, since it would otherwise ignore them
/// silently.
pub fn unknown_env<I: IntoIterator<Item = (String, String)>>(vars: I) -> Vec<String> {
    vars.into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            k.starts_with("OCRFLEET_")
                && !REFERENCE.iter().any(|r| r.env == k)
                && !OTHER_ENV.contains(&k.as_str())
        })
        .collect()
}

/// `OCRFLEET_*` variables that are not worker settings but are read by the binary itself (the
/// config file's path, the log format) or by other commands.
pub const OTHER_ENV: &[&str] = &["OCRFLEET_CONFIG", "OCRFLEET_LOG_FORMAT"];

settings! {
    "Kafka" {
        /// Kafka bootstrap servers, comma-separated.
        brokers: String, "brokers", "OCRFLEET_KAFKA_BROKERS", "127.0.0.1:9092";
        /// Source topic of image-URL messages.
        topic: String, "topic", "OCRFLEET_KAFKA_TOPIC", "ocr.requests";
        /// Consumer group id.
        group: String, "group", "OCRFLEET_KAFKA_GROUP", "ocrfleet";
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
    "Dead letters" {
        /// Dead-letter topic (default: <topic>.dlq).
        dlq_topic: String, "dlq-topic", "OCRFLEET_KAFKA_DLQ_TOPIC", "";
        /// Key shared with `ocrfleet replay`, which signs the headers of the records it re-publishes: a replayed record then gets its original's document id and version. Without it (or with another key) replay headers are ignored, so that no other producer can take over an id (prefer the _FILE variant).
        replay_key: Secret, "replay-key", "OCRFLEET_REPLAY_KEY", "";
        /// File holding the replay key.
        replay_key_file: PathBuf, "replay-key-file", "OCRFLEET_REPLAY_KEY_FILE", "";
    }
    "Fetch" {
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
    "OCR" {
        /// Upper bound on the memory of images being decoded or waiting for the engine: each decode is charged its body and its decoder's measured peak, then keeps its RGB pages until the engine is done. An image that needs more than the whole budget is dead-lettered (decode/over_memory_budget).
        memory_budget: ByteSize, "memory-budget", "OCRFLEET_MEMORY_BUDGET", "2GiB";
        /// Pages read of a multi-page TIFF at most; a file with more is dead-lettered (decode/too_many_pages). Animated GIF and WebP give their first frame.
        max_pages: u32, "max-pages", "OCRFLEET_MAX_PAGES", "50";
        /// Pages per OCR engine call at most (an image is one page; a message's pages are never split across calls).
        ocr_batch: usize, "ocr-batch", "OCRFLEET_OCR_BATCH", "16";
        /// Inference device: cpu, cuda or cuda:N (no silent fallback).
        device: Device, "device", "OCRFLEET_DEVICE", "cpu";
        /// Runners per model, each with its own sessions (on CUDA its own stream), so that this many runs of each model can be in flight; the worker then keeps 2 × this many engine calls in flight on CUDA, this many on CPU. 0 picks by device: 1 on CPU, 2 on CUDA.
        device_streams: usize, "device-streams", "OCRFLEET_DEVICE_STREAMS", "0";
        /// On CUDA, the device memory all the engine's sessions together may take, shared out as each session's arena limit (empty: no limit; each arena grows by what it asks for).
        device_memory_limit: ByteSize, "device-memory-limit", "OCRFLEET_DEVICE_MEMORY_LIMIT", "";
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
        /// When the engine fails its health probe this long (a lost GPU, say), the worker exits non-zero so that a fresh process is started; meanwhile intake pauses and nothing is dead-lettered.
        engine_fault_timeout: HumanDuration, "engine-fault-timeout", "OCRFLEET_ENGINE_FAULT_TIMEOUT", "2m";
        /// An engine call (one batch) still running after this long is a hung engine (a stuck device call): the worker reports it and exits non-zero, committing nothing of the batch. Default: 20 times the slowest warm-up run, at least 5m.
        engine_timeout: HumanDuration, "engine-timeout", "OCRFLEET_ENGINE_TIMEOUT", "";
        /// A record whose image crashed the worker process (a crash that is not a panic: a segfault in ONNX Runtime, an out-of-memory kill) this many times, each time run alone, is dead-lettered (ocr/crash_loop) instead of crash-looping the fleet; the count is kept in the committed offset's metadata. 0 turns this off.
        crash_loop_attempts: u32, "crash-loop-attempts", "OCRFLEET_CRASH_LOOP_ATTEMPTS", "3";
    }
    "PDF" {
        /// Where a PDF page's text comes from: auto (its text layer when usable, else render and OCR it), ocr (always render and OCR) or text (never render: the layer as it is).
        pdf_text: ocrfleet_pdf::TextMode, "pdf-text", "OCRFLEET_PDF_TEXT", "auto";
        /// Resolution PDF pages drawn as text and vectors are rendered at for OCR (the detector scales a page to --det-limit; the recogniser reads the rendered pixels). A page that carries a scan is rendered at the scan's own resolution instead.
        pdf_dpi: f32, "pdf-dpi", "OCRFLEET_PDF_DPI", "150";
        /// A scanned PDF page (an image over a quarter of the page or more) is rendered at its scan's own resolution, so that its pixels reach the engine as scanned; at most this.
        pdf_max_scan_dpi: f32, "pdf-max-scan-dpi", "OCRFLEET_PDF_MAX_SCAN_DPI", "400";
        /// Longest side of a rendered PDF page in pixels: a larger page (a poster) is rendered smaller, to fit.
        pdf_max_side: u32, "pdf-max-side", "OCRFLEET_PDF_MAX_SIDE", "4096";
        /// PDF renderer child processes (PDFium, one document at a time each): PDFs read at once.
        pdf_renderers: usize, "pdf-renderers", "OCRFLEET_PDF_RENDERERS", "2";
        /// Address-space limit of each PDF renderer child (a document that needs more ends as decode/pdf_crash).
        pdf_renderer_memory: ByteSize, "pdf-renderer-memory", "OCRFLEET_PDF_RENDERER_MEMORY", "1GiB";
        /// Each call to a PDF renderer (open the document, read a page's text layer, render a page) must end within this; else the child is killed and the record dead-lettered (decode/pdf_timeout).
        pdf_page_timeout: HumanDuration, "pdf-page-timeout", "OCRFLEET_PDF_PAGE_TIMEOUT", "20s";
        /// A whole PDF (every page's text layer and renders) must be read within this (decode/pdf_timeout).
        pdf_timeout: HumanDuration, "pdf-timeout", "OCRFLEET_PDF_TIMEOUT", "2m";
    }
    "Elasticsearch" {
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
    "HTTP and process" {
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
        let a = WorkerArgs::default().settle().expect("defaults parse");
        WorkerConfig::fetch_from(&a)
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

    fn fetch_from(a: &Settings) -> FetchConfig {
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

    fn resolve(a: Settings) -> anyhow::Result<WorkerConfig> {
        let topic = a.topic.clone();
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let mut engine = EngineConfig {
            models_dir: a.models_dir.clone(),
            model_set: a.models,
            device: a.device,
            intra_threads: a.threads,
            host_threads: a.host_threads,
            fp16: a.fp16,
            fused: a.fused_graphs,
            ..EngineConfig::default()
        };
        engine.det.limit_side_len = a.det_limit;
        engine.rec.spaces.enabled = a.word_spaces;
        engine.det.upscale_to = a.det_upscale_to;
        engine.max_pages = a.max_pages.max(1);
        engine.device_memory_limit = a.device_memory_limit.map(|b| b.as_u64());
        engine.u8_input = a.u8_input;
        engine.io_binding = a.io_binding;
        engine.streams = streams_for(engine.device, a.device_streams);
        let pdf = PdfConfig {
            read: ocrfleet_pdf::ReadOptions {
                mode: a.pdf_text,
                dpi: a.pdf_dpi.clamp(36.0, 600.0),
                max_scan_dpi: a.pdf_max_scan_dpi.clamp(72.0, 1200.0),
                // A rendered page stays within --max-pixels as well.
                max_side: a
                    .pdf_max_side
                    .clamp(64, 32_768)
                    .min((engine.max_pixels as f64).sqrt().max(64.0) as u32),
                max_pages: a.max_pages.max(1),
                page_deadline: a.pdf_page_timeout.0,
            },
            deadline: a.pdf_timeout.0,
            renderers: a.pdf_renderers.max(1),
            memory: a.pdf_renderer_memory.as_u64(),
            library: a.models_dir.join("lib/libpdfium.so"),
            test_faults: false,
        };
        Ok(WorkerConfig {
            pdf,
            pdf_program: (
                std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ocrfleet")),
                vec!["pdf-child".into()],
            ),
            kafka: KafkaConfig {
                brokers: a.brokers.clone(),
                dlq_topic: nonempty(a.dlq_topic.clone()).unwrap_or_else(|| format!("{topic}.dlq")),
                topic,
                group: a.group.clone(),
                security_protocol: a.kafka_security_protocol.clone(),
                sasl_mechanism: nonempty(a.kafka_sasl_mechanism.clone()),
                sasl_username: nonempty(a.kafka_sasl_username.clone()),
                sasl_password: secret(
                    a.kafka_sasl_password.clone(),
                    a.kafka_sasl_password_file.clone(),
                    "Kafka SASL password",
                )?,
                ssl_ca_location: a.kafka_ssl_ca_location.clone(),
                options: a
                    .kafka_options
                    .clone()
                    .map(|l| l.0)
                    .unwrap_or_default()
                    .iter()
                    .map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                            .ok_or_else(|| {
                                anyhow::anyhow!("--kafka-option {kv:?} is not key=value")
                            })
                    })
                    .collect::<anyhow::Result<_>>()?,
            },
            es: EsConfig {
                url: a.es_url.clone(),
                index: a.es_index.clone(),
                manage_template: a.manage_template,
                api_key: secret(
                    a.es_api_key.clone(),
                    a.es_api_key_file.clone(),
                    "Elasticsearch API key",
                )?,
                username: nonempty(a.es_username.clone()),
                password: secret(
                    a.es_password.clone(),
                    a.es_password_file.clone(),
                    "Elasticsearch password",
                )?,
                ca_cert: a.es_ca_cert.clone(),
                bulk_docs: a.es_bulk_docs.max(1),
                bulk_bytes: a.es_bulk_bytes.as_u64().max(1024) as usize,
            },
            fetch: Self::fetch_from(&a),
            engine,
            max_messages: a.max_messages.max(1),
            linger: a.linger.0,
            max_in_flight: match a.max_in_flight {
                0 => 2 * a.max_messages.max(1),
                n => n,
            },
            max_in_flight_bytes: a.max_in_flight_bytes.as_u64().max(1),
            max_headers: a.max_headers,
            startup_timeout: a.startup_timeout.0,
            engine_fault_timeout: a.engine_fault_timeout.0,
            engine_timeout: a.engine_timeout.map(|d| d.0),
            crash_loop_attempts: a.crash_loop_attempts,
            liveness_timeout: a.liveness_timeout.0,
            replay_key: replay_key(a.replay_key.clone(), a.replay_key_file.clone())?,
            test_prepare_panic: None,
            memory_budget: a.memory_budget.as_u64(),
            ocr_batch: a.ocr_batch.max(1),
            http_addr: a.http_addr,
            shutdown_grace: a.shutdown_grace.0,
            exit_when_idle: a.exit_when_idle.map(|d| d.0),
            worker_id: nonempty(a.worker_id.clone())
                .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
        })
    }
}

impl WorkerConfig {
    /// Engine calls kept in flight: one per runner on CPU (where calls share the cores), two per
    /// runner on CUDA (so that a call's host work overlaps another's model runs).
    pub fn engine_lanes(&self) -> usize {
        match self.engine.device {
            Device::Cpu => self.engine.streams.max(1),
            Device::Cuda(_) => 2 * self.engine.streams.max(1),
        }
    }
}

/// The reference table in Markdown, as it appears in deploy/docs/configuration.md.
pub fn reference_markdown() -> String {
    let mut s =
        String::from("| flag / TOML key | environment | default | meaning |\n|---|---|---|---|\n");
    let mut section = "";
    for r in REFERENCE {
        if r.section != section {
            section = r.section;
            s.push_str(&format!("| **{section}** | | | |\n"));
        }
        let default = if r.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", r.default)
        };
        s.push_str(&format!(
            "| `--{}` | `{}` | {} | {} |\n",
            r.flag, r.env, default, r.doc
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's engine defaults are the engine's own (the table's text is what `--help` and
    /// the reference show, so it has to be written there; this keeps the two from drifting).
    #[test]
    fn the_engine_defaults_in_the_table_are_the_engines() {
        let c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        let e = EngineConfig::default();
        assert_eq!(c.engine.det.limit_side_len, e.det.limit_side_len);
        assert_eq!(c.engine.det.upscale_to, e.det.upscale_to);
        assert_eq!(c.engine.max_pages, e.max_pages);
        assert_eq!(c.engine.rec.spaces.enabled, e.rec.spaces.enabled);
        assert_eq!(c.engine.model_set, e.model_set);
        assert_eq!(c.engine.fused, e.fused);
        assert_eq!(c.engine.fp16, e.fp16);
        assert_eq!(c.engine.u8_input, e.u8_input);
        assert_eq!(c.engine.io_binding, e.io_binding);
        assert_eq!(c.engine.device, e.device);
        assert_eq!(c.engine.models_dir, e.models_dir);
        assert_eq!(c.engine.intra_threads, e.intra_threads);
        assert_eq!(c.engine.host_threads, e.host_threads);
    }

    #[test]
    fn defaults_resolve() {
        let c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        assert_eq!(c.kafka.topic, "ocr.requests");
        assert_eq!(c.kafka.dlq_topic, "ocr.requests.dlq");
        assert_eq!(c.max_messages, 1000);
        assert_eq!(c.linger, Duration::from_millis(100));
        assert_eq!(c.fetch.max_bytes, 20 * 1024 * 1024);
        assert_eq!(c.fetch.concurrency, 64);
        assert!(c.fetch.allow.is_empty());
        assert_eq!(c.memory_budget, 2 * 1024 * 1024 * 1024);
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("ocrfleet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("w.toml");
        std::fs::write(&f, "topic = \"from-file\"\ngroup = \"g-file\"\nfetch-allow = [\"127.0.0.0/8\"]\nlinger = \"250ms\"\n").unwrap();
        let cli = WorkerArgs {
            topic: Some("from-flag".into()),
            ..Default::default()
        };
        let c = WorkerConfig::load(cli, Some(&f)).unwrap();
        assert_eq!(c.kafka.topic, "from-flag");
        assert_eq!(c.kafka.group, "g-file");
        assert_eq!(c.kafka.dlq_topic, "from-flag.dlq");
        assert_eq!(c.linger, Duration::from_millis(250));
        assert_eq!(c.fetch.allow, vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn model_set_and_fp16_reach_the_engine() {
        let c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        assert_eq!(
            (c.engine.model_set, c.engine.fp16, c.engine.fused),
            (ModelSet::V4DetV6Rec, false, true)
        );
        let f = std::env::temp_dir().join(format!("ocrfleet-cfg-fp16-{}.toml", std::process::id()));
        std::fs::write(&f, "models = \"v6\"\nfp16 = true\nfused-graphs = false\n").unwrap();
        let c = WorkerConfig::load(WorkerArgs::default(), Some(&f)).unwrap();
        assert_eq!(
            (c.engine.model_set, c.engine.fp16, c.engine.fused),
            (ModelSet::V6, true, false)
        );
        let r = |flag: &str| REFERENCE.iter().find(|r| r.flag == flag).unwrap().env;
        assert_eq!(
            (r("models"), r("fp16")),
            ("OCRFLEET_MODELS", "OCRFLEET_FP16")
        );
    }

    #[test]
    fn toml_keys_are_the_flag_names_and_lists_take_a_string_too() {
        for r in REFERENCE {
            // A wrong type is fine here; an unknown key is not.
            if let Err(e) = toml::from_str::<WorkerArgs>(&format!("{} = \"x\"", r.flag)) {
                assert!(!e.to_string().contains("unknown field"), "{}: {e}", r.flag);
            }
        }
        let a: WorkerArgs = toml::from_str("kafka-option = \"a=b,c=d\"").unwrap();
        assert_eq!(a.kafka_options.unwrap().0, vec!["a=b", "c=d"]);
        let a: WorkerArgs =
            toml::from_str("kafka-option = [\"a=b\"]\nfetch-allow = \"10.0.0.0/8\"").unwrap();
        assert_eq!(a.kafka_options.unwrap().0, vec!["a=b"]);
        assert_eq!(
            a.fetch_allow.unwrap().0,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert!(toml::from_str::<WorkerArgs>("fetch-allow = \"nonsense\"").is_err());
    }

    #[test]
    fn unknown_environment_settings_are_named() {
        let vars = [
            ("OCRFLEET_MODEL_SET", "v6"),
            ("OCRFLEET_MODELS", "v6"),
            ("OCRFLEET_FP16", "true"),
            ("OCRFLEET_LOG_FORMAT", "json"),
            ("OCRFLEET_CONFIG", "/etc/ocrfleet/ocrfleet.toml"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(unknown_env(vars), vec!["OCRFLEET_MODEL_SET"]);
    }

    #[test]
    fn kafka_options_beat_client_defaults_but_not_owned_settings() {
        let mut k = WorkerConfig::load(WorkerArgs::default(), None)
            .unwrap()
            .kafka;
        k.options = vec![
            ("session.timeout.ms".into(), "45000".into()),
            ("enable.auto.commit".into(), "true".into()),
            ("bootstrap.servers".into(), "other:9092".into()),
        ];
        let c = k.client_config_with(
            &[("session.timeout.ms", "10000".into())],
            &[("enable.auto.commit", "false".into())],
        );
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("bootstrap.servers"), Some("other:9092"));
        assert_eq!(k.client_config().get("enable.auto.commit"), Some("true"));
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<WorkerArgs>("topc = \"x\"").is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret::from("hunter2".to_owned());
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = WorkerConfig::load(
            WorkerArgs {
                es_password: Some(s),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn every_default_parses() {
        WorkerArgs::default().settle().unwrap();
        for r in REFERENCE {
            assert!(r.env.starts_with("OCRFLEET_"), "{}", r.env);
        }
    }
}
