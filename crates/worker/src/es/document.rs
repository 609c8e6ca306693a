//! The Elasticsearch document (one typed struct) and the index template that maps it, side by
//! side so they cannot drift: a test serialises a document with every field set and checks that
//! every field is in the strict mapping.
//!
//! Ids and versions: `_id` is the message's `id`, else `<topic>-<partition>-<offset>`, so a
//! redelivered message overwrites its own document. Writes use external versioning
//! (`version_type=external_gte`) with the Kafka record's timestamp as the version, so that a
//! redelivery (same timestamp) overwrites while an *older* record for the same id (reordered
//! processing, or a stale worker that lost its partition during an outage) cannot overwrite a
//! newer one's document: Elasticsearch answers 409 and the older record counts as superseded.
//! A record without a timestamp is written with internal versioning (last write wins).

use std::collections::BTreeMap;

use ocrfleet_ocr::{ImageText, Line, Timings};
use serde::Serialize;
use serde_json::{json, Value};

use crate::envelope::Envelope;
use crate::message::{self, ReplayKey, ReplayOrigin, Request, CONTRACT_VERSION};

/// Version of the index template this worker writes; bump when the mapping changes.
/// 2: `metadata` is `flattened` (one mapping field however many keys producers send).
/// 3: `lines.words` (stored, not indexed) and the `text.grams` subfield.
/// 4: `pages` and `lines.page` (multi-page TIFFs).
/// 5: `page_sources` (PDFs: where each page's text came from, `ocr` or `text`).
pub const TEMPLATE_VERSION: u64 = 5;

/// The `text.grams` subfield's analyzer: lower-cased 4- to 12-grams of letters and digits, so
/// that a search for a word finds it where OCR glued it to a neighbour or a number
/// ("ANNUALREPORT2025"). It is searched with the standard analyzer (a query word is one term,
/// which must be one of the document's grams). Words of more than 12 letters are found through
/// `text` only. Defined in the index settings, so an index made before version 3 has no such
/// subfield (see [`additive_mapping`]).
pub const GRAMS: (usize, usize) = (4, 12);

/// The fields added since an index could have been made by an earlier template, which
/// `PUT <index>/_mapping` can add to an existing index in place: `lines.words` (version 3),
/// `pages` and `lines.page` (version 4), `page_sources` (version 5).
/// The `text.grams` subfield needs an analyzer in the index settings, which an open index
/// cannot take; an older index gets it only by rolling over to a new index.
pub fn additive_mapping() -> Value {
    json!({"properties": {
        "pages": {"type": "integer"},
        "page_sources": {"type": "keyword"},
        "lines": {"properties": {
            "words": {"type": "object", "enabled": false},
            "page": {"type": "integer"}
        }}
    }})
}

/// A document ready for Elasticsearch, with the message it came from.
#[derive(Debug)]
pub struct Document {
    pub envelope: Envelope,
    pub id: String,
    /// External version (the record timestamp), when the record has one.
    pub version: Option<i64>,
    pub body: DocBody,
}

/// Who writes a document: the source topic, this worker, the model set, and the key that
/// proves a replayed record's origin (none: replay headers are ignored).
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub topic: &'a str,
    pub worker: &'a str,
    pub model: &'a str,
    pub replay_key: Option<&'a ReplayKey>,
}

/// How a record's file was read before the engine: tries and milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub attempts: usize,
    pub fetch_ms: f64,
    pub decode_ms: f64,
}

