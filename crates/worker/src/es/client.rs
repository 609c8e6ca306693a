//! The Elasticsearch client (official `elasticsearch` crate): the index template at start, the
//! readiness probe, and one bulk request at a time. Retries and their fault reporting live in
//! the sink stage; this file only talks HTTP.
//!
//! Privileges: everything here works with the least-privilege roles of
//! `deploy/docs/production.md`: with `--manage-template` (the default), `manage_index_templates`
//! on the cluster and `manage`, `index` on `<index>*`; without it, `index` and
//! `view_index_metadata` on the index or alias only. The readiness probe is `HEAD /<index>`,
//! which both allow (the old `HEAD /` needed `monitor`, so pods never became Ready), and which
//! fails with 401 when an API key has expired.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsAliasParts, IndicesExistsParts, IndicesGetIndexTemplateParts,
    IndicesPutIndexTemplateParts, IndicesPutMappingParts,
};
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::Value;

use super::bulk::{Answer, NoAnswer, Reply};
use super::document::{additive_mapping, plan_template, TemplatePlan, TEMPLATE_VERSION};
use crate::config::EsConfig;
use crate::fetch::redact_url;
use crate::metrics::Metrics;

/// What `--es-index` names.
enum Target {
    Alias,
    Index,
    Missing,
}

