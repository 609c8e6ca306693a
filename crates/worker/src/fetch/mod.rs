//! Downloading images: one reqwest connection pool, bounded attempts with exponential backoff
//! and jitter (the `backon` crate); bodies are streamed and cut off at a size cap; redirects are
//! limited and every hop is re-checked by the SSRF guard ([`guard`]).
//!
//! # Retries
//!
//! Retried: time-outs, connection and transfer errors, 5xx and 429. A 429 or 503 with
//! `Retry-After: <seconds>` waits that long before the next attempt, at most
//! [`MAX_RETRY_AFTER`] and never less than the backoff (an HTTP-date there counts as absent).
//! Not retried, because another attempt would end the same way: refusals, other 4xx, bodies over
//! the cap, redirect chains longer than `--fetch-max-redirects` (a redirect loop would otherwise
//! cost attempts × redirects requests), and requests that cannot even be built, such as a URL
//! too long for a request line (nothing was sent).
//!
//! # No proxy
//!
//! The proxy environment variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, lower case too) are
//! ignored: image hosts are fetched directly, so that every address the worker connects to is
//! one the guard has checked. Through a proxy the guard would only see the proxy's address,
//! and the proxy would resolve and reach `http://localhost/...` on the worker's behalf.
//!
//! # Logs
//!
//! URLs in log lines go through [`redact_url`] (signed URLs carry credentials in the query), and
//! error texts leave the URL out: the caller knows which URL failed.

pub mod guard;
pub mod hosts;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use url::Url;

use crate::config::FetchConfig;
use guard::{Guard, GuardedResolver, Refusal};

/// Why a download failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL: {0}")]
    BadUrl(String),
    #[error("refused by the SSRF guard: {0}")]
    Refused(#[from] Refusal),
    #[error("HTTP {0}")]
    Status(u16),
    /// A 429 or 503 that said when to come back.
    #[error("HTTP {status}, Retry-After {} s", retry_after.as_secs())]
    Throttled { status: u16, retry_after: Duration },
    #[error("redirect not followed: {0}")]
    Redirects(String),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// No answer (no response headers) within the time-out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The host answered, then its body did not arrive within the time-out (a trickle).
    #[error("timed out reading the body: {0}")]
    BodyTimeout(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("transfer failed: {0}")]
    Transfer(String),
}

impl FetchError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Status(s) => *s == 429 || *s >= 500,
            FetchError::Throttled { .. } => true,
            FetchError::Timeout(_)
            | FetchError::BodyTimeout(_)
            | FetchError::Connect(_)
            | FetchError::Transfer(_) => true,
            FetchError::BadUrl(_)
            | FetchError::Refused(_)
            | FetchError::TooLarge { .. }
            | FetchError::Redirects(_) => false,
        }
    }

    /// Whether the host did not answer at all (connect, DNS, TLS, or no headers within the
    /// time-out): the record may be held on its host's breaker (see [`hosts`]).
    pub fn no_answer(&self) -> bool {
        matches!(self, FetchError::Connect(_) | FetchError::Timeout(_))
    }

    /// Whether the host answered (a status, a body too large or broken or too slow, a
    /// redirect): the host is up, whatever the record's fate.
    pub fn answered(&self) -> bool {
        matches!(
            self,
            FetchError::Status(_)
                | FetchError::Throttled { .. }
                | FetchError::Redirects(_)
                | FetchError::TooLarge { .. }
                | FetchError::Transfer(_)
                | FetchError::BodyTimeout(_)
        )
    }

    /// A short machine-readable class for dead-letter headers.
    pub fn class(&self) -> String {
        match self {
            FetchError::BadUrl(_) => "bad_url".into(),
            FetchError::Refused(Refusal::Scheme(_)) => "scheme".into(),
            FetchError::Refused(_) => "ssrf".into(),
            FetchError::Status(s) | FetchError::Throttled { status: s, .. } => format!("http_{s}"),
            FetchError::Redirects(_) => "redirects".into(),
            FetchError::TooLarge { .. } => "too_large".into(),
            FetchError::Timeout(_) | FetchError::BodyTimeout(_) => "timeout".into(),
            FetchError::Connect(_) => "connect".into(),
            FetchError::Transfer(_) => "transfer".into(),
        }
    }
}

