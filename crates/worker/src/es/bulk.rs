//! Bulk requests: how documents are grouped into requests (by count *and* bytes), and how a
//! response is read. Pure functions over a typed response, tested on canned answers.
//!
//! The decision table (see [`crate::failure`] for what each kind leads to):
//!
//! | answer | meaning |
//! |---|---|
//! | HTTP 2xx, item 2xx | indexed |
//! | HTTP 2xx, item 409 `version_conflict_engine_exception` | superseded: a newer record's document is there (external versioning); finished, not a failure |
//! | HTTP 2xx, item 429 or 5xx, or no item result | retry that item (infrastructure) |
//! | HTTP 2xx, item 400 `strict_dynamic_mapping_exception` within `metadata` or `headers` | an operator's strict template refuses a field the producer sent: the record is bad, dead letter (stage `index`) |
//! | HTTP 2xx, item 400 `strict_dynamic_mapping_exception` elsewhere | the index's mapping is older than the worker's documents (a field the worker writes is unknown to it): infrastructure, retry; see [`crate::es::document::additive_mapping`] |
//! | HTTP 2xx, item 401/403/404, or an item error about the index rather than the document (`security_exception`, `cluster_block_exception`, `index_closed_exception`, `index_not_found_exception`, an alias without a write index) | infrastructure: retry the item, pausing intake; see [`refuses_every_document`] |
//! | HTTP 2xx, item other 4xx (mapping, parse, a field value) | the record is bad: dead letter, stage `index` |
//! | HTTP 413 | the request is too large: split it; one document alone → dead letter, class `too_large` |
//! | anything else (transport error, 5xx, 429, 400, 401, 403, 404, ...) | infrastructure fault: retry the whole request, never dead-letter |

use serde::Deserialize;

/// Elasticsearch's HTTP answer to a bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A bulk request that got no answer: always an infrastructure fault (the request is sent
/// again, never dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// The request could not be sent, or no status came back (refused, reset, timed out).
    #[error("transport error: {0}")]
    Send(String),
    /// A status came back, and reading the body failed.
    #[error("transport error: HTTP {status} and reading the answer failed: {message}")]
    Read { status: u16, message: String },
}

/// What a bulk request got back.
pub type Reply = Result<Answer, NoAnswer>;

/// How one document's write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    Indexed,
    /// A document with a newer version is already there.
    Superseded,
    /// Elasticsearch refused this document itself (mapping, parse, ...).
    Rejected {
        status: u16,
        kind: String,
        reason: String,
    },
    /// Send again later (429, 5xx, missing result).
    Retry(String),
}

/// How a whole request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// One outcome per document, in order.
    Items(Vec<ItemOutcome>),
    /// HTTP 413: split the request.
    TooLarge,
    /// The request failed as a whole for a reason unrelated to its documents.
    Infra(String),
}

#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, ItemResponse>>,
}

