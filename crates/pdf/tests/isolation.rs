//! A crash or a hang inside PDFium costs one document, never the process that asked: the
//! child's test faults (`%ocrfleet-test-abort`, `%ocrfleet-test-hang` in a document's bytes)
//! stand for a segfault and an endless loop in PDFium. A mutation fuzz loop over the fixtures
//! runs every case through the real library: each ends as a plan (and its renders) or a typed
//! error, within its deadline.

mod common;

use std::time::{Duration, Instant};

use ocrfleet_pdf::{plan, render, PdfError, ReadOptions};

fn with_marker(name: &str, marker: &[u8]) -> Vec<u8> {
    let mut b = common::fixture(name);
    b.extend_from_slice(b"\n");
    b.extend_from_slice(marker);
    b.extend_from_slice(b"\n");
    b
}

#[tokio::test]
async fn a_renderer_that_aborts_or_hangs_costs_one_document_and_the_next_one_is_read() {
    let pool = common::pool(1, true);
    let opts = ReadOptions {
        page_deadline: Duration::from_secs(3),
        ..ReadOptions::default()
    };
    let mut s = pool.session().await.unwrap();
    let e = plan(
        &mut s,
        with_marker("born_digital.pdf", b"%ocrfleet-test-abort"),
        &opts,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, PdfError::Crashed(m) if m.contains("signal 6")),
        "{e}"
    );
    assert_eq!(e.class(), "pdf_crash");
    drop(s);
    let t = Instant::now();
    let mut s = pool.session().await.unwrap();
    let e = plan(
        &mut s,
        with_marker("born_digital.pdf", b"%ocrfleet-test-hang"),
        &opts,
    )
    .await
    .unwrap_err();
    assert_eq!(e.class(), "pdf_timeout", "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the hang was cut at its deadline"
    );
    drop(s);
    // The same pool goes on: a fresh child reads the next document.
    let mut s = pool.session().await.unwrap();
    let pages = plan(&mut s, common::fixture("mixed.pdf"), &opts)
        .await
        .unwrap();
    assert_eq!(pages.len(), 3);
    assert_eq!(render(&mut s, &pages, &opts).await.unwrap().len(), 1);
    drop(s);
    pool.probe().await.expect("the renderer works");
}

/// A renderer that cannot start (a missing library) is the renderer's fault, not the
/// document's, and the probe says so.
#[tokio::test]
async fn a_missing_library_is_a_renderer_fault() {
    let mut cfg = common::pool(1, false).config().clone();
    cfg.library = "/nonexistent/libpdfium.so".into();
    let pool = ocrfleet_pdf::Renderers::new(cfg);
    let e = pool.probe().await.unwrap_err();
    assert!(e.renderer_in_doubt(), "{e}");
}

/// Mutated fixtures (bytes flipped, cut, repeated, spliced) through the real library:
/// `OCRFLEET_PDF_FUZZ_CASES` cases (5000 by default), two children at once. Every case ends as a
/// plan and its renders, or a typed error; none takes the test process down or outlives its
/// deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_pdfs_end_as_documents_or_typed_errors() {
    let cases: usize = std::env::var("OCRFLEET_PDF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let seeds = [
        "born_digital.pdf",
        "scanned.pdf",
        "mixed.pdf",
        "rotated.pdf",
        "form.pdf",
        "no_unicode.pdf",
        "invisible_layer.pdf",
        "owner_only.pdf",
        "huge_page.pdf",
    ]
    .map(common::fixture);
    let pool = common::pool(2, false);
    let opts = ReadOptions {
        dpi: 36.0,
        max_side: 512,
        page_deadline: Duration::from_secs(10),
        ..ReadOptions::default()
    };
    let seeds = std::sync::Arc::new(seeds);
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Cases are made as they are taken (case i from its own seed), so memory stays flat
    // however many there are.
    let queue = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..2 {
        let (pool, queue, seeds) = (pool.clone(), queue.clone(), seeds.clone());
        tasks.spawn(async move {
            let mut outcomes: std::collections::BTreeMap<&'static str, usize> = Default::default();
            loop {
                let i = queue.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= cases {
                    break;
                }
                let bytes = mutate(seeds.as_slice(), i as u64);
                let mut s = pool.session().await.unwrap();
                let r = match plan(&mut s, bytes, &opts).await {
                    Ok(pages) => render(&mut s, &pages, &opts).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                let class = match r {
                    Ok(()) => "document",
                    Err(e) => {
                        assert!(!matches!(e, PdfError::Renderer(_)), "{e}");
                        e.class()
                    }
                };
                *outcomes.entry(class).or_default() += 1;
            }
            outcomes
        });
    }
    let mut all: std::collections::BTreeMap<&'static str, usize> = Default::default();
    while let Some(r) = tasks.join_next().await {
        for (k, v) in r.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    println!(
        "{cases} mutated PDFs in {:.1} s: {all:?}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(all.values().sum::<usize>(), cases);
    assert!(
        all.get("document").copied().unwrap_or(0) > cases / 10,
        "{all:?}"
    );
    pool.probe().await.expect("the renderer still works");
}

/// Case `i`: a fixture with one to four mutations (a bit flipped, the file cut, a run copied
/// elsewhere, a run deleted, a byte made a digit), all drawn from `i`'s own generator.
fn mutate(seeds: &[Vec<u8>], i: u64) -> Vec<u8> {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut b = seeds[(next() % seeds.len() as u64) as usize].clone();
    for _ in 0..1 + next() % 4 {
        if b.is_empty() {
            b.push(b'%');
        }
        let n = b.len() as u64;
        let at = (next() % n) as usize;
        let last = b.len() - 1;
        match next() % 5 {
            0 => b[at.min(last)] ^= 1 << (next() % 8),
            1 => b.truncate(at.max(8)),
            2 => {
                let len = (next() % 64) as usize;
                let chunk: Vec<u8> = b[at..(at + len).min(b.len())].to_vec();
                let to = (next() % n) as usize;
                b.splice(to..to, chunk);
            }
            3 => {
                let end = (at + (next() % 32) as usize).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let digits = b"0123456789";
                b[at.min(last)] = digits[(next() % 10) as usize];
            }
        }
    }
    b
}