/// A downloaded body and how many attempts it took.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub attempts: usize,
}

/// The shared HTTP client.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    guard: Guard,
    cfg: FetchConfig,
}

/// The longest `Retry-After` honoured; a server asking for more is retried after this long, so
/// that one slow host does not hold its chunk's offsets for minutes.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// `Retry-After` as delta-seconds (RFC 9110 §10.2.3); an HTTP-date or anything else is unknown.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits but too large for u64: as good as "very long", which the cap handles.
    Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)))
}

/// The error for a non-success response; a 429 or 503 keeps its `Retry-After`.
fn status_error(status: StatusCode, headers: &HeaderMap) -> FetchError {
    let code = status.as_u16();
    if code == 429 || code == 503 {
        let after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if let Some(retry_after) = after {
            return FetchError::Throttled {
                status: code,
                retry_after,
            };
        }
    }
    FetchError::Status(code)
}

/// How long to wait after `err` when the backoff says `backoff`: the server's `Retry-After`
/// when it asks for longer, capped at [`MAX_RETRY_AFTER`].
fn retry_delay(err: &FetchError, backoff: Duration) -> Duration {
    match err {
        FetchError::Throttled { retry_after, .. } => {
            backoff.max((*retry_after).min(MAX_RETRY_AFTER))
        }
        _ => backoff,
    }
}

/// An error and its sources, one after the other (reqwest's own text names only the outer kind).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

fn from_reqwest(e: reqwest::Error) -> FetchError {
    // A refusal raised inside the resolver or the redirect policy surfaces as a source error.
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return FetchError::Refused(r.clone());
        }
        src = s.source();
    }
    // The URL may carry a signature in its query; the caller knows which URL it was.
    let e = e.without_url();
    let text = describe(&e);
    if e.is_builder() {
        // Nothing was sent (e.g. a URL too long for a request line): retrying cannot help.
        FetchError::BadUrl(text)
    } else if e.is_connect() {
        // Before `is_timeout`: a connect time-out is both, and it is about the way to the host
        // (evidence of an egress outage), not a host that accepted and then kept silent.
        FetchError::Connect(text)
    } else if e.is_timeout() {
        FetchError::Timeout(text)
    } else if e.is_redirect() {
        FetchError::Redirects(text)
    } else if e.is_body() || e.is_decode() {
        FetchError::Transfer(text)
    } else {
        FetchError::Connect(text)
    }
}

/// How many characters of a URL [`redact_url`] keeps.
const REDACTED_URL_CHARS: usize = 200;

