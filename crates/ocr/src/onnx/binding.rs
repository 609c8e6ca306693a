//! IoBinding for the fixed-shape sessions (`--io-binding`): each session gets, once, an input
//! tensor of its one shape in memory the device copies from directly (CUDA-pinned host memory on
//! CUDA; the CPU allocator's on CPU) and its outputs bound to pinned host memory, so that a run
//! copies the batch once into the pinned buffer and ONNX Runtime moves it to the device by DMA
//! instead of staging a pageable copy, and the outputs come back the same way.
//!
//! Not yet run on a GPU: on CPU (the tests) the same code runs with the CPU allocator, which
//! proves the binding, the copies and the outputs, not the speed.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::outputs::copy_out;
use crate::config::Device;
use crate::model::RunOutput;

/// The input tensor of a bound session: the model's f32 planes, or the bytes of a uint8-input
/// graph (`models/make_u8.py`).
enum Input {
    F32(Tensor<f32>),
    U8(Tensor<u8>),
}

/// One fixed-shape session's binding and its input buffer (see the module documentation).
pub(crate) struct Bound {
    binding: IoBinding,
    input: Input,
    name: String,
}

/// The memory inputs are written to and outputs read from: CUDA-pinned host memory on CUDA.
fn host_memory(device: Device, kind: MemoryType) -> ort::Result<MemoryInfo<'static>> {
    match device {
        Device::Cuda(id) => MemoryInfo::new(
            AllocationDevice::CUDA_PINNED,
            id as i32,
            AllocatorType::Device,
            kind,
        ),
        Device::Cpu => MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        ),
    }
}

impl Bound {
    /// Binds `session`, whose input has the fixed `shape`, on `device`.
    pub(crate) fn new(
        session: &Session,
        device: Device,
        shape: &[usize],
        u8_input: bool,
    ) -> Result<Bound, String> {
        let e = |e: ort::Error| format!("io binding: {e}");
        let allocator = match device {
            Device::Cpu => Allocator::default(),
            Device::Cuda(_) => Allocator::new(
                session,
                host_memory(device, MemoryType::CPUInput).map_err(e)?,
            )
            .map_err(e)?,
        };
        let input = if u8_input {
            Input::U8(Tensor::<u8>::new(&allocator, shape.to_vec()).map_err(e)?)
        } else {
            Input::F32(Tensor::<f32>::new(&allocator, shape.to_vec()).map_err(e)?)
        };
        let mut binding = session.create_binding().map_err(e)?;
        let out = host_memory(device, MemoryType::CPUOutput).map_err(e)?;
        for o in session.outputs() {
            binding.bind_output_to_device(o.name(), &out).map_err(e)?;
        }
        let name = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or("io binding: the model has no input")?;
        Ok(Bound {
            binding,
            input,
            name,
        })
    }

    /// Runs `session` on `n` items: `tensor` (f32 planes) or, for a uint8-input graph, `packed`,
    /// copied into the bound buffer, which must have exactly its length.
    pub(crate) fn run(
        &mut self,
        session: &mut Session,
        tensor: &[f32],
        packed: Option<&[u8]>,
        n: usize,
    ) -> Result<RunOutput, String> {
        let e = |e: ort::Error| format!("io binding: {e}");
        let fill = |dst_len: usize, src_len: usize| {
            if dst_len == src_len {
                Ok(())
            } else {
                Err(format!(
                    "io binding: a {src_len}-value batch for a {dst_len}-value input"
                ))
            }
        };
        // ONNX Runtime copies a bound input to the device when it is bound, so bind after
        // every fill.
        match (&mut self.input, packed) {
            (Input::U8(t), Some(src)) => {
                let (_, dst) = t.extract_tensor_mut();
                fill(dst.len(), src.len())?;
                dst.copy_from_slice(src);
                self.binding.bind_input(&self.name, t).map_err(e)?;
            }
            (Input::F32(t), None) => {
                let (_, dst) = t.extract_tensor_mut();
                fill(dst.len(), tensor.len())?;
                dst.copy_from_slice(tensor);
                self.binding.bind_input(&self.name, t).map_err(e)?;
            }
            _ => return Err("io binding: input type differs from the bound one".into()),
        }
        let outputs = session.run_binding(&self.binding).map_err(e)?;
        copy_out(&outputs, n)
    }
}
