//! A mutation fuzzer for the code that reads untrusted image bytes: `decode::cost_pages` (which
//! the worker runs on every downloaded body before charging its memory budget) and
//! `decode::decode_pages`. Neither may panic, whatever the bytes: a panic there once lost a
//! message without a trace (the worker now catches it, but a panic is still a bug).
//!
//! Seeds are real files of every supported format (`tests/fixtures/inputs`: PNG 8/16-bit, RGBA,
//! JPEG with EXIF rotation, CMYK JPEG, TIFF, WebP, BMP, animated GIF) plus a multi-page TIFF;
//! each mutant flips bits, overwrites bytes with boundary values, truncates, duplicates or
//! inserts, mostly within the headers. Deterministic for a given seed.
//!
//! In `tests/run.sh` it runs a short round (`OCRFLEET_FUZZ_ITERATIONS`, default 20 000). For a
//! long run by hand (the crash inputs land in `target/decode-fuzz/`, to be kept as regression
//! cases below):
//!
//! ```sh
//! OCRFLEET_FUZZ_SECS=600 OCRFLEET_FUZZ_SEED=7 cargo test --release -p ocrfleet-ocr --test decode_fuzz -- --nocapture
//! ```

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ocrfleet_ocr::decode;

/// A small xorshift generator: reproducible mutants from a seed (not for anything else).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/inputs");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let ext = p.extension()?.to_str()?.to_owned();
            ["png", "jpg", "tiff", "webp", "bmp", "gif"]
                .contains(&ext.as_str())
                .then(|| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    )
                })
        })
        .collect();
    // Large-header seeds are skipped: they only exercise the pixel limit.
    out.retain(|(n, b)| b.len() < 2 << 20 && !n.starts_with("huge"));
    let mut tif = Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut tif).unwrap();
    for (w, h) in [(40u32, 30u32), (20, 50), (16, 16)] {
        enc.write_image::<tiff::encoder::colortype::RGB8>(w, h, &vec![128u8; (w * h * 3) as usize])
            .unwrap();
    }
    out.push(("multipage.tiff".into(), tif.into_inner()));
    out.sort();
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if b.is_empty() {
            b.push(rng.next() as u8);
        }
        // Mostly the headers, where the parsers branch.
        let span = if rng.below(10) < 7 {
            b.len().min(512)
        } else {
            b.len()
        };
        let at = rng.below(span);
        match rng.below(6) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => {
                const EDGES: [u8; 8] = [0, 1, 0x7F, 0x80, 0xFE, 0xFF, 0x10, 0x40];
                b[at] = EDGES[rng.below(EDGES.len())];
            }
            2 => b.truncate(at.max(1)),
            3 => {
                let len = 1 + rng.below(64).min(b.len() - at);
                let chunk = b[at..at + len.min(b.len() - at)].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, chunk);
            }
            4 => {
                let n = 1 + rng.below(16);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            _ => {
                // A 16- or 32-bit field set to an extreme (sizes, offsets, counts).
                let v = [0u32, 1, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF][rng.below(5)];
                for (k, byte) in v.to_be_bytes().iter().enumerate() {
                    if let Some(x) = b.get_mut(at + k) {
                        *x = *byte;
                    }
                }
            }
        }
    }
    b
}

/// Runs both readers on `bytes`; the panic's text when one panics.
fn run(bytes: &[u8]) -> Option<String> {
    const MAX_PIXELS: u64 = 4_000_000;
    let r = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(c) = decode::cost_pages(bytes, MAX_PIXELS, 8) {
            // Decoding what the budget would let through (bounded, to keep rounds quick).
            if c.peak_bytes < 256 << 20 {
                let _ = decode::decode_pages(bytes, MAX_PIXELS, 8);
            }
        }
        let _ = decode::cost(bytes, MAX_PIXELS);
    }));
    r.err().map(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

#[test]
fn mutated_headers_of_every_format_never_panic() {
    let seeds = seeds();
    assert!(
        seeds.len() >= 8,
        "seeds: {:?}",
        seeds.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("OCRFLEET_FUZZ_ITERATIONS").unwrap_or(20_000);
    let budget = env("OCRFLEET_FUZZ_SECS").map(Duration::from_secs);
    let mut rng = Rng(env("OCRFLEET_FUZZ_SEED").unwrap_or(0x5eed_0cf1_ee70_0001) | 1);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/decode-fuzz");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let t = Instant::now();
    let (mut n, mut crashes) = (0u64, Vec::new());
    while match budget {
        Some(b) => t.elapsed() < b,
        None => n < iterations,
    } {
        let (name, seed) = &seeds[rng.below(seeds.len())];
        let m = mutate(&mut rng, seed);
        if let Some(why) = run(&m) {
            std::fs::create_dir_all(&out).unwrap();
            let path = out.join(format!("crash-{}-{n}.bin", name));
            std::fs::write(&path, &m).unwrap();
            crashes.push(format!("{}: {why}", path.display()));
        }
        n += 1;
    }
    std::panic::set_hook(hook);
    println!(
        "decode fuzz: {n} mutants of {} seeds in {:.1} s, {} panics",
        seeds.len(),
        t.elapsed().as_secs_f64(),
        crashes.len()
    );
    assert!(crashes.is_empty(), "panics:\n{}", crashes.join("\n"));
}
