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

/// The CUDA shape policy (a session per input shape, batches padded to a power of two,
/// detector sides padded to buckets), run on CPU: the same lines as the default path, one
/// session per distinct shape, and no result depends on the padding batch-mates. Boxes move by
/// a pixel or two where the detector sees more zero padding (IoU ≥ 0.8, as in the parity test).
#[test]
fn per_shape_sessions_and_buckets_give_the_same_lines() {
    let images = common::fixture_images();
    let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let plain = common::engine(2).recognize_bytes(&refs);

    let mut cfg = EngineConfig::with_models_dir(repo_root().join("models"));
    cfg.intra_threads = 2;
    cfg.session_per_shape = Some(true);
    cfg.det.buckets = Some(ocrfleet_ocr::DetConfig::CUDA_BUCKETS.to_vec());
    cfg.det.batch_size = 3; // a group of 3 runs padded to 4
    let mut pinned = Engine::new(cfg).expect("engine starts");
    assert_eq!(pinned.session_count(), 3, "one session per model at start");
    let got = pinned.recognize_bytes(&refs);
    assert!(
        pinned.session_count() > 3,
        "new shapes made new sessions, got {}",
        pinned.session_count()
    );
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
    println!("{same}/{lines} lines identical with spaces under the CUDA shape policy");
    assert!(lines >= 80);
}
