//! The Elasticsearch client (official `elasticsearch` crate): the index template at start, the
//! readiness probe, and one bulk request at a time. Retries and their fault reporting live in
//! the sink stage; this file only talks HTTP.
//!
//! Privileges: everything here works with the least-privilege role of
//! `deploy/docs/production.md` (`manage_index_templates` on the cluster; `create_index`,
//! `index`, `write` on the indices). The readiness probe is `GET _index_template/<index>`,
//! which that role allows (the old `HEAD /` needed `monitor`, so pods never became Ready), and
//! which fails with 401 when an API key has expired.

use std::time::{Duration, Instant};

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{
    IndicesGetIndexTemplateParts, IndicesPutIndexTemplateParts, IndicesPutMappingParts,
};
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::Value;

use super::document::{additive_mapping, index_template, TEMPLATE_VERSION};
use crate::config::EsConfig;
use crate::fetch::redact_url;
use crate::metrics::Metrics;

/// A client for one index.
#[derive(Clone)]
pub struct EsClient {
    client: Elasticsearch,
    index: String,
    metrics: Metrics,
}

impl EsClient {
    pub fn new(cfg: &EsConfig, metrics: Metrics) -> anyhow::Result<EsClient> {
        let url = url::Url::parse(&cfg.url)
            .map_err(|e| anyhow::anyhow!("bad --es-url {:?}: {e}", redact_url(&cfg.url)))?;
        let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_secs(60));
        if let Some(k) = &cfg.api_key {
            b = b.auth(Credentials::EncodedApiKey(k.expose().to_owned()));
        } else if let Some(u) = &cfg.username {
            let p = cfg
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            b = b.auth(Credentials::Basic(u.clone(), p));
        }
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read --es-ca-cert {}: {e}", ca.display()))?;
            b = b.cert_validation(CertificateValidation::Full(Certificate::from_pem(&pem)?));
        }
        Ok(EsClient {
            client: Elasticsearch::new(b.build()?),
            index: cfg.index.clone(),
            metrics,
        })
    }

    pub fn index(&self) -> &str {
        &self.index
    }

    /// Creates or updates the index template, then reads it back.
    pub async fn ensure_template(&self) -> anyhow::Result<()> {
        let r = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&self.index))
            .body(index_template(&self.index))
            .send()
            .await?;
        if !r.status_code().is_success() {
            let code = r.status_code();
            let text = r.text().await.unwrap_or_default();
            anyhow::bail!(
                "Elasticsearch refused the index template {:?} (HTTP {code}): {}",
                self.index,
                crate::failure::truncate(&text, 500)
            );
        }
        let got: Value = self
            .client
            .indices()
            .get_index_template(IndicesGetIndexTemplateParts::Name(&self.index))
            .send()
            .await?
            .json()
            .await?;
        let version = got["index_templates"][0]["index_template"]["_meta"]["version"].as_u64();
        anyhow::ensure!(
            version == Some(TEMPLATE_VERSION),
            "index template {:?} reads back with version {version:?}, expected {TEMPLATE_VERSION}",
            self.index
        );
        self.add_new_fields().await;
        Ok(())
    }

    /// Adds the fields that newer templates brought to an index made by an older one
    /// ([`additive_mapping`]), so that its documents are not refused. Best effort: an index
    /// that does not exist yet will be made from the template; a role without `manage` on the
    /// index gets a warning, and documents then wait on the retry path (never the dead-letter
    /// topic) until the index is rolled over or the mapping is updated.
    async fn add_new_fields(&self) {
        let r = self
            .client
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&[&self.index]))
            .body(additive_mapping())
            .send()
            .await;
        match r {
            Ok(r) if r.status_code().is_success() => {
                tracing::debug!(index = %self.index, "index mapping has every field of this worker's documents")
            }
            Ok(r) if r.status_code().as_u16() == 404 => {}
            Ok(r) => {
                let code = r.status_code().as_u16();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(
                    index = %self.index,
                    "could not add this worker's new fields to the existing index (HTTP {code}: {}); \
                     if the index predates template version {TEMPLATE_VERSION}, documents will wait \
                     until its mapping is updated or it is rolled over (deploy/docs/production.md)",
                    crate::failure::truncate(&text, 300)
                );
            }
            Err(e) => {
                tracing::warn!(index = %self.index, "could not update the index mapping: {e}")
            }
        }
    }

    /// The readiness probe: Elasticsearch answers, and accepts our credentials.
    pub async fn probe(&self) -> Result<(), String> {
        match self
            .client
            .indices()
            .get_index_template(IndicesGetIndexTemplateParts::Name(&self.index))
            .send()
            .await
        {
            Ok(r) if r.status_code().is_success() => Ok(()),
            Ok(r) => {
                let code = r.status_code().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                Err(format!(
                    "readiness probe GET _index_template/{}: HTTP {code} {}",
                    self.index,
                    crate::failure::truncate(&String::from_utf8_lossy(&body), 200)
                ))
            }
            Err(e) => Err(format!("readiness probe: {e}")),
        }
    }

    /// Sends one bulk request (`ndjson`: action and document lines, newline-terminated) of
    /// `docs` documents. Returns the HTTP status (or the transport error) and the body.
    pub async fn bulk(&self, ndjson: Vec<u8>, docs: usize) -> (Result<u16, String>, Vec<u8>) {
        let t = Instant::now();
        let r = self
            .client
            .bulk(BulkParts::Index(&self.index))
            .body(vec![ndjson])
            .send()
            .await;
        let out = match r {
            Ok(r) => {
                let s = r.status_code().as_u16();
                match r.bytes().await {
                    Ok(b) => (Ok(s), b.to_vec()),
                    Err(e) => (Err(format!("reading the answer: {e}")), Vec::new()),
                }
            }
            Err(e) => (Err(e.to_string()), Vec::new()),
        };
        self.metrics
            .stage_seconds
            .with_label_values(&["index"])
            .observe(t.elapsed().as_secs_f64());
        self.metrics
            .batch_size
            .with_label_values(&["index"])
            .observe(docs as f64);
        out
    }
}
