//! PDFs end to end against real servers on 127.0.0.1, with the real PDFium in the worker's
//! renderer children: every fixture of tests/fixtures/make_pdfs.py served over HTTP (some
//! under names and content types that lie), each ending as one document (pages numbered, each
//! with where its text came from) or one dead letter of the class the fault table gives. A
//! renderer that aborts or hangs (the hidden `--test-pdf-faults` hooks) costs exactly one dead
//! letter, and the worker goes on. And `ocrfleet ocr` on the same files.
//!
//! Waits have generous deadlines for liveness only; nothing asserts on speed.

mod common;

use std::time::Duration;

use common::*;

fn pdf_dir() -> std::path::PathBuf {
    let dir = repo_root().join("tests/fixtures/pdf");
    assert!(
        dir.join("expected.json").is_file(),
        "PDF fixtures missing: run `.venv/bin/python tests/fixtures/make_pdfs.py` (tests/run.sh does)"
    );
    dir
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(pdf_dir().join("expected.json")).unwrap()).unwrap()
}

fn with_marker(name: &str, marker: &str) -> Vec<u8> {
    let mut b = std::fs::read(pdf_dir().join(name)).unwrap();
    b.extend_from_slice(format!("\n{marker}\n").as_bytes());
    b
}

#[test]
fn every_pdf_fixture_ends_as_one_document_or_one_dead_letter_and_crashes_cost_one_record() {
    let stack = Stack::start("pdfs");
    let (nd, srv) = (&stack.noida, &stack.images);
    let (topic, group, index) = (&stack.topic, &stack.group, &stack.index);
    create_topics(&nd.brokers(), topic, 1);
    let exp = expected();
    let files = exp["files"].as_object().unwrap();
    let mut values = Vec::new();
    for name in files.keys() {
        // Served under a name without .pdf: a PDF is known by its bytes.
        let url = srv.put(
            &name.replace(".pdf", ".bin"),
            std::fs::read(pdf_dir().join(name)).unwrap(),
        );
        values.push(serde_json::json!({"url": url, "id": name}).to_string());
    }
    for (id, marker) in [
        ("abort", "%ocrfleet-test-abort"),
        ("hang", "%ocrfleet-test-hang"),
    ] {
        let url = srv.put(
            &format!("{id}.pdf"),
            with_marker("born_digital.pdf", marker),
        );
        values.push(serde_json::json!({"url": url, "id": id}).to_string());
    }
    // After the faults: the renderer still works for the next PDF and the next image.
    let after = srv.put(
        "after.pdf",
        std::fs::read(pdf_dir().join("scanned.pdf")).unwrap(),
    );
    values.push(serde_json::json!({"url": after, "id": "after"}).to_string());
    values.push(serde_json::json!({"url": srv.url("img/hello.png"), "id": "image"}).to_string());
    produce(&nd.brokers(), topic, 1, &values);
    let w = Worker::start(
        &nd.brokers(),
        &nd.es_url(),
        topic,
        group,
        index,
        &[
            "--test-pdf-faults",
            "--pdf-page-timeout",
            "5s",
            "--max-pages",
            "50",
        ],
    );
    let errors: Vec<(&String, &str)> = files
        .iter()
        .filter_map(|(n, v)| v["error"].as_str().map(|c| (n, c)))
        .collect();
    let want_dlq = errors.len() + 2;
    let dlq = read_all(
        &nd.brokers(),
        "pdfs.dlq",
        want_dlq,
        Duration::from_secs(240),
    );
    assert_eq!(dlq.len(), want_dlq, "log:\n{}", w.log_tail());
    let class_of = |id: &str| {
        dlq.iter()
            .find(|d| {
                d.value
                    .as_deref()
                    .is_some_and(|v| v.contains(&format!("\"id\":\"{id}\"")))
            })
            .map(|d| {
                let (stage, class) = d.stage_class();
                assert_eq!(stage, "decode", "{d:?}");
                class.to_owned()
            })
    };
    for (name, class) in &errors {
        assert_eq!(class_of(name).as_deref(), Some(*class), "{name}");
    }
    assert_eq!(class_of("abort").as_deref(), Some("pdf_crash"));
    assert_eq!(class_of("hang").as_deref(), Some("pdf_timeout"));
    let docs = files.len() - errors.len() + 2;
    wait_until(
        "every other record indexed",
        Duration::from_secs(240),
        || es_count(&nd.es_url(), index) == Some(docs as u64),
    );
    for (name, want) in files.iter().filter(|(_, v)| v["error"].is_null()) {
        let doc = es_get(&nd.es_url(), index, name).unwrap_or_else(|| panic!("{name} indexed"));
        let src = &doc["_source"];
        assert_eq!(src["pages"], want["pages"], "{name}: {src}");
        assert_eq!(src["page_sources"], want["sources"], "{name}: {src}");
        if let Some(word) = want["word"].as_str() {
            assert!(
                src["text"].as_str().unwrap().contains(word),
                "{name}: {}",
                src["text"]
            );
        }
        if let Some(absent) = want["absent"].as_str() {
            assert!(
                !src["text"].as_str().unwrap().contains(absent),
                "{name}: the untrusted layer was read"
            );
        }
        let pages: std::collections::BTreeSet<u64> = src["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["page"].as_u64().unwrap())
            .collect();
        assert!(pages
            .iter()
            .all(|p| *p >= 1 && *p <= want["pages"].as_u64().unwrap()));
    }
    // The mixed document: text, then a scanned page OCRed, then text; searchable by a word of
    // its scanned page.
    assert_eq!(es_search(&nd.es_url(), index, "公园"), vec!["mixed.pdf"]);
    let after = es_get(&nd.es_url(), index, "after").unwrap();
    assert!(after["_source"]["text"]
        .as_str()
        .unwrap()
        .contains("INVOICE"));
    wait_until("committed to the end", Duration::from_secs(60), || {
        lag(&nd.brokers(), group, topic, 1) == 0
    });
    assert!(w.ready() && w.healthy(), "the worker goes on");
}

/// `ocrfleet ocr` on a folder of PDFs: pages numbered with their source in text and NDJSON,
/// an encrypted file reported as failed, the exit status 1 for it.
#[test]
fn ocr_reads_pdfs_and_folders_of_them() {
    let dir = std::env::temp_dir().join(format!("ocrfleet-pdf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["mixed.pdf", "encrypted.pdf", "no_unicode.pdf"] {
        std::fs::copy(pdf_dir().join(name), dir.join(name)).unwrap();
    }
    let models = repo_root().join("models");
    let (code, out, err) = run_cli(
        &[
            "ocr",
            "--ndjson",
            "--threads",
            "1",
            "--models-dir",
            models.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
        &[],
        "",
        Duration::from_secs(300),
    );
    assert_eq!(code, Some(1), "{out}{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    let by = |f: &str| {
        rows.iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(f))
            .unwrap()
    };
    let mixed = by("mixed.pdf");
    assert_eq!(mixed["pages"], 3);
    assert_eq!(
        mixed["page_sources"],
        serde_json::json!(["text", "ocr", "text"])
    );
    assert!(mixed["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["page"] == 2 && l["text"].as_str().unwrap().contains("PARK")));
    assert_eq!(by("encrypted.pdf")["error"]["stage"], "decode");
    assert_eq!(
        by("no_unicode.pdf")["page_sources"],
        serde_json::json!(["ocr"])
    );
    let (code, out, _) = run_cli(
        &[
            "ocr",
            "--threads",
            "1",
            "--models-dir",
            models.to_str().unwrap(),
            dir.join("mixed.pdf").to_str().unwrap(),
        ],
        &[],
        "",
        Duration::from_secs(300),
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains("-- page 2 (ocr)") && out.contains("-- page 3 (text)"),
        "{out}"
    );
}
