//! # ocrfleet-ocr
//!
//! A batched PP-OCR engine (detection → 180° classification → recognition) on ONNX Runtime,
//! with PaddleOCR/RapidOCR semantics. No network code lives here: the worker feeds it bytes or
//! pixels and gets one `Result` per image back.
//!
//! ```no_run
//! use ocrfleet_ocr::{Engine, EngineConfig};
//! let mut engine = Engine::new(EngineConfig::with_models_dir("models"))?;
//! let bytes = std::fs::read("receipt.jpg")?;
//! for result in engine.recognize_bytes(&[&bytes]) {
//!     match result {
//!         Ok(page) => println!("{}", page.text),
//!         Err(e) => eprintln!("{} failed: {e}", e.stage()),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cls;
pub mod config;
pub mod crop;
pub mod decode;
pub mod det;
mod engine;
pub mod error;
mod handle;
mod instruments;
pub mod model;
mod onnx;
pub mod output;
mod overlap;
pub mod preprocess;
pub mod rec;
pub mod words;

pub use instruments::device;
pub use onnx::runtime;

pub use config::{
    streams_for, ClsConfig, DetConfig, Device, EngineConfig, FaultPlan, ImageFault, ModelSet,
    RecConfig,
};
pub use engine::{ArenaStats, Engine, Model, ModelTime, WarmUp};
pub use error::{DecodeError, EngineError, OcrError, ProbeError, Stage};
pub use handle::EngineHandle;
pub use output::{ImageText, Line, TextSource, Timings};
pub use words::{SpaceRule, Word};

/// True when this build can use CUDA (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The version of the ONNX Runtime library loaded by the first engine (e.g. `1.32.0`, from the
/// library's `OrtGetApiBase()->GetVersionString()`), or `unknown` before any engine started.
pub fn runtime_version() -> String {
    runtime::version().unwrap_or_else(|| "unknown".to_owned())
}
