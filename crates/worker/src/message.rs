//! The message contract, version 1.
//!
//! A message's value is either
//! - a JSON object `{"url": "https://…", "id": "<optional stable id>", "metadata": {…}}`
//!   (`url` required; `id` a non-empty string up to 512 bytes; `metadata` any JSON object), or
//! - a bare URL: the whole value, trimmed, starting with `http://` or `https://`.
//!
//! Anything else is refused, JSON arrays included (serde would read a struct from an array of
//! its fields). Limits: the URL at most [`MAX_URL_BYTES`], `metadata` at most
//! [`MAX_METADATA_BYTES`] as JSON (it is indexed, and a mapping must not grow without bound).
//!
//! The key is optional and not interpreted. Headers are passed through to the dead-letter
//! record unchanged. The document id is `id` when given, else `<topic>-<partition>-<offset>`,
//! so a redelivered message overwrites its own document.

/// Version of this contract, recorded in every document as `contract`.
pub const CONTRACT_VERSION: u32 = 1;

/// The longest URL accepted (bytes). Browsers and CDNs stop near 8 KB too.
pub const MAX_URL_BYTES: usize = 8192;

/// The largest `metadata` accepted, as compact JSON (bytes).
pub const MAX_METADATA_BYTES: usize = 16384;

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub id: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Why a value is not a valid request (dead-lettered with stage `parse`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("message has no value")]
    Empty,
    #[error("value is not UTF-8")]
    NotUtf8,
    #[error("value is neither a JSON object nor an http(s) URL: {0}")]
    BadJson(String),
    #[error("JSON message has no \"url\" string field")]
    MissingUrl,
    #[error("\"id\" must be a non-empty string of at most 512 bytes")]
    BadId,
    #[error("\"metadata\" must be a JSON object")]
    BadMetadata,
    #[error("URL is {0} bytes, over the limit of {MAX_URL_BYTES}")]
    UrlTooLong(usize),
    #[error("\"metadata\" is {0} bytes of JSON, over the limit of {MAX_METADATA_BYTES}")]
    MetadataTooLarge(usize),
}

impl ParseError {
    pub fn class(&self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::NotUtf8 => "not_utf8",
            ParseError::BadJson(_) => "bad_json",
            ParseError::MissingUrl => "missing_url",
            ParseError::BadId => "bad_id",
            ParseError::BadMetadata => "bad_metadata",
            ParseError::UrlTooLong(_) => "url_too_long",
            ParseError::MetadataTooLarge(_) => "metadata_too_large",
        }
    }
}

/// Parses a message value per the contract above.
pub fn parse(value: Option<&[u8]>) -> Result<Request, ParseError> {
    let value = value.filter(|v| !v.is_empty()).ok_or(ParseError::Empty)?;
    let text = std::str::from_utf8(value)
        .map_err(|_| ParseError::NotUtf8)?
        .trim();
    if text.starts_with("http://") || text.starts_with("https://") {
        if text.len() > MAX_URL_BYTES {
            return Err(ParseError::UrlTooLong(text.len()));
        }
        return Ok(Request {
            url: text.to_owned(),
            id: None,
            metadata: Default::default(),
        });
    }
    let mut wire = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(other) => {
            let kind = match other {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Err(ParseError::BadJson(format!(
                "JSON {kind}, expected an object"
            )));
        }
        Err(e) => return Err(ParseError::BadJson(e.to_string())),
    };
    let url = match wire.remove("url") {
        Some(serde_json::Value::String(u)) if !u.trim().is_empty() => u.trim().to_owned(),
        _ => return Err(ParseError::MissingUrl),
    };
    if url.len() > MAX_URL_BYTES {
        return Err(ParseError::UrlTooLong(url.len()));
    }
    let id = match wire.remove("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 512 => Some(s),
        Some(_) => return Err(ParseError::BadId),
    };
    let metadata = match wire.remove("metadata") {
        None | Some(serde_json::Value::Null) => Default::default(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(ParseError::BadMetadata),
    };
    let size = serde_json::to_vec(&metadata).map_or(0, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(ParseError::MetadataTooLarge(size));
    }
    Ok(Request { url, id, metadata })
}

/// The document id: the request's id, else the original record's coordinates when `ocrfleet
/// replay` re-published it (`replayed_of`), else the message's coordinates. A replayed message
/// thus gets the document its original would have had, however often it is replayed.
pub fn document_id(
    id: Option<&str>,
    replayed_of: Option<&str>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> String {
    match (id, replayed_of) {
        (Some(id), _) => id.to_owned(),
        (None, Some(of)) => of.to_owned(),
        (None, None) => format!("{topic}-{partition}-{offset}"),
    }
}

/// Where a record re-published by `ocrfleet replay` came from: its `ocrfleet.replay.of` and
/// `ocrfleet.replay.timestamp` headers (see `commands::replay`), honoured only when they are
/// provably replay's: signed with the key that `replay` and the worker share
/// (`--replay-key`, [`ReplayKey`]). Otherwise any producer could take over a document id or
/// pin a version far in the future; unsigned or badly signed, they are ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayOrigin {
    pub of: Option<String>,
    pub timestamp_ms: Option<i64>,
}

/// The key shared by `ocrfleet replay` (which signs the replay headers) and the workers (which
/// check them): HMAC-SHA256 over the original's coordinates, its timestamp and the value.
#[derive(Clone)]
pub struct ReplayKey(ring::hmac::Key);

impl std::fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplayKey(..)")
    }
}