#[derive(Debug, Deserialize)]
struct ItemResponse {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<ErrorCause>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorCause {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// ES puts either a string or an object under `error`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    Cause(ErrorCause),
    Text(String),
}

/// A short description of a request-level error body.
fn describe_error(status: u16, body: &[u8]) -> String {
    let detail = match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(ErrorResponse {
            error: Some(ErrorBody::Cause(c)),
        }) => format!("{}: {}", c.kind, c.reason.unwrap_or_default()),
        Ok(ErrorResponse {
            error: Some(ErrorBody::Text(t)),
        }) => t,
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    crate::failure::truncate(format!("HTTP {status} {detail}").trim(), 300)
}

/// Reads a bulk answer for `n` documents. `status` is `Err` with the transport error when no
/// HTTP answer came back.
pub fn classify(reply: &Reply, n: usize) -> RequestOutcome {
    let (status, body) = match reply {
        Ok(Answer { status, body }) => (*status, body.as_slice()),
        Err(e) => return RequestOutcome::Infra(e.to_string()),
    };
    if status == 413 {
        return RequestOutcome::TooLarge;
    }
    if !(200..300).contains(&status) {
        return RequestOutcome::Infra(describe_error(status, body));
    }
    let resp: BulkResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return RequestOutcome::Infra(format!(
                "HTTP {status} with an unreadable bulk response: {e}"
            ))
        }
    };
    RequestOutcome::Items(
        (0..n)
            .map(|i| {
                // The action key is "index" (or "create"/"update"); take whichever is there.
                let Some(item) = resp.items.get(i).and_then(|m| m.values().next()) else {
                    return ItemOutcome::Retry(
                        "no result for this item in the bulk response".into(),
                    );
                };
                let err = item.error.as_ref();
                let kind = err.map(|e| e.kind.clone()).unwrap_or_default();
                let reason = err.and_then(|e| e.reason.clone()).unwrap_or_default();
                match item.status {
                    200..=299 => ItemOutcome::Indexed,
                    409 if kind == "version_conflict_engine_exception" => ItemOutcome::Superseded,
                    429 => ItemOutcome::Retry(format!("item 429 {kind}: {reason}")),
                    // A field under `metadata` or `headers` is the producer's: with an
                    // operator's strict template (`--manage-template false`, `metadata` an
                    // object) it is this document's error. Any other unknown field is one of
                    // the worker's own: the index predates its documents, and every document
                    // would fail the same way.
                    400 if kind == "strict_dynamic_mapping_exception"
                        && producers_field(&reason) =>
                    {
                        ItemOutcome::Rejected {
                            status: 400,
                            kind,
                            reason: format!(
                                "{reason} (a field of the message's own under a strict mapping of the index; the operator's template decides what producers may send)"
                            ),
                        }
                    }
                    400 if kind == "strict_dynamic_mapping_exception" => ItemOutcome::Retry(format!(
                        "the index's mapping is older than this worker's documents (item 400 {kind}: {reason}); \
                         the worker adds new fields at start-up when its role may (`manage` on the index), \
                         else roll over to a new index (deploy/docs/production.md)"
                    )),
                    s if s >= 500 || s == 0 => {
                        ItemOutcome::Retry(format!("item {s} {kind}: {reason}"))
                    }
                    s if refuses_every_document(s, &kind, &reason) => ItemOutcome::Retry(format!(
                        "Elasticsearch refuses writes to the index, not this document (item {s} {kind}: {reason})"
                    )),
                    s => ItemOutcome::Rejected {
                        status: s,
                        kind,
                        reason,
                    },
                }
            })
            .collect(),
    )
}

/// Whether a `strict_dynamic_mapping_exception` is about a field the producer chose: one inside
/// `metadata` or `headers` (Elasticsearch says `dynamic introduction of [k] within [metadata]`,
/// or `[metadata.a]` deeper down).
pub fn producers_field(reason: &str) -> bool {
    let Some(at) = reason.find("within [") else {
        return false;
    };
    let rest = &reason[at + "within [".len()..];
    let parent = rest.split(']').next().unwrap_or("");
    ["metadata", "headers"]
        .iter()
        .any(|f| parent == *f || parent.starts_with(&format!("{f}.")))
}

/// Whether an item-level refusal is about the index or the cluster rather than the document,
/// so that every document sent there would be refused the same way: the infrastructure is
/// wrong, and the item is retried (pausing intake) instead of dead-lettered.
///
/// Elasticsearch answers these inside a 200 bulk response:
/// - 401/403: `security_exception` (a missing privilege on the index), `cluster_block_exception`
///   (a write block: disk flood stage, `index.blocks.write`, a read-only cluster); 404:
///   `index_not_found_exception` (the index or alias is gone and auto-create is off). Any
///   401, 403 or 404 counts, whatever its type: none of them can be a property of one document.
/// - 400 `index_closed_exception`; 400 `illegal_argument_exception` when it is about the alias
///   (no write index, or several indices behind it), not about a field value;
///   `invalid_index_name_exception`.
///
/// Everything else at 4xx (a mapping or parse error, a value a field cannot take, an immense
/// term) is the document's own: a dead letter.
pub fn refuses_every_document(status: u16, kind: &str, reason: &str) -> bool {
    match (status, kind) {
        (401 | 403 | 404, _) => true,
        (_, "security_exception" | "cluster_block_exception" | "index_closed_exception")
        | (_, "index_not_found_exception" | "invalid_index_name_exception") => true,
        (_, "illegal_argument_exception") => {
            let r = reason.to_ascii_lowercase();
            r.contains("no write index is defined")
                || r.contains("more than one indices associated")
                || r.contains("more than one index associated")
        }
        _ => false,
    }
}