/// A URL fit for logs and dead-letter messages: without userinfo, query and fragment (signed
/// URLs carry their credentials there), control characters escaped, cut to 200 characters
/// (then `…`). A parseable URL is given in its parsed form (`http://0x7f.1/` becomes
/// `http://127.0.0.1/`).
pub fn redact_url(url: &str) -> String {
    let mut text = match Url::parse(url) {
        Ok(mut u) => {
            // Both fail only for URLs that cannot have userinfo (`mailto:`, `data:`).
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => {
            let end = url.find(['?', '#']).unwrap_or(url.len());
            let url = &url[..end];
            // Userinfo: up to the last '@' of the authority, which starts after "//".
            let start = url.find("//").map_or(0, |i| i + 2);
            let authority_end = url[start..]
                .find(['/', '\\'])
                .map_or(url.len(), |i| start + i);
            let kept = match url[start..authority_end].rfind('@') {
                Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]),
                None => url.to_owned(),
            };
            let mut out = String::with_capacity(kept.len());
            for c in kept.chars() {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        }
    };
    if let Some((cut, _)) = text.char_indices().nth(REDACTED_URL_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> anyhow::Result<Fetcher> {
        for p in &cfg.nat64 {
            guard::check_nat64_prefix(p)
                .map_err(|e| anyhow::anyhow!("--fetch-nat64-prefix: {e}"))?;
        }
        let guard = Guard::new(cfg.allow.clone()).with_nat64(cfg.nat64.clone());
        let redirect_guard = guard.clone();
        let max_redirects = cfg.max_redirects;
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &cfg.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read --fetch-ca-cert {}: {e}", path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!("--fetch-ca-cert {} is not PEM: {e}", path.display())
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "--fetch-ca-cert {} holds no certificate",
                path.display()
            );
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = builder
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("ocrfleet/", env!("CARGO_PKG_VERSION")))
            // No proxy from the environment: see the module documentation.
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    return attempt.error(format!("more than {max_redirects} redirects"));
                }
                match redirect_guard.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(r) => attempt.error(r),
                }
            }))
            .build()?;
        Ok(Fetcher { client, guard, cfg })
    }

    /// Downloads `url` with retries.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, (FetchError, usize)> {
        self.fetch_with(url, backon::TokioSleeper, self.cfg.attempts, None)
            .await
    }

    /// Downloads `url` with at most `attempts` attempts, telling `hosts` what each attempt
    /// says about its host `origin` (answered, or a connection that failed) and giving up the
    /// retries as soon as that host's breaker is open (see [`hosts`]).
    pub async fn fetch_watched(
        &self,
        url: &str,
        attempts: usize,
        hosts: &hosts::Hosts,
        origin: &str,
    ) -> Result<Fetched, (FetchError, usize)> {
        self.fetch_with(url, backon::TokioSleeper, attempts, Some((hosts, origin)))
            .await
    }

    /// [`Fetcher::fetch`] with the sleep between attempts supplied, so that tests can see the
    /// delays without waiting for them.
    async fn fetch_with<S: backon::Sleeper>(
        &self,
        url: &str,
        sleeper: S,
        max_attempts: usize,
        watch: Option<(&hosts::Hosts, &str)>,
    ) -> Result<Fetched, (FetchError, usize)> {
        let parsed = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return Err((FetchError::BadUrl(e.to_string()), 0)),
        };
        if let Err(r) = self.guard.check_url(&parsed) {
            return Err((r.into(), 0));
        }
        let logged = redact_url(url);
        let attempts = AtomicUsize::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.cfg.backoff)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(max_attempts.max(1) - 1)
            .with_jitter();
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let r = self.fetch_once(parsed.clone()).await;
            if let Some((hosts, origin)) = watch {
                match &r {
                    Ok(_) => hosts.answered(origin),
                    Err(e) if e.answered() => hosts.answered(origin),
                    Err(FetchError::Connect(_)) => hosts.connect_failed(origin),
                    Err(_) => {}
                }
            }
            r
        })
        .retry(backoff)
        .sleep(sleeper)
        // A host whose breaker opened meanwhile is probed by one record at a time; this
        // download stops and is held with the others instead of keeping its slot.
        .when(|e| e.retryable() && !watch.is_some_and(|(h, o)| e.no_answer() && h.is_open(o)))
        // `None` means no attempt left; keep it.
        .adjust(|e, d| d.map(|d| retry_delay(e, d)))
        .notify(|e, d| tracing::debug!(url = %logged, error = %e, retry_in = ?d, "fetch retry"))
        .await;
        let n = attempts.load(Ordering::Relaxed);
        result
            .map(|bytes| Fetched { bytes, attempts: n })
            .map_err(|e| (e, n))
    }

    async fn fetch_once(&self, url: Url) -> Result<Vec<u8>, FetchError> {
        let mut resp = self.client.get(url).send().await.map_err(from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(status, resp.headers()));
        }
        let limit = self.cfg.max_bytes;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut body =
            Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024).min(limit) as usize);
        // The host has answered: a failure from here on is this body's, not a silent host.
        let body_error = |e: reqwest::Error| match from_reqwest(e) {
            FetchError::Timeout(t) => FetchError::BodyTimeout(t),
            FetchError::Connect(t) => FetchError::Transfer(t),
            other => other,
        };
        while let Some(chunk) = resp.chunk().await.map_err(body_error)? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The tests' one loopback HTTP server (shared with the crate's integration tests).