impl ReplayKey {
    pub fn new(secret: &[u8]) -> ReplayKey {
        ReplayKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn message(of: &str, timestamp: &str, value: Option<&[u8]>) -> Vec<u8> {
        let mut m = format!("ocrfleet-replay/1\n{of}\n{timestamp}\n").into_bytes();
        m.extend_from_slice(value.unwrap_or_default());
        m
    }

    /// The `ocrfleet.replay.signature` header's value (hex).
    pub fn sign(&self, of: &str, timestamp: &str, value: Option<&[u8]>) -> String {
        let tag = ring::hmac::sign(&self.0, &Self::message(of, timestamp, value));
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn verify(&self, of: &str, timestamp: &str, value: Option<&[u8]>, hex: &str) -> bool {
        let Some(tag) = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        ring::hmac::verify(&self.0, &Self::message(of, timestamp, value), &tag).is_ok()
    }
}

impl ReplayOrigin {
    /// The replay headers of a record, if `key` proves them replay's (see the type's doc).
    pub fn read(
        headers: &[crate::kafka::headers::RawHeader],
        value: Option<&[u8]>,
        key: Option<&ReplayKey>,
    ) -> ReplayOrigin {
        use crate::kafka::dlq::headers as h;
        let get = |name: &str| {
            crate::kafka::headers::value(headers, name).filter(|v| !v.is_empty() && v.len() <= 512)
        };
        let (Some(of), Some(sig)) = (get(h::REPLAY_OF), get(h::REPLAY_SIGNATURE)) else {
            return ReplayOrigin::default();
        };
        let ts = get(h::REPLAY_TIMESTAMP).unwrap_or("");
        match key {
            Some(k) if k.verify(of, ts, value, sig) => ReplayOrigin {
                of: Some(of.to_owned()),
                timestamp_ms: ts.parse().ok(),
            },
            _ => ReplayOrigin::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_bare_urls() {
        let r = parse(Some(
            br#"{"url":"https://x/a.png","id":"a1","metadata":{"k":1}}"#,
        ))
        .unwrap();
        assert_eq!(r.url, "https://x/a.png");
        assert_eq!(r.id.as_deref(), Some("a1"));
        assert_eq!(r.metadata["k"], 1);
        let r = parse(Some(b"  http://x/b.jpg\n")).unwrap();
        assert_eq!(r.url, "http://x/b.jpg");
        assert_eq!(r.id, None);
    }

    #[test]
    fn bad_values_are_typed() {
        assert_eq!(parse(None), Err(ParseError::Empty));
        assert_eq!(parse(Some(b"")), Err(ParseError::Empty));
        assert_eq!(parse(Some(&[0xff, 0xfe])), Err(ParseError::NotUtf8));
        assert!(matches!(
            parse(Some(b"{not json")),
            Err(ParseError::BadJson(_))
        ));
        assert_eq!(parse(Some(br#"{"id":"x"}"#)), Err(ParseError::MissingUrl));
        assert_eq!(parse(Some(br#"{"url":5}"#)), Err(ParseError::MissingUrl));
        assert_eq!(
            parse(Some(br#"{"url":"http://a","id":7}"#)),
            Err(ParseError::BadId)
        );
        assert_eq!(
            parse(Some(br#"{"url":"http://a","metadata":[1]}"#)),
            Err(ParseError::BadMetadata)
        );
    }

    #[test]
    fn json_arrays_are_not_messages() {
        // serde reads a struct from a sequence of its fields; the contract says object or URL.
        let e = parse(Some(br#"["http://x/a.png","id",{}]"#)).unwrap_err();
        assert_eq!(e.class(), "bad_json");
        assert!(e.to_string().contains("array"), "{e}");
        assert_eq!(parse(Some(b"42")).unwrap_err().class(), "bad_json");
    }

    #[test]
    fn size_limits() {
        let long = format!("https://x/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(
            parse(Some(long.as_bytes())).unwrap_err().class(),
            "url_too_long"
        );
        let json = serde_json::json!({"url": long}).to_string();
        assert_eq!(
            parse(Some(json.as_bytes())).unwrap_err().class(),
            "url_too_long"
        );
        let meta =
            serde_json::json!({"url": "http://x/a.png", "metadata": {"k": "v".repeat(50_000)}});
        assert_eq!(
            parse(Some(meta.to_string().as_bytes()))
                .unwrap_err()
                .class(),
            "metadata_too_large"
        );
        let ok = serde_json::json!({"url": "http://x/a.png", "metadata": {"k": "v".repeat(1000)}});
        assert!(parse(Some(ok.to_string().as_bytes())).is_ok());
    }

    #[test]
    fn ids() {
        assert_eq!(document_id(Some("abc"), None, "t", 1, 2), "abc");
        assert_eq!(document_id(None, None, "t", 1, 2), "t-1-2");
        assert_eq!(document_id(Some("abc"), Some("t-0-9"), "t", 1, 2), "abc");
        assert_eq!(document_id(None, Some("t-0-9"), "t", 1, 2), "t-0-9");
    }

    #[test]
    fn replay_origin_from_headers() {
        let hs = |pairs: &[(&str, &str)]| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
                .collect()
        };
        let key = ReplayKey::new(b"shared secret");
        assert_eq!(
            ReplayOrigin::read(&hs(&[("x", "y")]), None, Some(&key)),
            ReplayOrigin::default()
        );
        let value = br#"{"url":"http://x/a.png"}"#;
        let sig = key.sign("t-0-9", "1700000000000", Some(value));
        let signed = hs(&[
            ("ocrfleet.replay.of", "t-0-9"),
            ("ocrfleet.replay.timestamp", "1700000000000"),
            ("ocrfleet.replay.signature", &sig),
        ]);
        assert_eq!(
            ReplayOrigin::read(&signed, Some(value), Some(&key)),
            ReplayOrigin {
                of: Some("t-0-9".into()),
                timestamp_ms: Some(1_700_000_000_000)
            }
        );
        // Anything else is ignored: no key, another key, another value, no signature, or a
        // header changed after signing.
        let other = ReplayKey::new(b"another");
        for (headers, value, key) in [
            (&signed, Some(&value[..]), None),
            (&signed, Some(&value[..]), Some(&other)),
            (
                &signed,
                Some(&b"{\"url\":\"http://evil/\"}"[..]),
                Some(&key),
            ),
            (
                &hs(&[
                    ("ocrfleet.replay.of", "t-0-9"),
                    ("ocrfleet.replay.timestamp", "1"),
                ]),
                Some(&value[..]),
                Some(&key),
            ),
            (
                &hs(&[
                    ("ocrfleet.replay.of", "victim-id"),
                    ("ocrfleet.replay.timestamp", "1700000000000"),
                    ("ocrfleet.replay.signature", &sig),
                ]),
                Some(&value[..]),
                Some(&key),
            ),
        ] {
            assert_eq!(
                ReplayOrigin::read(headers, value, key),
                ReplayOrigin::default()
            );
        }
    }
}
