//! The message contract, version 1.
//!
//! A message's value is either
//! - a JSON object `{"url": "https://…", "id": "<optional stable id>", "metadata": {…}}`
//!   (`url` required; `id` a non-empty string up to 512 bytes; `metadata` any JSON object), or
//! - a bare URL: the whole value, trimmed, starting with `http://` or `https://`.
//!
//! The key is optional and not interpreted. Headers are passed through to the dead-letter
//! record unchanged. The document id is `id` when given, else `<topic>-<partition>-<offset>`,
//! so a redelivered message overwrites its own document.

use serde::Deserialize;

/// Version of this contract, recorded in every document as `contract`.
pub const CONTRACT_VERSION: u32 = 1;

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
        }
    }
}

#[derive(Deserialize)]
struct Wire {
    url: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
    metadata: Option<serde_json::Value>,
}

/// Parses a message value per the contract above.
pub fn parse(value: Option<&[u8]>) -> Result<Request, ParseError> {
    let value = value.filter(|v| !v.is_empty()).ok_or(ParseError::Empty)?;
    let text = std::str::from_utf8(value)
        .map_err(|_| ParseError::NotUtf8)?
        .trim();
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(Request {
            url: text.to_owned(),
            id: None,
            metadata: Default::default(),
        });
    }
    let wire: Wire = serde_json::from_str(text).map_err(|e| ParseError::BadJson(e.to_string()))?;
    let url = match wire.url {
        Some(serde_json::Value::String(u)) if !u.trim().is_empty() => u.trim().to_owned(),
        _ => return Err(ParseError::MissingUrl),
    };
    let id = match wire.id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 512 => Some(s),
        Some(_) => return Err(ParseError::BadId),
    };
    let metadata = match wire.metadata {
        None | Some(serde_json::Value::Null) => Default::default(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(ParseError::BadMetadata),
    };
    Ok(Request { url, id, metadata })
}

/// The document id: the request's id, else the message's coordinates.
pub fn document_id(id: Option<&str>, topic: &str, partition: i32, offset: i64) -> String {
    match id {
        Some(id) => id.to_owned(),
        None => format!("{topic}-{partition}-{offset}"),
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
    fn ids() {
        assert_eq!(document_id(Some("abc"), "t", 1, 2), "abc");
        assert_eq!(document_id(None, "t", 1, 2), "t-1-2");
    }
}