#[cfg(test)]
#[path = "../../tests/common/loopback.rs"]
pub(crate) mod loopback;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_logs() {
        // The Elasticsearch URL is logged through the same redaction as image URLs.
        assert_eq!(
            redact_url("https://elastic:hunter2@es.example:9200/"),
            "https://es.example:9200/"
        );
        let shown = redact_url("http://user:secret@[::1]:9200");
        assert!(
            !shown.contains("secret") && !shown.contains("user"),
            "{shown}"
        );
    }
    use std::sync::{Arc, Mutex};

    use super::loopback::{response, Loopback};

    fn config(attempts: usize, max_redirects: usize) -> FetchConfig {
        FetchConfig {
            concurrency: 4,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            attempts,
            backoff: Duration::from_millis(10),
            max_bytes: 1 << 20,
            max_redirects,
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            nat64: Vec::new(),
            ca_cert: None,
            hosts: Default::default(),
            probe_url: None,
        }
    }

    /// Answers request `n` (from 0) with `reply(n)` on 127.0.0.1 (the tests' one loopback
    /// server: crates/worker/tests/common/loopback.rs).
    async fn serve(reply: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) -> Loopback {
        Loopback::start("127.0.0.1", move |n, _| reply(n)).await
    }

    /// A sleeper that records the delays it is asked for and returns at once.
    fn recording_sleeper() -> (impl backon::Sleeper, Arc<Mutex<Vec<Duration>>>) {
        let slept = Arc::new(Mutex::new(Vec::new()));
        let log = slept.clone();
        let sleeper = move |d: Duration| {
            log.lock().unwrap().push(d);
            std::future::ready(())
        };
        (sleeper, slept)
    }

    #[test]
    fn retry_after_is_parsed_as_delta_seconds_only() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        for v in ["", "-1", "+1", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(v), None, "{v:?}");
        }
    }

    #[test]
    fn retry_after_applies_to_429_and_503_only() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        let two = Duration::from_secs(2);
        assert_eq!(
            status_error(StatusCode::TOO_MANY_REQUESTS, &h).to_string(),
            FetchError::Throttled {
                status: 429,
                retry_after: two
            }
            .to_string()
        );
        assert!(matches!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, &h),
            FetchError::Throttled { status: 503, .. }
        ));
        assert!(matches!(
            status_error(StatusCode::NOT_FOUND, &h),
            FetchError::Status(404)
        ));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert!(matches!(
            status_error(StatusCode::TOO_MANY_REQUESTS, &h),
            FetchError::Status(429)
        ));
    }

    #[test]
    fn retry_delay_honours_retry_after_within_bounds() {
        let backoff = Duration::from_millis(300);
        let throttled = |s| FetchError::Throttled {
            status: 429,
            retry_after: Duration::from_secs(s),
        };
        assert_eq!(retry_delay(&throttled(1), backoff), Duration::from_secs(1));
        assert_eq!(retry_delay(&throttled(3600), backoff), MAX_RETRY_AFTER);
        assert_eq!(retry_delay(&throttled(0), backoff), backoff);
        assert_eq!(retry_delay(&FetchError::Status(503), backoff), backoff);
    }

    #[test]
    fn classes_and_retryability() {
        let cases = [
            (FetchError::Redirects("loop".into()), "redirects", false),
            (FetchError::BadUrl("too long".into()), "bad_url", false),
            (
                FetchError::Throttled {
                    status: 429,
                    retry_after: Duration::from_secs(1),
                },
                "http_429",
                true,
            ),
            (FetchError::Status(404), "http_404", false),
            (FetchError::Connect("refused".into()), "connect", true),
        ];
        for (e, class, retryable) in cases {
            assert_eq!(e.class(), class, "{e}");
            assert_eq!(e.retryable(), retryable, "{e}");
        }
    }

    #[test]
    fn redact_url_drops_credentials_and_bounds_length() {
        assert_eq!(
            redact_url("https://user:secret@bucket.example.com/a.png?X-Amz-Signature=abc&X-Amz-Credential=k#frag"),
            "https://bucket.example.com/a.png"
        );
        // Not a URL (space in the host): cut by hand, control characters escaped.
        assert_eq!(
            redact_url("http://us er:pw@ho st/x?token=1"),
            "http://ho st/x"
        );
        assert_eq!(redact_url("no url\n at all#x"), "no url\\n at all");
        let long = format!("http://h/{}?sig=s", "é".repeat(500));
        let r = redact_url(&long);
        assert_eq!(r.chars().count(), REDACTED_URL_CHARS + 1);
        assert!(r.starts_with("http://h/%C3%A9") && r.ends_with('…'), "{r}");
        assert!(!r.contains("sig"));
        let raw = format!("not a url {}", "x".repeat(500));
        assert_eq!(redact_url(&raw).chars().count(), REDACTED_URL_CHARS + 1);
    }

    /// A 429 with `Retry-After: 1` waits one second (not the 10 ms backoff) before the retry.
    #[tokio::test]
    async fn retry_after_sets_the_delay() {
        let server = serve(|n| match n {
            0 => response("429 Too Many Requests", "Retry-After: 1\r\n", b""),
            1 => response("503 Service Unavailable", "Retry-After: 3600\r\n", b""),
            _ => response("200 OK", "", b"ok"),
        })
        .await;
        let addr = server.addr;
        let fetcher = Fetcher::new(config(4, 5)).unwrap();
        let (sleeper, slept) = recording_sleeper();
        let got = fetcher
            .fetch_with(&format!("http://{addr}/a.png"), sleeper, 4, None)
            .await
            .unwrap();
        assert_eq!(got.bytes, b"ok");
        assert_eq!(got.attempts, 3);
        assert_eq!(server.requests(), 3);
        assert_eq!(
            *slept.lock().unwrap(),
            vec![Duration::from_secs(1), MAX_RETRY_AFTER]
        );
    }

    /// A redirect loop fails once, as `redirects`, after `max_redirects` hops.
    #[tokio::test]
    async fn redirect_loop_is_not_retried() {
        let server = serve(|_| response("302 Found", "Location: /loop\r\n", b"")).await;
        let addr = server.addr;
        let fetcher = Fetcher::new(config(4, 2)).unwrap();
        let (sleeper, slept) = recording_sleeper();
        let (e, attempts) = fetcher
            .fetch_with(&format!("http://{addr}/loop"), sleeper, 4, None)
            .await
            .unwrap_err();
        assert_eq!(e.class(), "redirects", "{e}");
        assert_eq!(attempts, 1);
        assert_eq!(server.requests(), 3);
        assert!(slept.lock().unwrap().is_empty());
    }

    /// A URL too long for a request line is refused before anything is sent, and not retried.
    #[tokio::test]
    async fn unbuildable_request_is_bad_url() {
        let server = serve(|_| response("200 OK", "", b"ok")).await;
        let addr = server.addr;
        let fetcher = Fetcher::new(config(4, 5)).unwrap();
        let url = format!("http://{addr}/{}", "a".repeat(100_000));
        let (e, attempts) = fetcher.fetch(&url).await.unwrap_err();
        assert_eq!(e.class(), "bad_url", "{e}");
        assert_eq!(attempts, 1);
        assert_eq!(server.requests(), 0);
    }

    /// Error texts do not repeat the URL, whose query may be a signature.
    #[tokio::test]
    async fn errors_leave_the_url_out() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let fetcher = Fetcher::new(config(1, 5)).unwrap();
        let (e, _) = fetcher
            .fetch(&format!("http://{addr}/a.png?X-Amz-Signature=SECRET"))
            .await
            .unwrap_err();
        assert_eq!(e.class(), "connect", "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