impl Document {
    /// The document for a record read as `text`: its id (the request's `id`, else a proven
    /// replay's original coordinates, else the record's own, [`message::document_id`]), its
    /// version (a proven replay's original timestamp, else the record's), header names and
    /// values as text (invalid UTF-8 replaced), and the timings with the download and decode
    /// added.
    pub fn new(
        envelope: Envelope,
        request: Request,
        text: ImageText,
        reading: Reading,
        writer: &Writer<'_>,
    ) -> Document {
        let e = &envelope;
        let replay = ReplayOrigin::read(&e.headers, e.value.as_deref(), writer.replay_key);
        let id = message::document_id(
            request.id.as_deref(),
            replay.of.as_deref(),
            writer.topic,
            e.partition,
            e.offset,
        );
        let headers = e
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    v.as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        let t = text.timings;
        let body = DocBody {
            url: request.url,
            message_id: request.id,
            text: text.text,
            lines: text.lines,
            width: text.width,
            height: text.height,
            pages: text.pages,
            page_sources: text.sources.iter().map(|s| s.as_str()).collect(),
            metadata: request.metadata,
            headers,
            source: SourceRef {
                topic: writer.topic.to_owned(),
                partition: e.partition,
                offset: e.offset,
                timestamp: e.timestamp_ms,
            },
            model: writer.model.to_owned(),
            contract: CONTRACT_VERSION,
            worker: writer.worker.to_owned(),
            attempts: reading.attempts,
            timings_ms: DocTimings {
                fetch: reading.fetch_ms,
                stages: Timings {
                    decode: reading.decode_ms,
                    total: reading.fetch_ms + reading.decode_ms + t.total,
                    ..t
                },
            },
            processed_at: chrono::Utc::now().to_rfc3339(),
        };
        Document {
            // A replayed record is versioned by its original's timestamp, so that it cannot
            // overwrite a document written since by a newer record for the same id.
            version: replay.timestamp_ms.or(envelope.timestamp_ms),
            envelope,
            id,
            body,
        }
    }
}

/// Where the document came from.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
}

/// Milliseconds per stage for this image: the download, then the engine's own [`Timings`]
/// (with `decode` and `total` covering the worker's decode and the download too).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DocTimings {
    pub fetch: f64,
    #[serde(flatten)]
    pub stages: Timings,
}

/// The indexed document (see the mapping in [`index_template`]).
#[derive(Debug, Clone, Serialize)]
pub struct DocBody {
    pub url: String,
    pub message_id: Option<String>,
    pub text: String,
    pub lines: Vec<Line>,
    /// The first page's size.
    pub width: u32,
    pub height: u32,
    /// Pages read (a multi-page TIFF or a PDF has several; each line says which it is on).
    pub pages: u32,
    /// Where each page's text came from, page after page: `ocr`, or `text` (a PDF page's
    /// text layer).
    pub page_sources: Vec<&'static str>,
    pub metadata: serde_json::Map<String, Value>,
    /// Kafka headers, stored but not indexed (keys and values as lossy UTF-8).
    pub headers: BTreeMap<String, Option<String>>,
    pub source: SourceRef,
    pub model: String,
    pub contract: u32,
    pub worker: String,
    pub attempts: usize,
    pub timings_ms: DocTimings,
    pub processed_at: String,
}

