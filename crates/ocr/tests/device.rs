//! The CUDA path, up to session creation, on a machine without a GPU: asking for CUDA must be a
//! clear error, never a silent CPU fallback. (With `--features cuda` and the CPU build of ONNX
//! Runtime, the CUDA provider is reported missing; without the feature, the build says so.)
//! On a CUDA host the same engine runs on the GPU: see `tests/bench/gpu.sh`.

mod common;

use common::repo_root;
use ocrfleet_ocr::{Device, Engine, EngineConfig, EngineError};

#[test]
fn cuda_request_never_falls_back_to_cpu() {
    let mut cfg = EngineConfig::with_models_dir(repo_root().join("models"));
    cfg.device = Device::Cuda(0);
    match Engine::new(cfg) {
        Err(EngineError::Cuda { device: 0, message }) if cfg!(feature = "cuda") => {
            assert!(message.contains("CUDA"), "{message}");
            let shown = EngineError::Cuda { device: 0, message }.to_string();
            assert!(shown.contains("no CPU fallback"), "{shown}");
        }
        Err(EngineError::CudaNotBuilt) if !cfg!(feature = "cuda") => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(e) => panic!(
            "CUDA was requested but an engine started on {}",
            e.provider()
        ),
    }
}

#[test]
fn cpu_engine_reports_its_provider() {
    let e = common::engine(1);
    assert_eq!(e.provider(), "CPUExecutionProvider");
    assert_eq!(e.model_version(), "PP-OCRv4-mobile");
}

#[test]
fn missing_models_and_library_are_clear_errors() {
    let mut cfg = EngineConfig::with_models_dir("/nonexistent-models");
    cfg.ort_library = Some(repo_root().join("models/lib/libonnxruntime.so"));
    let err = Engine::new(cfg).err().expect("must fail");
    assert!(matches!(err, EngineError::Model { .. }), "{err}");
    assert!(err.to_string().contains("models/fetch.sh"), "{err}");
}

/// The CUDA shape policy (a session per input shape, batches padded to 1, ⌈B/4⌉ or B, detector
/// inputs padded to the fixed canvases, recogniser widths from the CUDA set), run on CPU: the
/// warm-up makes every shape once, recognition then makes no new session, and the lines are
/// the same as the default path's, whatever the padding batch-mates. Boxes move by a pixel or
/// two where the detector sees more background padding (IoU ≥ 0.8, as in the parity test).
#[test]
fn warmed_up_shape_policy_makes_no_new_session_and_gives_the_same_lines() {
    let images = common::fixture_images();
    let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let plain = common::engine(2).recognize_bytes(&refs);

    let mut cfg = common::rapidocr_config(2);
    cfg.session_per_shape = Some(true);
    let canvases = ocrfleet_ocr::DetConfig::cuda_canvases(960);
    cfg.det.canvases = Some(canvases.clone());
    cfg.det.batch_size = 3; // batch sizes 1 and 3: a group of 2 runs padded to 3
    cfg.cls.batch_size = 4; // 1 and 4
    cfg.rec.widths = ocrfleet_ocr::RecConfig::CUDA_WIDTHS.to_vec();
    cfg.rec.batch_size = 8; // 1, 2 and 8
    let mut pinned = Engine::new(cfg).expect("engine starts");
    assert_eq!(pinned.session_count(), 3, "one session per model at start");
    let warm = pinned.warm_up().expect("warm-up");
    let expected = canvases.len() * 2 + 2 + ocrfleet_ocr::RecConfig::CUDA_WIDTHS.len() * 3;
    assert_eq!(warm.shapes, expected);
    assert_eq!(warm.sessions, expected, "one session per shape");
    assert_eq!(pinned.session_count(), expected);
    let got = pinned.recognize_bytes(&refs);
    assert_eq!(
        pinned.session_count(),
        expected,
        "recognition needed a shape the warm-up did not make"
    );
    // A second warm-up finds every session made.
    assert_eq!(pinned.warm_up().expect("warm-up").sessions, expected);
    let (mut lines, mut same) = (0, 0);
    for (((name, _), a), b) in images.iter().zip(&plain).zip(&got) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.lines.len(), b.lines.len(), "{name}: line count");
        for (x, y) in a.lines.iter().zip(&b.lines) {
            lines += 1;
            let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            assert_eq!(strip(&x.text), strip(&y.text), "{name}");
            same += usize::from(x.text == y.text);
            let iou = common::iou(&common::quad(x), &common::quad(y));
            assert!(
                iou >= 0.8,
                "{name}: {:?} vs {:?} (IoU {iou:.2})",
                x.bbox,
                y.bbox
            );
        }
    }
    println!(
        "{same}/{lines} lines identical with spaces under the CUDA shape policy; warm-up {:.1} s for {} shapes",
        warm.seconds, warm.shapes
    );
    assert!(lines >= 80);
}

#[test]
fn warm_up_refuses_more_shapes_than_sessions_allowed() {
    let mut cfg = EngineConfig::with_models_dir(repo_root().join("models"));
    cfg.intra_threads = 1;
    cfg.session_per_shape = Some(true);
    cfg.det.canvases = Some(vec![[64, 64]]);
    cfg.max_sessions_per_model = 4;
    cfg.rec.widths = vec![64, 96, 128, 160, 192]; // × batch sizes 1, 2, 8 = 15 shapes
    let mut e = Engine::new(cfg).expect("engine starts");
    let err = e
        .warm_up()
        .expect_err("15 rec shapes cannot fit 4 sessions");
    assert!(err.to_string().contains("max_sessions_per_model"), "{err}");
}

#[test]
fn warm_up_is_a_no_op_when_shapes_share_a_session() {
    let mut e = common::engine(1);
    let w = e.warm_up().expect("warm-up");
    assert_eq!((w.shapes, w.sessions), (0, 3));
    assert_eq!(e.session_count(), 3);
}
