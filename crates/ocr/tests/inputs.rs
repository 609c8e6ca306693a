//! Bad and odd inputs: each gives a typed error or a correct result, never a panic, and memory
//! stays bounded (the 100000×100000 header is refused before any pixel is allocated).
//! Fixtures and expectations: `tests/fixtures/inputs/` (made by `tests/fixtures/make_inputs.py`).

mod common;

use common::*;
use ocrfleet_ocr::{DecodeError, OcrError, Stage};
use serde_json::Value;

#[test]
fn every_odd_input_gives_a_typed_error_or_the_right_text() {
    let dir = fixtures().join("inputs");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let e = engine(2);
    let names: Vec<String> = expected.as_object().unwrap().keys().cloned().collect();
    assert!(names.len() >= 14);
    let bytes: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    // All in one batch: the bad ones must not affect the good ones.
    let results = e.recognize_bytes(&refs);
    for ((name, r), b) in names.iter().zip(&results).zip(&bytes) {
        let exp = &expected[name.as_str()];
        if exp["error"].as_bool() == Some(true) {
            let err = r.as_ref().expect_err(&format!("{name} must fail"));
            assert_eq!(err.stage(), Stage::Decode, "{name}: {err}");
            assert!(!err.to_string().is_empty());
            println!("{name:<20} error: {err}");
        } else {
            let t = r
                .as_ref()
                .unwrap_or_else(|err| panic!("{name} must decode: {err}"));
            let want = exp["contains"].as_str().unwrap();
            assert!(
                t.text.contains(want),
                "{name}: want {want:?} in {:?}",
                t.text
            );
            if let Some(sz) = exp["oriented_size"].as_array() {
                assert_eq!(
                    [t.width as u64, t.height as u64],
                    [sz[0].as_u64().unwrap(), sz[1].as_u64().unwrap()],
                    "{name}: EXIF orientation applied"
                );
            }
            println!(
                "{name:<20} {}x{} {:?} ({} bytes)",
                t.width,
                t.height,
                t.text,
                b.len()
            );
        }
    }
}

#[test]
fn huge_header_is_refused_from_the_header() {
    let b = std::fs::read(fixtures().join("inputs/huge_header.png")).unwrap();
    match ocrfleet_ocr::decode::decode(&b, 50_000_000) {
        Err(DecodeError::TooLarge {
            width: 100000,
            height: 100000,
            ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        ocrfleet_ocr::decode::dimensions(&b, 50_000_000),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn zero_bytes_and_garbage_in_a_batch_with_a_good_image() {
    let good = std::fs::read(fixtures().join("images/en_line_hello.png")).unwrap();
    let e = engine(1);
    let r = e.recognize_bytes(&[b"", &good, b"\x89PNG\r\n\x1a\n garbage", b"GIF89a"]);
    assert!(matches!(r[0], Err(OcrError::Decode(DecodeError::Empty))));
    assert!(r[1].as_ref().unwrap().text.contains("Hello"));
    assert!(matches!(r[2], Err(OcrError::Decode(_))));
    assert!(matches!(r[3], Err(OcrError::Decode(_))));
}