/// The index template body (strict mapping).
pub fn index_template(index: &str) -> Value {
    let cjk = json!({"type": "text", "analyzer": "cjk", "fields": {
        "std": {"type": "text", "analyzer": "standard"},
        "grams": {"type": "text", "analyzer": "ocrfleet_grams", "search_analyzer": "standard"}
    }});
    let f = json!({"type": "float"});
    json!({
        // Not the bare name: that is the write alias's, and an index of that name could only
        // be one auto-created by mistake (a write after the alias was deleted, which the
        // readiness probe then reports). It must not look like ours.
        "index_patterns": [format!("{index}-*")],
        "priority": 200,
        "_meta": {"managed_by": "ocrfleet", "version": TEMPLATE_VERSION},
        "template": {
            // In the nested `index.*` form that Elasticsearch gives back, so that an
            // operator's settings can be merged in (see [`upgraded_template`]).
            "settings": {"index": {
                "max_ngram_diff": GRAMS.1 - GRAMS.0,
                "analysis": {
                    "tokenizer": {"ocrfleet_grams": {
                        "type": "ngram", "min_gram": GRAMS.0, "max_gram": GRAMS.1,
                        "token_chars": ["letter", "digit"]
                    }},
                    "analyzer": {"ocrfleet_grams": {
                        "type": "custom", "tokenizer": "ocrfleet_grams", "filter": ["lowercase"]
                    }}
                }
            }},
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "url": {"type": "keyword"},
                    "message_id": {"type": "keyword"},
                    "text": cjk,
                    "lines": {"properties": {
                        "text": {"type": "text", "analyzer": "cjk"},
                        "score": f,
                        "box": {"type": "integer"},
                        "words": {"type": "object", "enabled": false},
                        "page": {"type": "integer"}
                    }},
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "pages": {"type": "integer"},
                    "page_sources": {"type": "keyword"},
                    "metadata": {"type": "flattened"},
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

/// What to do with the index template found at start (`found`: the `index_template` object of
/// `GET _index_template/<name>`, or `None` when there is none).
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePlan {
    /// Install this body (none there, or ocrfleet's of an older version).
    Put(Value),
    /// Leave it: ocrfleet's of this version, whatever settings an operator added since.
    Keep,
    /// Leave it, and say why: not made by ocrfleet, or by a newer worker.
    Foreign(String),
}

/// Decides about the template found at start. An older ocrfleet template is replaced by this
/// worker's, with the operator's additions kept: every setting this worker does not set
/// (replicas, shards, `index.lifecycle.*`, refresh interval...), `composed_of`, the
/// template's aliases, and extra `_meta` keys. The mappings are this worker's.
pub fn plan_template(index: &str, found: Option<&Value>) -> TemplatePlan {
    let ours = index_template(index);
    let Some(found) = found else {
        return TemplatePlan::Put(ours);
    };
    if found["_meta"]["managed_by"] != "ocrfleet" {
        return TemplatePlan::Foreign(format!(
            "index template {index:?} was not made by ocrfleet (no _meta.managed_by: ocrfleet); it is left as it is and must map this worker's documents (template version {TEMPLATE_VERSION})"
        ));
    }
    match found["_meta"]["version"].as_u64() {
        Some(v) if v == TEMPLATE_VERSION => TemplatePlan::Keep,
        Some(v) if v > TEMPLATE_VERSION => TemplatePlan::Foreign(format!(
            "index template {index:?} has version {v}, newer than this worker's {TEMPLATE_VERSION} (a newer worker installed it); it is left as it is"
        )),
        _ => TemplatePlan::Put(upgraded_template(found, ours)),
    }
}

/// `ours` with `found`'s operator additions merged in (see [`plan_template`]).
pub fn upgraded_template(found: &Value, mut ours: Value) -> Value {
    let settings = merge(
        found["template"]["settings"].clone(),
        ours["template"]["settings"].take(),
    );
    ours["template"]["settings"] = settings;
    if let Some(a) = found["template"].get("aliases").filter(|a| !a.is_null()) {
        ours["template"]["aliases"] = a.clone();
    }
    if let Some(c) = found
        .get("composed_of")
        .filter(|c| c.as_array().is_some_and(|c| !c.is_empty()))
    {
        ours["composed_of"] = c.clone();
    }
    let meta = merge(found["_meta"].clone(), ours["_meta"].take());
    ours["_meta"] = meta;
    ours
}

/// `base` with `over` laid on top: objects are merged key by key, anything else is replaced.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Object(mut b), Value::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, over) => over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, headers: Vec<(Vec<u8>, Option<Vec<u8>>)>, value: &[u8]) -> Envelope {
        Envelope {
            partition: 3,
            offset,
            generation: 1,
            key: None,
            value: Some(value.to_vec()),
            headers_total: headers.len(),
            headers,
            timestamp_ms: Some(2_000),
            care: Default::default(),
        }
    }

    fn read(id: Option<&str>) -> (Request, ImageText) {
        let request = Request {
            url: "http://x/a.png".into(),
            id: id.map(str::to_owned),
            metadata: Default::default(),
        };
        let text = ImageText {
            width: 10,
            height: 20,
            lines: Vec::new(),
            text: "hello".into(),
            pages: 2,
            sources: vec![
                ocrfleet_ocr::TextSource::Text,
                ocrfleet_ocr::TextSource::Ocr,
            ],
            timings: Timings {
                det: 4.0,
                total: 10.0,
                ..Timings::default()
            },
        };
        (request, text)
    }

    const WRITER: Writer<'static> = Writer {
        topic: "t",
        worker: "w1",
        model: "m",
        replay_key: None,
    };

    /// Without a request id the record's coordinates are the id; its timestamp the version;
    /// header bytes that are not UTF-8 are replaced, not refused; the download and decode add
    /// to the engine's total.
    #[test]
    fn a_record_without_an_id_is_named_by_its_coordinates() {
        let (request, text) = read(None);
        let headers = vec![
            (b"trace".to_vec(), Some(vec![0xff, b'a'])),
            (b"empty".to_vec(), None),
        ];
        let reading = Reading {
            attempts: 2,
            fetch_ms: 5.0,
            decode_ms: 1.0,
        };
        let d = Document::new(record(7, headers, b"v"), request, text, reading, &WRITER);
        assert_eq!(d.id, "t-3-7");
        assert_eq!(d.version, Some(2_000));
        assert_eq!(d.body.headers["trace"].as_deref(), Some("\u{fffd}a"));
        assert_eq!(d.body.headers["empty"], None);
        assert_eq!(d.body.timings_ms.stages.total, 16.0);
        assert_eq!(d.body.timings_ms.stages.decode, 1.0);
        assert_eq!(d.body.timings_ms.stages.det, 4.0);
        assert_eq!(d.body.page_sources, vec!["text", "ocr"]);
        assert_eq!(
            (d.body.attempts, d.body.pages, d.body.worker.as_str()),
            (2, 2, "w1")
        );
        assert_eq!(d.body.source.partition, 3);
    }

    /// A replay's headers name the document and its version only when signed with the key;
    /// a request's own id always wins.
    #[test]
    fn a_proven_replay_takes_its_originals_id_and_version() {
        let key = ReplayKey::new(b"k");
        let value = br#"{"url":"http://x/a.png"}"#;
        let signed = |sig: &str| {
            vec![
                (b"ocrfleet.replay.of".to_vec(), Some(b"t-0-9".to_vec())),
                (
                    b"ocrfleet.replay.timestamp".to_vec(),
                    Some(b"1000".to_vec()),
                ),
                (
                    b"ocrfleet.replay.signature".to_vec(),
                    Some(sig.as_bytes().to_vec()),
                ),
            ]
        };
        let good = key.sign("t-0-9", "1000", Some(value));
        let with_key = Writer {
            replay_key: Some(&key),
            ..WRITER
        };
        let (request, text) = read(None);
        let d = Document::new(
            record(7, signed(&good), value),
            request,
            text,
            Reading::default(),
            &with_key,
        );
        assert_eq!((d.id.as_str(), d.version), ("t-0-9", Some(1_000)));

        let (request, text) = read(None);
        let forged = Document::new(
            record(7, signed(&"0".repeat(64)), value),
            request,
            text,
            Reading::default(),
            &with_key,
        );
        assert_eq!((forged.id.as_str(), forged.version), ("t-3-7", Some(2_000)));

        let (request, text) = read(None);
        let no_key = Document::new(
            record(7, signed(&good), value),
            request,
            text,
            Reading::default(),
            &WRITER,
        );
        assert_eq!(no_key.id, "t-3-7", "without a key nothing is proven");

        let (request, text) = read(Some("invoice-1"));
        let named = Document::new(
            record(7, signed(&good), value),
            request,
            text,
            Reading::default(),
            &with_key,
        );
        assert_eq!(named.id, "invoice-1");
    }

    /// Every leaf path of `v` (objects are walked, arrays looked into).
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&p, x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| leaves(prefix, x, out)),
            _ => out.push(prefix.to_owned()),
        }
    }

    /// Whether `path` is mapped: a field with a type, or inside an object that is not indexed
    /// (`enabled: false`) or `flattened`.
    fn mapped(props: &Value, path: &str) -> bool {
        let mut node = props;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(field) = node.get(part) else {
                return false;
            };
            let opaque = field["enabled"] == json!(false) || field["type"] == "flattened";
            if opaque || i == parts.len() - 1 {
                return field.get("type").is_some() || field.get("enabled").is_some();
            }
            node = &field["properties"];
        }
        false
    }

    fn full_body() -> DocBody {
        DocBody {
            url: "https://x/a.png".into(),
            message_id: Some("m1".into()),
            text: "发票\nTOTAL 3.50".into(),
            lines: vec![Line {
                text: "发票".into(),
                score: 0.9,
                bbox: [[0, 0], [1, 0], [1, 1], [0, 1]],
                words: vec![ocrfleet_ocr::Word {
                    text: "发票".into(),
                    bbox: [[0, 0], [1, 0], [1, 1], [0, 1]],
                }],
                page: 1,
            }],
            width: 10,
            height: 5,
            pages: 1,
            page_sources: vec!["ocr"],
            metadata: serde_json::from_value(json!({"shop": {"id": 7, "tags": ["a"]}})).unwrap(),
            headers: BTreeMap::from([("h".to_string(), Some("v".to_string()))]),
            source: SourceRef {
                topic: "t".into(),
                partition: 1,
                offset: 2,
                timestamp: Some(3),
            },
            model: "PP-OCRv4-mobile".into(),
            contract: 1,
            worker: "w".into(),
            attempts: 1,
            timings_ms: DocTimings::default(),
            processed_at: "2026-11-27T00:00:00Z".into(),
        }
    }

    #[test]
    fn every_serialised_field_is_in_the_strict_mapping() {
        let doc = serde_json::to_value(full_body()).unwrap();
        let mut paths = Vec::new();
        leaves("", &doc, &mut paths);
        let t = index_template("ocr");
        let props = &t["template"]["mappings"]["properties"];
        assert!(paths.len() >= 25, "{paths:?}");
        for p in &paths {
            assert!(
                mapped(props, p),
                "{p} is not in the index template's mapping"
            );
        }
        // And the check can fail.
        assert!(!mapped(props, "nope"));
        assert!(!mapped(props, "source.nope"));
    }

    #[test]
    fn template_is_strict_with_cjk_text_and_flattened_metadata() {
        let t = index_template("ocr");
        let m = &t["template"]["mappings"];
        assert_eq!(
            t["index_patterns"],
            json!(["ocr-*"]),
            "never the alias's bare name"
        );
        assert_eq!(m["dynamic"], "strict");
        assert_eq!(m["properties"]["text"]["analyzer"], "cjk");
        assert_eq!(m["properties"]["metadata"]["type"], "flattened");
    }

    #[test]
    fn template_plans() {
        assert!(matches!(plan_template("x", None), TemplatePlan::Put(_)));
        let mut current = index_template("x");
        current["template"]["settings"]["index"]["number_of_replicas"] = json!("0");
        assert_eq!(plan_template("x", Some(&current)), TemplatePlan::Keep);
        let foreign = json!({"index_patterns": ["x"], "template": {}});
        assert!(matches!(
            plan_template("x", Some(&foreign)),
            TemplatePlan::Foreign(_)
        ));
        let mut newer = index_template("x");
        newer["_meta"]["version"] = json!(TEMPLATE_VERSION + 1);
        assert!(matches!(
            plan_template("x", Some(&newer)),
            TemplatePlan::Foreign(_)
        ));
    }

    #[test]
    fn an_older_template_is_upgraded_with_the_operators_settings_kept() {
        // Version 2 as Elasticsearch gives it back, plus what an operator added to it.
        let older = json!({
            "index_patterns": ["x", "x-*"],
            "composed_of": ["ilm-policy"],
            "_meta": {"managed_by": "ocrfleet", "version": 2, "team": "search"},
            "template": {
                "settings": {"index": {
                    "number_of_replicas": "2",
                    "lifecycle": {"name": "ocr-30d", "rollover_alias": "x"},
                    "max_ngram_diff": "1"
                }},
                "aliases": {"x-read": {}},
                "mappings": {"dynamic": "strict", "properties": {"url": {"type": "keyword"}}}
            }
        });
        let TemplatePlan::Put(t) = plan_template("x", Some(&older)) else {
            panic!("an older template is replaced");
        };
        let s = &t["template"]["settings"]["index"];
        assert_eq!(s["number_of_replicas"], "2");
        assert_eq!(s["lifecycle"]["name"], "ocr-30d");
        assert_eq!(s["max_ngram_diff"], json!(GRAMS.1 - GRAMS.0), "ours win");
        assert!(s["analysis"]["analyzer"]["ocrfleet_grams"].is_object());
        assert_eq!(t["composed_of"], json!(["ilm-policy"]));
        assert_eq!(t["template"]["aliases"], json!({"x-read": {}}));
        assert_eq!(t["_meta"]["version"], json!(TEMPLATE_VERSION));
        assert_eq!(t["_meta"]["team"], "search");
        assert_eq!(
            t["template"]["mappings"],
            index_template("x")["template"]["mappings"]
        );
    }
}
