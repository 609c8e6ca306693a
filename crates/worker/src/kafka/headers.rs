//! Reading a message's headers without assuming UTF-8 keys.
//!
//! rdkafka's `Headers::try_get` turns each key into `&str` with `unwrap()`, so one record with
//! a non-UTF-8 header key panicked the source thread; the process stayed up, `/readyz` said
//! 200, nothing was consumed, and every worker that took the partition over died the same way.
//! Kafka does not promise UTF-8 keys, so they are read here as bytes through librdkafka's C
//! API, and such a record becomes a dead letter (stage `parse`, class `header_key_not_utf8`).

use std::ffi::CStr;

use rdkafka::bindings as rd;
use rdkafka::message::BorrowedMessage;

/// A header: key bytes (as stored, up to any NUL) and value (`None` for a null value).
pub type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// The value of the last header named `name`, when it is present, not null and UTF-8.
pub fn value<'a>(hs: &'a [RawHeader], name: &str) -> Option<&'a str> {
    hs.iter()
        .rev()
        .find(|(k, _)| k == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
}

/// All headers of `m`, in order.
pub fn raw_headers(m: &BorrowedMessage<'_>) -> Vec<RawHeader> {
    raw_headers_at_most(m, usize::MAX).0
}

/// The first `max` headers of `m`, in order, and how many it has in all: a record of 50 000
/// headers is not copied whole only to be refused (`--max-headers`).
pub fn raw_headers_at_most(m: &BorrowedMessage<'_>, max: usize) -> (Vec<RawHeader>, usize) {
    let mut hdrs: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is a live rd_kafka_message_t for the lifetime of `m`; librdkafka
    // writes a pointer to headers it owns (or leaves it null) into `hdrs`.
    let err = unsafe { rd::rd_kafka_message_headers(m.ptr(), &mut hdrs) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return (Vec::new(), 0);
    }
    // SAFETY: `hdrs` is non-null and owned by the message, which outlives this function.
    let n = unsafe { rd::rd_kafka_header_cnt(hdrs) };
    let mut out = Vec::with_capacity(n.min(max));
    for idx in 0..n.min(max) {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
        // SAFETY: idx < count; librdkafka fills the three out-pointers with data it owns.
        let err =
            unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores header names NUL-terminated; `value` points at `size`
        // bytes, or is null for a null value.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        out.push((key, value));
    }
    (out, n)
}
