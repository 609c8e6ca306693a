//! Downloading images: one reqwest connection pool, bounded attempts with exponential backoff
//! and jitter (the `backon` crate) on time-outs, connection errors, 5xx and 429; bodies are
//! streamed and cut off at a size cap; redirects are limited and re-checked by the SSRF guard.

pub mod guard;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
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
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("timed out: {0}")]
    Timeout(String),
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
            FetchError::Timeout(_) | FetchError::Connect(_) | FetchError::Transfer(_) => true,
            FetchError::BadUrl(_) | FetchError::Refused(_) | FetchError::TooLarge { .. } => false,
        }
    }

    /// A short machine-readable class for dead-letter headers.
    pub fn class(&self) -> String {
        match self {
            FetchError::BadUrl(_) => "bad_url".into(),
            FetchError::Refused(Refusal::Scheme(_)) => "scheme".into(),
            FetchError::Refused(_) => "ssrf".into(),
            FetchError::Status(s) => format!("http_{s}"),
            FetchError::TooLarge { .. } => "too_large".into(),
            FetchError::Timeout(_) => "timeout".into(),
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

fn from_reqwest(e: reqwest::Error) -> FetchError {
    // A refusal raised inside the resolver or the redirect policy surfaces as a source error.
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return FetchError::Refused(r.clone());
        }
        src = s.source();
    }
    if e.is_timeout() {
        FetchError::Timeout(e.to_string())
    } else if e.is_connect() {
        FetchError::Connect(e.to_string())
    } else if e.is_redirect() {
        FetchError::Transfer(format!("redirect: {e}"))
    } else if e.is_body() || e.is_decode() {
        FetchError::Transfer(e.to_string())
    } else {
        FetchError::Connect(e.to_string())
    }
}

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> anyhow::Result<Fetcher> {
        let guard = Guard::new(cfg.allow.clone());
        let redirect_guard = guard.clone();
        let max_redirects = cfg.max_redirects;
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("ocrfleet/", env!("CARGO_PKG_VERSION")))
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
        let parsed = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return Err((FetchError::BadUrl(e.to_string()), 0)),
        };
        if let Err(r) = self.guard.check_url(&parsed) {
            return Err((r.into(), 0));
        }
        let attempts = AtomicUsize::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.cfg.backoff)
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.cfg.attempts.saturating_sub(1))
            .with_jitter();
        let result = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.fetch_once(parsed.clone()).await
        })
        .retry(backoff)
        .when(FetchError::retryable)
        .notify(|e, d| tracing::debug!(url, error = %e, retry_in = ?d, "fetch retry"))
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
            return Err(FetchError::Status(status.as_u16()));
        }
        let limit = self.cfg.max_bytes;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut body =
            Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024).min(limit) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(from_reqwest)? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
