//! Long runs, not part of `tests/run.sh` (they take minutes to tens of minutes on two cores);
//! run them by hand and copy the figures into deploy/docs/performance.md ("Long runs"):
//!
//! ```sh
//! cargo test --release -p ocrfleet --test worker_soak -- --ignored --nocapture --test-threads 1
//! SOAK_MESSAGES=20000 cargo test --release -p ocrfleet --test worker_soak soak -- --ignored --nocapture
//! ```
//!
//! - `soak`: 100 000 messages (`SOAK_MESSAGES`) of a tiny image through one worker on
//!   noida-db: throughput, peak RSS, the RSS slope over the second half, and the largest
//!   distance between what is finished and what is committed.
//! - `memory_under_large_16_bit_images`: many 36-megapixel 16-bit RGB PNGs with an EXIF
//!   rotation at once, under a 1 GiB memory budget: peak RSS against the budget.
//! - `memory_with_large_messages_bodies_and_decodes_at_once`: what the budget does not hold
//!   (messages read ahead, bodies being downloaded) at its bounds together with a full budget
//!   of decodes: peak RSS against budget + engine + those bounds.

mod common;

use std::io::Cursor;
use std::time::{Duration, Instant};

use common::*;
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, ImageFormat::Png).unwrap();
    c.into_inner()
}

