//! Typed errors. Callers branch on [`Stage`] (which part of the pipeline failed, for the
//! dead-letter record) and on [`OcrError::is_input_error`] (whether retrying can help).

use serde::Serialize;

/// The pipeline stage an error belongs to. Serialised in lower case (`"decode"`, ...), which is
/// the vocabulary the worker's dead-letter headers and `ocrfleet ocr --ndjson` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Turning bytes into pixels.
    Decode,
    /// Text detection (DB).
    Detect,
    /// The 180° classifier.
    Classify,
    /// Text recognition (CTC).
    Recognize,
    /// Somewhere in the engine, not known where (a panic caught around a whole call).
    Engine,
}

impl Stage {
    /// The stage's name as used in logs, metrics and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Detect => "detect",
            Stage::Classify => "classify",
            Stage::Recognize => "recognize",
            Stage::Engine => "engine",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one image could not be read. Each variant is about the input, never about the engine.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("empty input: 0 bytes")]
    Empty,
    #[error("unrecognised image format (supported: JPEG, PNG, WebP, BMP, TIFF, GIF)")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels (raise max_pixels to allow it)")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the file has more than {limit} pages (images); raise the page limit (--max-pages) to read it")]
    TooManyPages { limit: u32 },
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// A failure for one image. The engine returns one `Result` per input, so an error here never
/// affects the other images of a batch.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OcrError {
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// ONNX Runtime failed on this image's tensors even when run on its own.
    #[error("{stage}: inference failed: {message}")]
    Inference { stage: Stage, message: String },
    /// The device ran out of memory even with this image run alone: not the image's fault (the
    /// worker treats it as an engine fault and runs it again later).
    #[error("{stage}: the device ran out of memory: {message}")]
    DeviceOutOfMemory { stage: Stage, message: String },
    /// The engine went away (its thread stopped) before this image was processed.
    #[error("engine is not running: {0}")]
    EngineGone(String),
    /// The engine panicked on this image, run on its own (a bug: the image is kept out so that
    /// it cannot take its batch-mates or the process down with it).
    #[error("the engine panicked on this image: {0}")]
    Panic(String),
}

impl OcrError {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        match self {
            OcrError::Decode(_) => Stage::Decode,
            OcrError::Inference { stage, .. } | OcrError::DeviceOutOfMemory { stage, .. } => *stage,
            OcrError::EngineGone(_) | OcrError::Panic(_) => Stage::Engine,
        }
    }

    /// A short machine-readable class, e.g. for a dead-letter `class` header.
    pub fn class(&self) -> &'static str {
        match self {
            OcrError::Decode(DecodeError::Empty) => "empty",
            OcrError::Decode(DecodeError::UnknownFormat) => "unknown_format",
            OcrError::Decode(DecodeError::TooLarge { .. }) => "too_large",
            OcrError::Decode(DecodeError::ZeroSize { .. }) => "zero_size",
            OcrError::Decode(DecodeError::TooManyPages { .. }) => "too_many_pages",
            OcrError::Decode(DecodeError::Corrupt(_)) => "corrupt",
            OcrError::Inference { .. } => "inference",
            OcrError::DeviceOutOfMemory { .. } => "device_out_of_memory",
            OcrError::EngineGone(_) => "engine_gone",
            OcrError::Panic(_) => "panic",
        }
    }

    /// True when the input itself is bad, so retrying the same bytes cannot succeed.
    pub fn is_input_error(&self) -> bool {
        matches!(self, OcrError::Decode(_))
    }
}

/// Why an engine's health probe failed. The caller decides on the kind: a [`ProbeError::Gone`]
/// engine cannot come back inside this process (exit and be restarted), a
/// [`ProbeError::Failing`] one may (back off and probe again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The engine's threads have stopped: no call can run any more.
    #[error("the engine is gone: {0}")]
    Gone(String),
    /// The engine is there and its known-good run failed (the device or runtime is failing).
    #[error("the engine failed its probe: {0}")]
    Failing(String),
}

/// Errors building the engine: missing model files, ONNX Runtime that cannot load, a CUDA
/// provider that was asked for and is not there. These are configuration problems, reported
/// once at start-up with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime library could not be loaded from {path}: {message}. Run models/fetch.sh or set ORT_DYLIB_PATH to a libonnxruntime.so (>= 1.23)")]
    Runtime { path: String, message: String },
    #[error("model file {path} is missing or unreadable: {message}. Run models/fetch.sh (add v6 for the PP-OCRv6 set) or set --models-dir")]
    Model { path: String, message: String },
    #[error("the recognition model {path} has no `character` dictionary in its metadata")]
    Dictionary { path: String },
    #[error("CUDA device {device} was requested but the CUDA execution provider could not be registered: {message}. Check that libonnxruntime_providers_cuda.so, CUDA 13 and cuDNN 9 are on LD_LIBRARY_PATH (no CPU fallback is made)")]
    Cuda { device: u32, message: String },
    #[error("this build has no CUDA support: rebuild with `--features cuda` to use --device cuda")]
    CudaNotBuilt,
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
}

impl From<ort::Error> for EngineError {
    fn from(e: ort::Error) -> Self {
        EngineError::Ort(e.to_string())
    }
}