/// Groups documents of the given serialised `sizes` (bytes, both NDJSON lines) into requests of
/// at most `max_docs` documents and `max_bytes` bytes; a document over `max_bytes` goes alone.
pub fn plan(sizes: &[usize], max_docs: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &s) in sizes.iter().enumerate() {
        let n = i - start;
        if n > 0 && (n >= max_docs.max(1) || bytes + s > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// The action line of one document.
pub fn action_line(id: &str, version: Option<i64>) -> Vec<u8> {
    let a = match version {
        Some(v) => {
            serde_json::json!({"index": {"_id": id, "version": v.max(0), "version_type": "external_gte"}})
        }
        None => serde_json::json!({"index": {"_id": id}}),
    };
    serde_json::to_vec(&a).expect("JSON of strings and numbers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: &[u8]) -> Reply {
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }

    fn items(status: u16, body: serde_json::Value, n: usize) -> Vec<ItemOutcome> {
        match classify(&answer(status, body.to_string().as_bytes()), n) {
            RequestOutcome::Items(v) => v,
            other => panic!("expected items, got {other:?}"),
        }
    }

    #[test]
    fn http_200_with_item_errors_is_read_item_by_item() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 201}},
            {"index": {"_id": "b", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [metadata.x]"}}},
            {"index": {"_id": "c", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"index": {"_id": "d", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "no shard"}}},
            {"index": {"_id": "e", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "[e]: version conflict"}}},
            {"create": {"_id": "f", "status": 409, "error": {"type": "document_already_exists_exception", "reason": "exists"}}}
        ]});
        let r = items(200, body, 7);
        assert_eq!(r[0], ItemOutcome::Indexed);
        assert!(
            matches!(&r[1], ItemOutcome::Rejected { status: 400, kind, .. } if kind == "mapper_parsing_exception")
        );
        assert!(matches!(r[2], ItemOutcome::Retry(_)));
        assert!(matches!(r[3], ItemOutcome::Retry(_)));
        assert_eq!(r[4], ItemOutcome::Superseded);
        assert!(matches!(r[5], ItemOutcome::Rejected { status: 409, .. }));
        assert!(
            matches!(r[6], ItemOutcome::Retry(_)),
            "missing item result is retried"
        );
    }

    /// Per-item refusals that say the index or cluster refuses writes (as Elasticsearch answers
    /// them inside a 200 bulk response) are infrastructure faults; per-document ones are not.
    #[test]
    fn item_refusals_about_the_index_are_retried_and_those_about_the_document_are_rejected() {
        let infra = [
            (403, "security_exception", "action [indices:data/write/bulk[s]] is unauthorized for API key id [k] of user [ocr]"),
            (403, "cluster_block_exception", "index [ocr-000001] blocked by: [FORBIDDEN/8/index write (api)];"),
            (429, "cluster_block_exception", "index [ocr-000001] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"),
            (400, "index_closed_exception", "closed"),
            (400, "illegal_argument_exception", "no write index is defined for alias [ocr]. The write index may be explicitly disabled using is_write_index=false or the alias points to multiple indices without one being designated as a write index"),
            (400, "illegal_argument_exception", "Alias [ocr] has more than one indices associated with it [[a, b]], can't execute a single index op"),
            (404, "index_not_found_exception", "no such index [ocr] and [action.auto_create_index] is [false]"),
            (401, "", ""),
        ];
        for (status, kind, reason) in infra {
            let body = json!({"errors": true, "items": [{"index": {"_id": "a", "status": status, "error": {"type": kind, "reason": reason}}}]});
            match &items(200, body, 1)[0] {
                ItemOutcome::Retry(r) => assert!(r.contains(kind), "{r}"),
                other => panic!("{status} {kind} must be retried, got {other:?}"),
            }
        }
        let own = [
            (
                400,
                "mapper_parsing_exception",
                "failed to parse field [metadata] of type [flattened]",
            ),
            (400, "document_parsing_exception", "[1:2] failed to parse"),
            (
                400,
                "illegal_argument_exception",
                "Document contains at least one immense term in field=\"text\"",
            ),
            (400, "x_content_parse_exception", "unexpected character"),
        ];
        for (status, kind, reason) in own {
            let body = json!({"errors": true, "items": [{"index": {"_id": "a", "status": status, "error": {"type": kind, "reason": reason}}}]});
            assert!(
                matches!(&items(200, body, 1)[0], ItemOutcome::Rejected { kind: k, .. } if k == kind),
                "{kind}: {reason} is the document's own"
            );
        }
    }

    #[test]
    fn an_index_older_than_the_documents_is_retried_not_dead_lettered() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 400, "error": {"type": "strict_dynamic_mapping_exception",
                "reason": "mapping set to strict, dynamic introduction of [words] within [lines] is not allowed"}}}
        ]});
        match &items(200, body, 1)[0] {
            ItemOutcome::Retry(r) => assert!(r.contains("older than this worker"), "{r}"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    /// An operator's strict template refusing a producer's `metadata` (or `headers`) key is
    /// that document's error; a worker field unknown to the index is not.
    #[test]
    fn a_strict_template_refusing_a_producers_field_is_the_documents_error() {
        for within in ["metadata", "metadata.customer", "headers"] {
            let body = json!({"errors": true, "items": [
                {"index": {"_id": "a", "status": 400, "error": {"type": "strict_dynamic_mapping_exception",
                    "reason": format!("[1:230] mapping set to strict, dynamic introduction of [x] within [{within}] is not allowed")}}}
            ]});
            assert!(
                matches!(
                    &items(200, body, 1)[0],
                    ItemOutcome::Rejected { status: 400, .. }
                ),
                "within [{within}]"
            );
        }
        for within in ["_doc", "lines", "metadatas", "source"] {
            assert!(!producers_field(&format!(
                "dynamic introduction of [x] within [{within}] is not allowed"
            )));
        }
    }

    #[test]
    fn request_level_failures_are_never_rejections() {
        for (status, body) in [
            (
                401,
                json!({"error": {"type": "security_exception", "reason": "unable to authenticate with provided credentials"}, "status": 401}),
            ),
            (
                403,
                json!({"error": {"type": "security_exception", "reason": "action [indices:data/write/bulk] is unauthorized"}}),
            ),
            (
                404,
                json!({"error": {"type": "index_not_found_exception", "reason": "no such index [ocr]"}}),
            ),
            (
                400,
                json!({"error": {"type": "illegal_argument_exception", "reason": "bad request"}}),
            ),
            (429, json!({})),
            (503, json!({"error": "service unavailable"})),
            (502, json!(null)),
        ] {
            match classify(&answer(status, body.to_string().as_bytes()), 3) {
                RequestOutcome::Infra(m) => assert!(m.contains(&status.to_string()), "{m}"),
                other => panic!("HTTP {status} must be an infrastructure fault, got {other:?}"),
            }
        }
        let RequestOutcome::Infra(m) = classify(
            &answer(
                401,
                br#"{"error":{"type":"security_exception","reason":"expired"}}"#,
            ),
            1,
        ) else {
            panic!()
        };
        assert!(m.contains("security_exception: expired"), "{m}");
        assert!(matches!(
            classify(&Err(NoAnswer::Send("connection refused".into())), 2),
            RequestOutcome::Infra(_)
        ));
        assert!(matches!(
            classify(&answer(200, b"<html>proxy</html>"), 1),
            RequestOutcome::Infra(_)
        ));
    }

    #[test]
    fn http_413_even_with_an_empty_body_means_split() {
        assert_eq!(classify(&answer(413, b""), 4), RequestOutcome::TooLarge);
    }

    #[test]
    fn requests_are_capped_by_count_and_bytes() {
        assert_eq!(plan(&[10; 5], 2, 1000), vec![0..2, 2..4, 4..5]);
        assert_eq!(plan(&[400, 400, 400], 10, 1000), vec![0..2, 2..3]);
        // A document over the byte cap goes alone; the others are not held back by it.
        assert_eq!(plan(&[10, 5000, 10, 10], 10, 1000), vec![0..1, 1..2, 2..4]);
        assert_eq!(plan(&[], 10, 1000), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn action_lines_carry_the_external_version() {
        let a: serde_json::Value = serde_json::from_slice(&action_line("x", Some(1700))).unwrap();
        assert_eq!(
            a,
            json!({"index": {"_id": "x", "version": 1700, "version_type": "external_gte"}})
        );
        let a: serde_json::Value = serde_json::from_slice(&action_line("x", None)).unwrap();
        assert_eq!(a, json!({"index": {"_id": "x"}}));
    }
}
