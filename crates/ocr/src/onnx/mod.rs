//! The ONNX Runtime wing: the library ([`runtime`]: loading it, sessions and their options),
//! a model's sessions ([`sessions`]: one, or one per fixed input shape on CUDA), IoBinding with
//! pinned buffers ([`binding`]) and the runner that puts them behind the seam
//! ([`runner::OrtRunner`], a [`crate::model::ModelRunner`]). Nothing outside this folder names
//! ONNX Runtime's types. (The folder is not called `ort`, which would shadow the `ort` crate.)

pub(crate) mod binding;
mod outputs;
pub(crate) mod runner;
pub mod runtime;
pub(crate) mod sessions;
