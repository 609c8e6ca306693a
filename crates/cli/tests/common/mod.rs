//! Test harness for end-to-end worker tests: real servers on 127.0.0.1.
//!
//! - noida-db (Kafka and Elasticsearch wire protocols) started per test in its own data dir,
//!   with Kafka and Elasticsearch as separate services so Elasticsearch can be stopped alone;
//! - tansu (a Kafka-compatible broker that evicts crashed members) for crash/rebalance cases;
//! - an HTTP image server with fault injection (404, 500, 500-then-200, stall, oversize,
//!   non-image, truncated);
//! - the real `ocrfleet` binary as a child process (SIGTERM and SIGKILL are real signals).
//!
//! Waits use generous deadlines for liveness only; nothing asserts on speed.

#![allow(dead_code, unused_imports)] // each test binary uses part of the harness

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

mod servers;
pub use servers::*;
mod es;
pub use es::*;
mod kafka;
pub use kafka::*;
mod http;
pub use http::*;
mod worker;
pub use worker::*;

/// End-to-end tests share two cores; run them one at a time. The guard also records how long
/// the test held the lock: with `E2E_TEST_TIMES` set (tests/run.sh sets it), one line per
/// test is appended to that file, `seconds<TAB>binary<TAB>test<TAB>ok|FAILED`.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    Serial {
        _lock: lock,
        start: Instant::now(),
    }
}

/// See [`serial`].
pub struct Serial {
    _lock: MutexGuard<'static, ()>,
    start: Instant,
}

impl Drop for Serial {
    fn drop(&mut self) {
        let Ok(path) = std::env::var("E2E_TEST_TIMES") else {
            return;
        };
        let line = format!(
            "{:.1}\t{}\t{}\t{}\n",
            self.start.elapsed().as_secs_f64(),
            env!("CARGO_CRATE_NAME"),
            std::thread::current().name().unwrap_or("?"),
            if std::thread::panicking() {
                "FAILED"
            } else {
                "ok"
            },
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("could not record the test's time in {path}: {e}");
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// CRC-32 (IEEE), for hand-made PNG chunks.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Fixture images with known text: (file name, a word that OCR must find in it).
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests/fixtures/images")
}

/// A worker fixture image decoded.
pub fn fixture_image(name: &str) -> image::RgbImage {
    image::open(repo_root().join("tests/fixtures/worker").join(name))
        .unwrap()
        .to_rgb8()
}

/// PNG bytes of `img`.
pub fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `name` pasted on a white `w`×`h` canvas: an image of a size no fixture has, for the
/// engine's per-image test faults (`--test-engine-fault panic|abort|hang:WxH`).
pub fn sized_fixture(name: &str, w: u32, h: u32) -> Vec<u8> {
    let src = fixture_image(name);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    image::imageops::overlay(&mut canvas, &src, 0, 0);
    png(&canvas)
}

/// A multi-page TIFF (RGB, little-endian) of the given images, one page each.
pub fn multipage_tiff(pages: &[image::RgbImage]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
    for p in pages {
        enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw())
            .unwrap();
    }
    out.into_inner()
}

/// What most end-to-end tests start with, in one call: the serial lock (held until the stack is
/// dropped), noida-db in its own data dir, and the image server on the fixtures; the test's
/// topic, group and index are named after it (`name`, `g-name`, `name-idx`). Topics are left to
/// the test (their partitions differ).
pub struct Stack {
    pub noida: Noida,
    pub images: ImageServer,
    pub topic: String,
    pub group: String,
    pub index: String,
    // Last: dropped after the servers are stopped.
    _serial: Serial,
}

impl Stack {
    pub fn start(name: &str) -> Stack {
        let serial = serial();
        Stack {
            noida: Noida::start(name),
            images: images_server(),
            topic: name.to_owned(),
            group: format!("g-{name}"),
            index: format!("{name}-idx"),
            _serial: serial,
        }
    }
}
