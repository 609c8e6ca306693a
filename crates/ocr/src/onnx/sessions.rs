//! The ONNX Runtime sessions of one model: one shared session, or one session per input shape.
//!
//! Why per shape: on CUDA with cuDNN 9, ONNX Runtime's Conv kernel keeps the execution plan of
//! the *last* input shape only, and rebuilds it (cuDNN frontend graph, heuristics, plan build)
//! whenever a run's shape differs from the previous one. Measured on an H200 with ONNX Runtime
//! 1.31.1 and PP-OCRv4: det at batch 1 over 40 page shapes, all seen before, took 81 ms a call
//! and kept the GPU 0–10 % busy, against 4.8 ms a call at one fixed shape. A session per shape
//! (batch size included) keeps every plan built once. So that few shapes exist, and all of them
//! can be made and run once at start ([`crate::Engine::warm_up`]), a batch of `n` items is
//! padded up to the next of three sizes, `1`, `⌈B/4⌉` and `B` for a model's batch size `B`
//! ([`crate::model::batch_sizes`]); the padding items are zeros and their outputs are
//! dropped. The detector
//! pads images to a few fixed canvases ([`crate::DetConfig::canvases`]) and the recogniser to
//! a few widths, for the same reason. On CPU there is no such cost, so one session serves every
//! shape and nothing is padded.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::Session;

use crate::error::EngineError;
use crate::model::Padding;
use crate::onnx::binding::Bound;
use crate::onnx::runtime::{self, SessionOptions};

/// The sessions of one model file.
pub(crate) struct ModelSessions {
    cfg: SessionOptions,
    env: Environment,
    path: PathBuf,
    /// The names of the input's symbolic dimensions (fixed per session, see
    /// [`runtime::session_fixed`]).
    symbols: Vec<String>,
    /// The input is uint8 NHWC with a mask channel (`models/make_u8.py`), not f32 NCHW.
    u8_input: bool,
    mode: Mode,
}

enum Mode {
    Shared(Session),
    PerShape {
        /// (input shape, session, last use, its IoBinding once made), at most `cap` entries.
        sessions: Vec<(Vec<usize>, Session, u64, Option<Bound>)>,
        /// The session made at start (to fail early and read metadata), not yet pinned.
        spare: Option<Session>,
        cap: usize,
        clock: u64,
    },
}

impl ModelSessions {
    /// Loads `path` once (so a missing or broken model fails here, at start).
    pub(crate) fn new(
        cfg: &SessionOptions,
        env: &Environment,
        path: &Path,
    ) -> Result<ModelSessions, EngineError> {
        let first = runtime::session(cfg, env, path)?;
        let (symbols, u8_input) = match first.inputs().first().map(|o| o.dtype()) {
            Some(ort::value::ValueType::Tensor {
                dimension_symbols,
                ty,
                ..
            }) => (
                dimension_symbols.iter().cloned().collect(),
                *ty == ort::value::TensorElementType::Uint8,
            ),
            _ => (Vec::new(), false),
        };
        let mode = if cfg.per_shape {
            Mode::PerShape {
                sessions: Vec::new(),
                spare: Some(first),
                cap: cfg.max_per_model.max(1),
                clock: 0,
            }
        } else {
            Mode::Shared(first)
        };
        Ok(ModelSessions {
            cfg: *cfg,
            env: env.clone(),
            path: path.to_path_buf(),
            symbols,
            u8_input,
            mode,
        })
    }

    /// How a run's batch is padded: to the ladder's sizes with a session per shape.
    pub(crate) fn padding(&self) -> Padding {
        match self.mode {
            Mode::Shared(_) => Padding::Exact,
            Mode::PerShape { .. } => Padding::Ladder,
        }
    }

    /// True when the model takes uint8 NHWC input with a mask channel (`models/make_u8.py`).
    pub(crate) fn u8_input(&self) -> bool {
        self.u8_input
    }

    /// True when each input shape has its own session (and so is worth warming up).
    pub(crate) fn per_shape(&self) -> bool {
        matches!(self.mode, Mode::PerShape { .. })
    }

    /// Any session, for metadata.
    pub(crate) fn any(&self) -> Option<&Session> {
        match &self.mode {
            Mode::Shared(s) => Some(s),
            Mode::PerShape {
                sessions, spare, ..
            } => spare.as_ref().or(sessions.first().map(|(_, s, _, _)| s)),
        }
    }

    /// The counters of the shared arena these sessions allocate from
    /// ([`SessionOptions::shared_arena`]), read through one of them; `None` with arenas of
    /// their own.
    pub(crate) fn arena_stats(&self) -> Option<Vec<(String, String)>> {
        if !self.cfg.shared_arena {
            return None;
        }
        runtime::arena_stats(self.any()?, self.cfg.device)
    }

    /// Sessions alive now.
    pub(crate) fn count(&self) -> usize {
        match &self.mode {
            Mode::Shared(_) => 1,
            Mode::PerShape {
                sessions, spare, ..
            } => sessions.len() + usize::from(spare.is_some()),
        }
    }

    /// True when runs go through an IoBinding (`--io-binding`, fixed-shape sessions only).
    pub(crate) fn binds(&self) -> bool {
        self.cfg.io_binding && self.per_shape()
    }

    /// The session for an input of `shape`, made on first use.
    pub(crate) fn get(&mut self, shape: &[usize]) -> Result<&mut Session, String> {
        self.entry(shape).map(|(s, _)| s)
    }

    /// The session for an input of `shape` and its IoBinding, both made on first use (see
    /// [`ModelSessions::binds`]; a shared session has none).
    pub(crate) fn get_bound(
        &mut self,
        shape: &[usize],
    ) -> Result<(&mut Session, &mut Bound), String> {
        let (device, u8_input) = (self.cfg.device, self.u8_input);
        match self.entry(shape)? {
            (session, Some(bound)) => {
                if bound.is_none() {
                    *bound = Some(Bound::new(session, device, shape, u8_input)?);
                }
                Ok((session, bound.as_mut().expect("made above")))
            }
            (_, None) => Err("io binding needs a session per input shape".into()),
        }
    }

    #[allow(clippy::type_complexity)]
    fn entry(
        &mut self,
        shape: &[usize],
    ) -> Result<(&mut Session, Option<&mut Option<Bound>>), String> {
        match &mut self.mode {
            Mode::Shared(s) => Ok((s, None)),
            Mode::PerShape {
                sessions,
                spare,
                cap,
                clock,
            } => {
                *clock += 1;
                let now = *clock;
                let idx = match sessions.iter().position(|(s, _, _, _)| s == shape) {
                    Some(i) => i,
                    None => {
                        // Each session is made for its one shape, its dimensions fixed (the
                        // spare session made at start, with symbolic ones, is dropped).
                        spare.take();
                        let session = runtime::session_fixed(
                            &self.cfg,
                            &self.env,
                            &self.path,
                            &self.symbols,
                            shape,
                        )
                        .map_err(|e| e.to_string())?;
                        if sessions.len() >= *cap {
                            let oldest = sessions
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, (_, _, used, _))| *used)
                                .map(|(i, _)| i)
                                .expect("cap ≥ 1, so not empty");
                            sessions.swap_remove(oldest);
                        }
                        tracing::debug!(model = %self.path.display(), ?shape, alive = sessions.len() + 1, "new session for input shape");
                        sessions.push((shape.to_vec(), session, now, None));
                        sessions.len() - 1
                    }
                };
                let entry = &mut sessions[idx];
                entry.2 = now;
                Ok((&mut entry.1, Some(&mut entry.3)))
            }
        }
    }
}