/// A PNG chunk.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// Inserts an eXIf chunk (Orientation = 6, rotate 90) after a PNG's IHDR.
fn with_exif_rotation(png: &[u8]) -> Vec<u8> {
    let exif = [
        b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0,
    ];
    let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
    let mut body = b"eXIf".to_vec();
    body.extend_from_slice(&exif);
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32(&body).to_be_bytes());
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let mut out = png[..ihdr_end].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Least-squares slope of (seconds, bytes) samples, in bytes per second.
fn slope(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    let (mx, my) = (
        samples.iter().map(|s| s.0).sum::<f64>() / n,
        samples.iter().map(|s| s.1 as f64).sum::<f64>() / n,
    );
    let num: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let den: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[test]
#[ignore = "long: run by hand, see the module doc"]
fn soak() {
    let _g = serial();
    let n: usize = std::env::var("SOAK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let nd = Noida::start("soak");
    let srv = ImageServer::start(repo_root().join("tests/fixtures/worker"));
    // A tiny image: 64x24, a dark bar on white (one detected box, one short recognition).
    let tiny = DynamicImage::ImageRgb8(ImageBuffer::from_fn(64, 24, |x, y| {
        if (8..56).contains(&x) && (8..16).contains(&y) {
            Rgb([20, 20, 20])
        } else {
            Rgb([255, 255, 255])
        }
    }));
    let url = srv.put("tiny.png", png(&tiny));
    let (topic, group, index, parts) = ("soak", "g-soak", "soak-idx", 4);
    create_topics(&nd.brokers(), topic, parts);
    let t = Instant::now();
    let values = same_image_messages(&url, n, "s");
    produce_many(&nd.brokers(), topic, parts, &values);
    println!(
        "produced {n} messages in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let w = Worker::start(&nd.brokers(), &nd.es_url(), topic, group, index, &[]);
    let pid = w.child.id();
    let t0 = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut max_behind = 0i64;
    let mut first = None;
    loop {
        let done = w.metric("ocrfleet_messages_indexed_total") as i64
            + w.metric("ocrfleet_messages_dead_lettered_total") as i64;
        if first.is_none() && w.metric("ocrfleet_messages_consumed_total") > 0.0 {
            first = Some(Instant::now());
        }
        let committed: i64 = committed_and_high(&nd.brokers(), group, topic, parts)
            .iter()
            .map(|(c, _)| c)
            .sum();
        max_behind = max_behind.max(done - committed);
        samples.push((t0.elapsed().as_secs_f64(), rss(pid)));
        if done >= n as i64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(7200),
            "soak did not finish"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let wall = first.unwrap().elapsed().as_secs_f64();
    let half = &samples[samples.len() / 2..];
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    println!("| messages | wall s | msg/s | peak RSS MiB | RSS slope, 2nd half, MiB/min | max finished - committed |");
    println!(
        "| {n} | {wall:.0} | {:.1} | {:.0} | {:+.2} | {max_behind} |",
        n as f64 / wall,
        peak as f64 / 1048576.0,
        slope(half) * 60.0 / 1048576.0,
    );
    wait_until("lag 0", Duration::from_secs(60), || {
        committed_and_high(&nd.brokers(), group, topic, parts)
            .iter()
            .all(|(c, h)| c == h)
    });
    assert_eq!(es_count(&nd.es_url(), index), Some(n as u64));
    assert_eq!(w.metric("ocrfleet_messages_dead_lettered_total"), 0.0);
}

#[test]
#[ignore = "long: run by hand, see the module doc"]
fn memory_under_large_16_bit_images() {
    let _g = serial();
    let nd = Noida::start("mem16");
    let srv = ImageServer::start(repo_root().join("tests/fixtures/worker"));
    // 6000x6000 16-bit RGB with an eXIf rotation by 90 degrees: 216 MB decoded at 16 bits, the
    // same again for the rotated copy, 108 MB as RGB8. decode::cost charges that peak (432 MB),
    // where 3 bytes a pixel would charge 108 MB.
    let (w, h) = (6000u32, 6000u32);
    let img = DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([((x * 11) & 0xffff) as u16, ((y * 7) & 0xffff) as u16, 40000])
    }));
    let bytes = with_exif_rotation(&png(&img));
    drop(img);
    let url = srv.put("big16.png", bytes);
    let (topic, group, index, n) = ("mem16", "g-mem16", "mem16-idx", 24);
    create_topics(&nd.brokers(), topic, 2);
    let values = same_image_messages(&url, n, "m");
    produce(&nd.brokers(), topic, 2, &values);
    let wk = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &["--memory-budget", "1GiB", "--fetch-concurrency", "64"],
    );
    let t = Instant::now();
    wait_until("all indexed", Duration::from_secs(1800), || {
        es_count(&nd.es_url(), index) == Some(n as u64)
    });
    let peak = wk.peak_rss();
    println!(
        "| images | size | memory budget | peak RSS | wall s |\n| {n} | {w}x{h} 16-bit RGB PNG | 1 GiB | {:.0} MiB | {:.0} |",
        peak as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    assert!(
        peak < 2 << 30,
        "peak RSS {peak} over budget + 1 GiB of engine and runtime"
    );
}

/// Every kind of memory at its bound at once: messages of 900 KB (their bytes bounded by
/// `--max-in-flight-bytes`, 64 MiB by default), 19 MiB bodies (a small image carrying a 19 MiB
/// ancillary chunk: bounded by `--fetch-concurrency` × `--fetch-max-bytes`, 64 × 20 MiB), and
/// 6000×4000 images whose decodes fill the budget (2 GiB, the default). Prints the peak RSS
/// beside what the documented pod memory formula gives.
#[test]
#[ignore = "long: run by hand, see the module doc"]
fn memory_with_large_messages_bodies_and_decodes_at_once() {
    let _g = serial();
    let nd = Noida::start("memall");
    let srv = ImageServer::start(repo_root().join("tests/fixtures/worker"));
    // 19 MiB of incompressible bytes in a private ancillary chunk of a small PNG.
    let small = png(&DynamicImage::ImageRgb8(fixture_image("hello.png")));
    let mut filler = vec![0u8; 19 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in filler.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let mut heavy = small[..ihdr_end].to_vec();
    heavy.extend_from_slice(&chunk(b"flLr", &filler));
    heavy.extend_from_slice(&small[ihdr_end..]);
    drop(filler);
    let body_url = srv.put("heavy-body.png", heavy);
    // 6000x4000 RGBA of one colour: a few KB, 96 MB as RGBA + 72 MB as RGB when decoded.
    let big = png(&DynamicImage::ImageRgba8(ImageBuffer::from_pixel(
        6000,
        4000,
        image::Rgba([250, 250, 250, 255]),
    )));
    let decode_url = srv.put("heavy-decode.png", big);
    let (topic, group, index, parts) = ("memall", "g-memall", "memall-idx", 4);
    create_topics(&nd.brokers(), topic, parts);
    let pad = "x".repeat(900 << 10);
    let n = 600;
    let values: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            // Valid URL with 900 KB of padding: a parse dead letter (over the metadata limit),
            // held in memory while in flight.
            0 => serde_json::json!({"url": srv.url("img/hello.png"), "id": format!("m{i}"), "metadata": {"pad": pad}}).to_string(),
            1 => serde_json::json!({"url": body_url, "id": format!("m{i}")}).to_string(),
            _ => serde_json::json!({"url": decode_url, "id": format!("m{i}")}).to_string(),
        })
        .collect();
    produce_many(&nd.brokers(), topic, parts, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        // noida-db answers a fetch with everything it has (138 MB here), past librdkafka's
        // default receive.message.max.bytes (100 MB); a Kafka broker honours fetch.max.bytes.
        &[
            "--host-threads",
            "2",
            "--kafka-option",
            "receive.message.max.bytes=400000000",
            // The harness's 2 s is for fault tests; 19 MiB bodies under full load need longer.
            "--fetch-timeout",
            "60s",
        ],
    );
    let pid = w.child.id();
    let t = Instant::now();
    let (mut peak_budget, mut peak_flight_bytes) = (0f64, 0f64);
    loop {
        let done = w.metric("ocrfleet_messages_indexed_total")
            + w.metric("ocrfleet_messages_dead_lettered_total");
        peak_budget = peak_budget.max(w.metric("ocrfleet_memory_budget_used_bytes"));
        let _ = rss(pid);
        if done >= n as f64 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3600), "did not finish");
        assert!(
            w.log_tail().contains("worker ready") || t.elapsed() < Duration::from_secs(120),
            "the worker did not start: {}",
            w.log_tail()
        );
        std::thread::sleep(Duration::from_secs(1));
        peak_flight_bytes = peak_flight_bytes.max(w.metric("ocrfleet_messages_in_flight"));
    }
    let peak = w.peak_rss() as f64 / 1048576.0;
    println!(
        "| messages | wall s | peak RSS MiB | peak budget used MiB | peak messages in flight |"
    );
    println!(
        "| {n} (1/3 900 KB values, 1/3 19 MiB bodies, 1/3 6000x4000 RGBA decodes) | {:.0} | {peak:.0} | {:.0} | {peak_flight_bytes:.0} |",
        t.elapsed().as_secs_f64(),
        peak_budget / 1048576.0
    );
    assert_eq!(
        w.metric("ocrfleet_messages_dead_lettered_total"),
        (n / 3) as f64,
        "the padded messages, nothing else"
    );
}
