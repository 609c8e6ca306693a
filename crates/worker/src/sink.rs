//! The Elasticsearch sink (official `elasticsearch` crate).
//!
//! - At start the index template is created (or updated) and read back to verify it.
//! - Bulk requests use deterministic `_id`s, so a redelivered message overwrites its document.
//! - Every item's result is read: HTTP 200 with `errors: true` is not success. Items rejected
//!   with 429 or 5xx (and whole requests that fail) are retried with backoff, without limit,
//!   because a message may only be committed once it is indexed or dead-lettered; other 4xx
//!   items are returned as rejections for the dead-letter topic.

use std::time::{Duration, Instant};

use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{IndicesGetIndexTemplateParts, IndicesPutIndexTemplateParts};
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::{json, Value};

use crate::config::EsConfig;
use crate::metrics::Metrics;

/// Version of the index template this worker writes; bump when the mapping changes.
pub const TEMPLATE_VERSION: u64 = 1;

/// How one bulk item ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    Ok,
    /// Transient (429, 5xx, missing result): send again.
    Retry(String),
    /// Permanent rejection (4xx): dead-letter it.
    Reject {
        status: u16,
        reason: String,
    },
}

/// Reads a bulk response. `status` is the HTTP status, `body` the parsed JSON (or `Null`), `n`
/// the number of items sent.
pub fn classify_bulk_response(status: u16, body: &Value, n: usize) -> Vec<ItemResult> {
    if status == 429 || status >= 500 || !(200..300).contains(&status) && body.is_null() {
        return vec![ItemResult::Retry(format!("bulk request failed with HTTP {status}")); n];
    }
    if !(200..300).contains(&status) {
        // A request-level 4xx (e.g. a malformed body) is not about one item; retrying cannot
        // fix it, so every item is rejected with the reason.
        let reason = body["error"]["reason"]
            .as_str()
            .unwrap_or("bulk request rejected")
            .to_owned();
        return vec![ItemResult::Reject { status, reason }; n];
    }
    let items = body["items"].as_array();
    (0..n)
        .map(|i| {
            let Some(item) = items.and_then(|a| a.get(i)) else {
                return ItemResult::Retry("no result for this item in the bulk response".into());
            };
            // The action key is "index" (or "create"/"update"); take whichever is there.
            let r = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or(Value::Null);
            let st = r["status"].as_u64().unwrap_or(0) as u16;
            match st {
                200..=299 => ItemResult::Ok,
                429 => ItemResult::Retry("429 too many requests".into()),
                s if s >= 500 || s == 0 => ItemResult::Retry(format!(
                    "item status {s}: {}",
                    r["error"]["reason"].as_str().unwrap_or("")
                )),
                s => ItemResult::Reject {
                    status: s,
                    reason: format!(
                        "{}: {}",
                        r["error"]["type"].as_str().unwrap_or("error"),
                        r["error"]["reason"].as_str().unwrap_or("rejected")
                    ),
                },
            }
        })
        .collect()
}

/// The index template body.
pub fn index_template(index: &str) -> Value {
    let cjk = json!({"type": "text", "analyzer": "cjk", "fields": {"std": {"type": "text", "analyzer": "standard"}}});
    let f = json!({"type": "float"});
    json!({
        "index_patterns": [index, format!("{index}-*")],
        "priority": 200,
        "_meta": {"managed_by": "ocrfleet", "version": TEMPLATE_VERSION},
        "template": {
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "url": {"type": "keyword"},
                    "message_id": {"type": "keyword"},
                    "text": cjk,
                    "lines": {"properties": {
                        "text": {"type": "text", "analyzer": "cjk"},
                        "score": f,
                        "box": {"type": "integer"}
                    }},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "metadata": {"type": "object", "dynamic": true},
                    "headers": {"type": "object", "enabled": false},
                    "source": {"properties": {
                        "topic": {"type": "keyword"},
                        "partition": {"type": "integer"},
                        "offset": {"type": "long"},
                        "timestamp": {"type": "date", "format": "epoch_millis"}
                    }},
                    "model": {"type": "keyword"},
                    "contract": {"type": "integer"},
                    "worker": {"type": "keyword"},
                    "attempts": {"type": "integer"},
                    "timings_ms": {"properties": {
                        "fetch": f, "decode": f, "det": f, "crop": f, "cls": f, "rec": f, "total": f
                    }},
                    "processed_at": {"type": "date"}
                }
            }
        }
    })
}

/// A client for one index.
#[derive(Clone)]
pub struct EsSink {
    client: Elasticsearch,
    index: String,
    metrics: Metrics,
}