/// A client for one index.
#[derive(Clone)]
pub struct EsClient {
    client: Elasticsearch,
    index: String,
    metrics: Metrics,
    /// Set at start when `--es-index` is an alias: the probe then checks that it still is one.
    /// If the alias is deleted while auto-create is on, the next write creates a concrete index
    /// under its name (the index template does not match that name, so it gets no mapping of
    /// ours); the probe reports it within seconds and intake pauses until an operator puts the
    /// alias back (deploy/docs/production.md). `require_alias` on the bulk requests would
    /// refuse such writes outright; noida-db, the test server here, resolves the alias before
    /// checking it and refuses every write, so it is not sent.
    is_alias: Arc<AtomicBool>,
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
            is_alias: Arc::default(),
        })
    }

    pub fn index(&self) -> &str {
        &self.index
    }

    /// Start-up: makes sure `--es-index` can be written (see `--manage-template`). With
    /// `manage`: the template is installed when missing or older (an operator's settings kept,
    /// [`plan_template`]) and left alone otherwise; when neither an index nor an alias of that
    /// name exists, `<index>-000001` is created with `<index>` as its write alias; the fields
    /// newer templates brought are added to the existing index. Without `manage` nothing is
    /// changed, and a missing index or alias is an error (the caller reports it and retries).
    pub async fn prepare(&self, manage: bool) -> anyhow::Result<()> {
        if manage {
            self.ensure_template().await?;
        }
        match self.target().await? {
            Target::Alias => {
                self.is_alias.store(true, Ordering::Relaxed);
                tracing::info!(alias = %self.index, "writing through the alias")
            }
            Target::Index => tracing::info!(
                index = %self.index,
                "writing to a concrete index (not an alias): to roll over later, see deploy/docs/production.md"
            ),
            Target::Missing if manage => {
                self.create_first_index().await?;
                self.is_alias.store(true, Ordering::Relaxed);
            }
            Target::Missing => anyhow::bail!(
                "neither an index nor an alias named {:?} exists, and --manage-template is false: create it (deploy/docs/production.md)",
                self.index
            ),
        }
        if manage {
            self.add_new_fields().await;
        }
        Ok(())
    }

    async fn ensure_template(&self) -> anyhow::Result<()> {
        let r = self
            .client
            .indices()
            .get_index_template(IndicesGetIndexTemplateParts::Name(&self.index))
            .send()
            .await?;
        let found: Option<Value> = match r.status_code().as_u16() {
            404 => None,
            c if (200..300).contains(&c) => {
                let v: Value = r.json().await?;
                Some(v["index_templates"][0]["index_template"].clone())
            }
            code => {
                let text = r.text().await.unwrap_or_default();
                anyhow::bail!(
                    "cannot read the index template {:?} (HTTP {code}): {}",
                    self.index,
                    crate::failure::truncate(&text, 500)
                );
            }
        };
        let from = found.as_ref().and_then(|f| f["_meta"]["version"].as_u64());
        match plan_template(&self.index, found.as_ref()) {
            TemplatePlan::Keep => {
                tracing::info!(template = %self.index, version = TEMPLATE_VERSION, "index template is current; left as it is (settings added since are kept)");
                Ok(())
            }
            TemplatePlan::Foreign(why) => {
                tracing::warn!(template = %self.index, "{why}");
                Ok(())
            }
            TemplatePlan::Put(body) => {
                self.put_template(body).await?;
                match from {
                    None => {
                        tracing::info!(template = %self.index, version = TEMPLATE_VERSION, "index template installed")
                    }
                    Some(v) => {
                        tracing::info!(template = %self.index, from = v, to = TEMPLATE_VERSION, "index template upgraded (the older one's settings, composed_of, aliases and _meta kept)")
                    }
                }
                Ok(())
            }
        }
    }

    async fn put_template(&self, body: Value) -> anyhow::Result<()> {
        let r = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&self.index))
            .body(body)
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
        Ok(())
    }

    /// Whether `--es-index` names an alias, an index, or nothing yet.
    async fn target(&self) -> anyhow::Result<Target> {
        let alias = self
            .client
            .indices()
            .exists_alias(IndicesExistsAliasParts::Name(&[&self.index]))
            .send()
            .await?
            .status_code()
            .as_u16();
        if alias == 200 {
            return Ok(Target::Alias);
        }
        let index = self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[&self.index]))
            .send()
            .await?
            .status_code()
            .as_u16();
        match (alias, index) {
            (_, 200) => Ok(Target::Index),
            (404, 404) => Ok(Target::Missing),
            (a, i) => anyhow::bail!(
                "cannot tell whether {:?} exists: HTTP {a} for the alias, {i} for the index",
                self.index
            ),
        }
    }

    /// Creates `<index>-000001` with `<index>` as its write alias; a concurrent start that made
    /// it first is fine.
    async fn create_first_index(&self) -> anyhow::Result<()> {
        let first = format!("{}-000001", self.index);
        let r = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(&first))
            .body(serde_json::json!({"aliases": {&self.index: {"is_write_index": true}}}))
            .send()
            .await?;
        let code = r.status_code().as_u16();
        if (200..300).contains(&code) {
            tracing::info!(index = %first, alias = %self.index, "created the first index and its write alias");
            return Ok(());
        }
        let text = r.text().await.unwrap_or_default();
        if code == 400
            && text.contains("resource_already_exists_exception")
            && matches!(self.target().await?, Target::Alias)
        {
            return Ok(());
        }
        anyhow::bail!(
            "cannot create index {first:?} with write alias {:?} (HTTP {code}): {}",
            self.index,
            crate::failure::truncate(&text, 500)
        )
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

    /// The readiness probe: Elasticsearch answers, accepts our credentials, and the index or
    /// alias exists (`HEAD /<index>`, which needs `view_index_metadata` or `manage` on it; a
    /// 401 shows an expired API key).
    pub async fn probe(&self) -> Result<(), String> {
        if self.is_alias.load(Ordering::Relaxed) {
            match self
                .client
                .indices()
                .exists_alias(IndicesExistsAliasParts::Name(&[&self.index]))
                .send()
                .await
            {
                Ok(r) if r.status_code().as_u16() == 404 => {
                    return Err(format!(
                        "the write alias {:?} is gone (deleted, or a concrete index took its name): put it back on the newest index; nothing is written until then (deploy/docs/production.md)",
                        self.index
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("readiness probe: {e}")),
            }
        }
        match self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[&self.index]))
            .send()
            .await
        {
            Ok(r) if r.status_code().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "readiness probe HEAD /{}: HTTP {}{}",
                self.index,
                r.status_code().as_u16(),
                if r.status_code().as_u16() == 404 {
                    " (the index or alias is gone)"
                } else {
                    ""
                }
            )),
            Err(e) => Err(format!("readiness probe: {e}")),
        }
    }

    /// Sends one bulk request (`ndjson`: action and document lines, newline-terminated) of
    /// `docs` documents. Returns the HTTP status (or the transport error) and the body.
    pub async fn bulk(&self, ndjson: Vec<u8>, docs: usize) -> Reply {
        let t = Instant::now();
        let r = self
            .client
            .bulk(BulkParts::Index(&self.index))
            .body(vec![ndjson])
            .send()
            .await;
        let out = match r {
            Ok(r) => {
                let status = r.status_code().as_u16();
                match r.bytes().await {
                    Ok(b) => Ok(Answer {
                        status,
                        body: b.to_vec(),
                    }),
                    Err(e) => Err(NoAnswer::Read {
                        status,
                        message: e.to_string(),
                    }),
                }
            }
            Err(e) => Err(NoAnswer::Send(e.to_string())),
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
