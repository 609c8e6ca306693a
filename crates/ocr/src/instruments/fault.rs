//! Test-only fault injection (the worker's hidden `--test-engine-fault`, see
//! [`crate::FaultPlan`]), kept out of the pipeline: a [`FaultRunner`] wraps each model's runners
//! and fails their runs while the plan says so; the per-image faults (panic, abort, hang) are
//! checked where a call enters the engine ([`check_images`]). No GPU can be broken on purpose
//! on the machines these tests run on.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use image::RgbImage;

use crate::config::{FaultPlan, ImageFault};
use crate::error::Stage;
use crate::model::{Batch, ModelRunner, Padding, RunError, RunOutput};

/// Progress of a [`FaultPlan::Fail`] or [`FaultPlan::OutOfMemory`], shared by the three
/// models' runners.
#[derive(Debug)]
pub(crate) struct FailState {
    /// Out of memory on detector runs only, instead of every run failing.
    out_of_memory: bool,
    after_images: usize,
    seconds: f64,
    images: usize,
    failing_since: Option<Instant>,
}

impl FailState {
    pub(crate) fn new(plan: FaultPlan) -> Option<Arc<Mutex<FailState>>> {
        let (out_of_memory, after_images, seconds) = match plan {
            FaultPlan::Fail {
                after_images,
                seconds,
            } => (false, after_images, seconds),
            FaultPlan::OutOfMemory {
                after_images,
                seconds,
            } => (true, after_images, seconds),
            _ => return None,
        };
        Some(Arc::new(Mutex::new(FailState {
            out_of_memory,
            after_images,
            seconds,
            images: 0,
            failing_since: None,
        })))
    }

    /// How a run of `stage` fails now, if it does; counts `images` towards the trigger while
    /// runs do not fail.
    fn failure(&mut self, stage: Stage, images: usize) -> Option<RunError> {
        if !self.failing(images) {
            return None;
        }
        if !self.out_of_memory {
            return Some(RunError::from_message("injected engine fault"));
        }
        // The CUDA allocator's wording, so that it is read as the real one would be.
        (stage == Stage::Detect)
            .then(|| RunError::from_message("injected engine fault: CUDA failure 2: out of memory"))
    }

    /// Whether runs fail now; counts `images` towards the trigger while they do not.
    fn failing(&mut self, images: usize) -> bool {
        if self.failing_since.is_none() && self.images >= self.after_images {
            tracing::warn!(
                after_images = self.after_images,
                seconds = self.seconds,
                "injected engine fault starts"
            );
            self.failing_since = Some(Instant::now());
        }
        match self.failing_since {
            Some(t) => t.elapsed().as_secs_f64() < self.seconds,
            None => {
                self.images += images;
                false
            }
        }
    }
}

/// Fails runs while the shared [`FailState`] says so; detector runs count images.
pub(crate) struct FaultRunner {
    pub(crate) inner: Box<dyn ModelRunner>,
    pub(crate) state: Arc<Mutex<FailState>>,
}

impl ModelRunner for FaultRunner {
    fn run(&mut self, b: &Batch<'_>) -> Result<RunOutput, RunError> {
        let images = if b.stage == Stage::Detect { b.n } else { 0 };
        let failure = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failure(b.stage, images);
        match failure {
            Some(e) => Err(e),
            None => self.inner.run(b),
        }
    }

    fn padding(&self) -> Padding {
        self.inner.padding()
    }

    fn sessions(&self) -> usize {
        self.inner.sessions()
    }

    fn input_bytes_per_pixel(&self) -> usize {
        self.inner.input_bytes_per_pixel()
    }

    fn per_shape(&self) -> bool {
        self.inner.per_shape()
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.inner.metadata(key)
    }

    fn arena_stats(&self) -> Option<Vec<(String, String)>> {
        self.inner.arena_stats()
    }
}

/// Carries out a [`FaultPlan::Image`] when one of `images` has its size: panics, aborts the
/// process, or hangs for ever.
pub(crate) fn check_images(plan: Option<FaultPlan>, images: &[RgbImage]) {
    let Some(FaultPlan::Image { width, height, on }) = plan else {
        return;
    };
    if !images.iter().any(|i| i.dimensions() == (width, height)) {
        return;
    }
    match on {
        ImageFault::Panic => panic!("injected engine fault: panic on a {width}x{height} image"),
        ImageFault::Abort => {
            tracing::error!(
                "injected engine fault: aborting the process on a {width}x{height} image"
            );
            std::process::abort();
        }
        ImageFault::Hang => {
            tracing::error!("injected engine fault: hanging on a {width}x{height} image");
            loop {
                std::thread::park();
            }
        }
    }
}