impl EsSink {
    pub fn new(cfg: &EsConfig, metrics: Metrics) -> anyhow::Result<EsSink> {
        let url = url::Url::parse(&cfg.url)
            .map_err(|e| anyhow::anyhow!("bad --es-url {:?}: {e}", cfg.url))?;
        let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_secs(60));
        if let Some(k) = &cfg.api_key {
            b = b.auth(Credentials::EncodedApiKey(k.0.clone()));
        } else if let Some(u) = &cfg.username {
            let p = cfg
                .password
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_default();
            b = b.auth(Credentials::Basic(u.clone(), p));
        }
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read --es-ca-cert {}: {e}", ca.display()))?;
            b = b.cert_validation(CertificateValidation::Full(Certificate::from_pem(&pem)?));
        }
        Ok(EsSink {
            client: Elasticsearch::new(b.build()?),
            index: cfg.index.clone(),
            metrics,
        })
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
                "Elasticsearch refused the index template {:?} (HTTP {code}): {text}",
                self.index
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

    /// Whether Elasticsearch answers.
    pub async fn ping(&self) -> bool {
        matches!(self.client.ping().send().await, Ok(r) if r.status_code().is_success())
    }

    /// Indexes `docs` (`(_id, body)`), retrying transient failures until they succeed.
    /// Returns, per doc, `None` when indexed or `Some((status, reason))` when rejected.
    pub async fn index(&self, docs: &[(String, Value)]) -> Vec<Option<(u16, String)>> {
        let mut out: Vec<Option<Option<(u16, String)>>> = vec![None; docs.len()];
        let mut todo: Vec<usize> = (0..docs.len()).collect();
        let mut delays = crate::retry::unbounded(Duration::from_millis(100));
        while !todo.is_empty() {
            let t = Instant::now();
            let mut body: Vec<JsonBody<Value>> = Vec::with_capacity(todo.len() * 2);
            for &i in &todo {
                body.push(json!({"index": {"_id": docs[i].0}}).into());
                body.push(docs[i].1.clone().into());
            }
            let (status, json) = match self
                .client
                .bulk(BulkParts::Index(&self.index))
                .body(body)
                .send()
                .await
            {
                Ok(r) => {
                    let s = r.status_code().as_u16();
                    (s, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bulk request failed; retrying");
                    (0, Value::Null)
                }
            };
            self.metrics
                .stage_seconds
                .with_label_values(&["index"])
                .observe(t.elapsed().as_secs_f64());
            self.metrics
                .batch_size
                .with_label_values(&["index"])
                .observe(todo.len() as f64);
            let results = if status == 0 {
                vec![ItemResult::Retry("transport error".into()); todo.len()]
            } else {
                classify_bulk_response(status, &json, todo.len())
            };
            let mut retry = Vec::new();
            for (&i, r) in todo.iter().zip(results) {
                match r {
                    ItemResult::Ok => out[i] = Some(None),
                    ItemResult::Reject { status, reason } => out[i] = Some(Some((status, reason))),
                    ItemResult::Retry(reason) => {
                        tracing::debug!(id = %docs[i].0, reason, "bulk item will be retried");
                        retry.push(i);
                    }
                }
            }
            if !retry.is_empty() {
                self.metrics.es_retries.inc_by(retry.len() as u64);
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(items = retry.len(), retry_in = ?delay, "Elasticsearch did not take some items; retrying");
                tokio::time::sleep(delay).await;
            }
            todo = retry;
        }
        out.into_iter()
            .map(|o| o.expect("every doc resolved"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_200_with_item_errors_is_not_success() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 201}},
            {"index": {"_id": "b", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [metadata.x]"}}},
            {"index": {"_id": "c", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"index": {"_id": "d", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "no shard"}}},
            {"index": {"_id": "e", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}}
        ]});
        let r = classify_bulk_response(200, &body, 6);
        assert_eq!(r[0], ItemResult::Ok);
        assert!(
            matches!(&r[1], ItemResult::Reject { status: 400, reason } if reason.contains("mapper_parsing_exception"))
        );
        assert!(matches!(r[2], ItemResult::Retry(_)));
        assert!(matches!(r[3], ItemResult::Retry(_)));
        assert!(matches!(r[4], ItemResult::Reject { status: 409, .. }));
        assert!(
            matches!(r[5], ItemResult::Retry(_)),
            "missing item result must be retried"
        );
    }

    #[test]
    fn request_level_failures() {
        assert!(classify_bulk_response(503, &Value::Null, 2)
            .iter()
            .all(|r| matches!(r, ItemResult::Retry(_))));
        assert!(classify_bulk_response(429, &json!({}), 1)
            .iter()
            .all(|r| matches!(r, ItemResult::Retry(_))));
        let r = classify_bulk_response(400, &json!({"error": {"reason": "bad body"}}), 1);
        assert!(
            matches!(&r[0], ItemResult::Reject { status: 400, reason } if reason == "bad body")
        );
    }

    #[test]
    fn template_is_strict_with_cjk_text() {
        let t = index_template("ocr");
        assert_eq!(t["index_patterns"][0], "ocr");
        assert_eq!(t["template"]["mappings"]["dynamic"], "strict");
        assert_eq!(
            t["template"]["mappings"]["properties"]["text"]["analyzer"],
            "cjk"
        );
    }
}
