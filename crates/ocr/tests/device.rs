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
