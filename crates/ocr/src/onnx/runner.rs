//! The ONNX Runtime implementation of the seam: a [`ModelRunner`] over one model's sessions,
//! one run's inputs packed (uint8 graphs) and its outputs copied out.

use ndarray::ArrayView4;
use ort::session::Session;
use ort::value::TensorRef;

use super::outputs::copy_out;
use super::sessions::ModelSessions;
use crate::model::{Batch, ModelRunner, Padding, RunError, RunOutput};

/// One ONNX Runtime run on an `[n, c, h, w]` f32 tensor, or, for a graph with uint8 input
/// (`models/make_u8.py`), on `packed`: the same tensor as `[n, h, w, 4]` bytes (see
/// [`pack_u8`]); its outputs copied out (see [`RunOutput`]).
pub(crate) fn run_session(
    session: &mut Session,
    tensor: &[f32],
    n: usize,
    chw: [usize; 3],
    packed: Option<&[u8]>,
) -> Result<RunOutput, String> {
    let outputs = match packed {
        None => {
            let view = ArrayView4::from_shape((n, chw[0], chw[1], chw[2]), tensor)
                .map_err(|e| e.to_string())?;
            let input = TensorRef::from_array_view(view).map_err(|e| e.to_string())?;
            session.run(ort::inputs![input])
        }
        Some(bytes) => {
            let view = ArrayView4::from_shape((n, chw[1], chw[2], U8_CHANNELS), bytes)
                .map_err(|e| e.to_string())?;
            let input = TensorRef::from_array_view(view).map_err(|e| e.to_string())?;
            session.run(ort::inputs![input])
        }
    }
    .map_err(|e| e.to_string())?;
    copy_out(&outputs, n)
}

/// Channels of a uint8 input: B, G, R and the mask (255 for an image pixel, 0 for padding).
pub(crate) const U8_CHANNELS: usize = 4;

/// Packs `[n, 3, h, w]` planes normalised as `x · (2/255) − 1` (see
/// [`crate::preprocess::write_planes`]) into `out` as `[n, h, w, 4]` bytes for a graph made by
/// `models/make_u8.py`, which computes the same floats again on the device. Exact: every
/// normalised pixel value comes back to its byte, and a 0.0 (the padding; no byte normalises to
/// it) becomes the mask 0, which the graph turns back into 0.0.
pub(crate) fn pack_u8(tensor: &[f32], n: usize, chw: [usize; 3], out: &mut Vec<u8>) {
    let [c, h, w] = chw;
    debug_assert_eq!(c, 3);
    let plane = h * w;
    out.clear();
    out.resize(n * plane * U8_CHANNELS, 0);
    // v = x · (2/255) − 1 for a byte x, so v · 127.5 + 128 is x + 0.5 within 1e-4 and the
    // truncating cast gives x back. A valid pixel never normalises to 0.0 in any channel (x
    // would be 127.5), so blue == 0.0 marks padding; its colour bytes are then ignored by the
    // graph.
    let byte = |v: f32| (v * 127.5 + 128.0) as u8;
    for (item, dst) in tensor
        .chunks_exact(c * plane)
        .zip(out.chunks_exact_mut(plane * U8_CHANNELS))
    {
        let (b, rest) = item.split_at(plane);
        let (g, r) = rest.split_at(plane);
        for (((px, &b), &g), &r) in dst
            .chunks_exact_mut(U8_CHANNELS)
            .zip(b)
            .zip(&g[..plane])
            .zip(&r[..plane])
        {
            let mask = if b == 0.0 { 0 } else { 255 };
            px.copy_from_slice(&[byte(b), byte(g), byte(r), mask]);
        }
    }
}

/// A model's ONNX Runtime sessions as a runner.
pub(crate) struct OrtRunner {
    sessions: ModelSessions,
    /// The batch as uint8 for a graph that takes it (reused between runs).
    packed: Vec<u8>,
}

impl OrtRunner {
    pub(crate) fn new(sessions: ModelSessions) -> OrtRunner {
        OrtRunner {
            sessions,
            packed: Vec::new(),
        }
    }
}

impl ModelRunner for OrtRunner {
    fn run(&mut self, b: &Batch<'_>) -> Result<RunOutput, RunError> {
        let [c, h, w] = b.chw;
        let u8_input = self.sessions.u8_input();
        let shape = if u8_input {
            [b.run_n, h, w, U8_CHANNELS]
        } else {
            [b.run_n, c, h, w]
        };
        if u8_input {
            pack_u8(b.tensor, b.run_n, b.chw, &mut self.packed);
        }
        let packed = u8_input.then_some(&self.packed[..]);
        if self.sessions.binds() {
            let (session, bound) = self
                .sessions
                .get_bound(&shape)
                .map_err(RunError::from_message)?;
            return bound
                .run(session, b.tensor, packed, b.run_n)
                .map_err(RunError::from_message);
        }
        let session = self.sessions.get(&shape).map_err(RunError::from_message)?;
        run_session(session, b.tensor, b.run_n, b.chw, packed).map_err(RunError::from_message)
    }

    fn padding(&self) -> Padding {
        self.sessions.padding()
    }

    fn input_bytes_per_pixel(&self) -> usize {
        if self.sessions.u8_input() {
            U8_CHANNELS
        } else {
            3 * std::mem::size_of::<f32>()
        }
    }

    fn sessions(&self) -> usize {
        self.sessions.count()
    }

    fn per_shape(&self) -> bool {
        self.sessions.per_shape()
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.sessions
            .any()
            .and_then(|s| s.metadata().ok())
            .and_then(|m| m.custom(key))
    }

    fn arena_stats(&self) -> Option<Vec<(String, String)>> {
        self.sessions.arena_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte, normalised as the host writes it, packs back to itself with the mask set;
    /// the zeros of padding pack to the mask 0 (their colour bytes do not matter: the graph
    /// zeroes them); the layout is [n, h, w, B G R mask].
    #[test]
    fn packing_to_u8_is_exact_and_masks_the_padding() {
        // One item, 3 × 1 × 257: pixel x has the byte x in blue, 255 - x in green, x / 2 in red;
        // the last pixel is padding.
        let mut img = image::RgbImage::new(256, 1);
        for x in 0..256u32 {
            let b = x as u8;
            img.put_pixel(x, 0, image::Rgb([b / 2, 255 - b, b]));
        }
        let mut planes = vec![0f32; 3 * 257];
        crate::preprocess::write_planes(&img, &mut planes, 257, 1);
        let mut out = vec![7u8; 3];
        pack_u8(&planes, 1, [3, 1, 257], &mut out);
        assert_eq!(out.len(), 257 * U8_CHANNELS);
        let packed_once = out.clone();
        for x in 0..256usize {
            let b = x as u8;
            assert_eq!(
                &out[x * 4..x * 4 + 4],
                &[b, 255 - b, b / 2, 255],
                "pixel {x}"
            );
        }
        assert_eq!(out[256 * 4 + 3], 0, "padding is masked");
        // A second item all padding (a batch padded to its session's size).
        let two = [planes.clone(), vec![0.0; 3 * 257]].concat();
        pack_u8(&two, 2, [3, 1, 257], &mut out);
        assert_eq!(&out[..257 * 4 - 1], &packed_once[..257 * 4 - 1]);
        assert!(out[257 * 4..].chunks(4).all(|px| px[3] == 0));
    }
}
