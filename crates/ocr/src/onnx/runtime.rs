//! ONNX Runtime loading and session creation.
//!
//! ONNX Runtime is loaded at run time (`load-dynamic`) from a path the caller controls, so one
//! binary runs with the CPU library in tests and the CUDA build on GPU hosts. `ort` allows one
//! environment per process; it is created once and shared by every engine.
//!
//! CUDA is never a silent fallback: when `--device cuda` is asked for and the provider cannot
//! be registered, session creation fails with [`EngineError::Cuda`].

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::AsPointer;

use crate::config::{Device, EngineConfig};
use crate::error::EngineError;

/// What session creation needs of the engine's configuration, taken once
/// ([`SessionOptions::from_config`]), so that the sessions keep these few values and not the
/// whole [`EngineConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    pub device: Device,
    /// ONNX Runtime's intra-op threads (0: its default; one on CUDA).
    pub intra_threads: usize,
    /// Each session's arena limit on CUDA ([`EngineConfig::session_memory_limit`]; none with
    /// the shared arena, which holds the limit itself).
    pub memory_limit: Option<usize>,
    /// The sessions take the device's shared arena, registered with the environment
    /// ([`shared_arena`]), instead of making their own.
    pub shared_arena: bool,
    /// A session per input shape (CUDA), at most `max_per_model` alive per runner.
    pub per_shape: bool,
    pub max_per_model: usize,
    /// Runs go through an IoBinding (`--io-binding`; fixed-shape sessions only).
    pub io_binding: bool,
}

impl SessionOptions {
    pub fn from_config(cfg: &EngineConfig) -> SessionOptions {
        SessionOptions {
            device: cfg.device,
            intra_threads: cfg.intra_threads,
            memory_limit: cfg.session_memory_limit(),
            shared_arena: cfg.shared_arena,
            per_shape: cfg.per_shape_sessions(),
            max_per_model: cfg.max_sessions_per_model.max(1),
            io_binding: cfg.io_binding,
        }
    }
}

static ENV: OnceLock<Environment> = OnceLock::new();
static ENV_INIT: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime from `library` (first call only; later calls reuse it).
pub fn environment(library: &Path) -> Result<Environment, EngineError> {
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let _guard = ENV_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    if !library.exists() {
        return Err(EngineError::Runtime {
            path: library.display().to_string(),
            message: "no such file".into(),
        });
    }
    let builder = ort::init_from(library).map_err(|e| EngineError::Runtime {
        path: library.display().to_string(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("ocrfleet")
        .build()
        .map_err(EngineError::from)?;
    let _ = ENV.set(env.clone());
    let _ = VERSION.set(read_version(library));
    Ok(env)
}

/// The loaded library's version, once [`environment`] has run.
pub(crate) fn version() -> Option<String> {
    VERSION.get().cloned().flatten()
}

static VERSION: OnceLock<Option<String>> = OnceLock::new();

/// `OrtGetApiBase()->GetVersionString()` of the ONNX Runtime library at `path` (when ort has
/// loaded it already, opening it again only takes a reference). `None` when there is no such
/// library or it has no such symbol.
pub fn read_version(path: &Path) -> Option<String> {
    // SAFETY: the library is ONNX Runtime (its exported OrtGetApiBase is checked for);
    // OrtGetApiBase takes no arguments and returns a pointer to a static struct whose
    // GetVersionString returns a static NUL-terminated string. Loading it runs no code of
    // ours and ONNX Runtime's initialisers only set up static state.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<'_, unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(s).to_str().ok().map(str::to_owned)
    }
}

/// Creates a session for `model` on the configured device.
pub fn session(
    cfg: &SessionOptions,
    env: &Environment,
    model: &Path,
) -> Result<Session, EngineError> {
    session_fixed(cfg, env, model, &[], &[])
}

/// [`session`] for one input shape: each named symbolic dimension of the input (`symbols`,
/// empty names skipped) is fixed to its size in `shape` (ONNX Runtime's free dimension
/// overrides), so that the optimiser folds the graph's shape computations into constants. A
/// graph whose `Shape` nodes are folded away runs wholly on the CUDA provider (ONNX Runtime
/// would otherwise place them on the CPU), which CUDA graphs need.
pub fn session_fixed(
    cfg: &SessionOptions,
    env: &Environment,
    model: &Path,
    symbols: &[String],
    shape: &[usize],
) -> Result<Session, EngineError> {
    if !model.is_file() {
        return Err(EngineError::Model {
            path: model.display().to_string(),
            message: "no such file".into(),
        });
    }
    let mut builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort::Error::from)?;
    // On CUDA the intra-op pool only runs the few CPU-side nodes (shapes), and with a session
    // per input shape (see `sessions`) a pool per session of all cores would mean hundreds of
    // spinning threads: one thread unless asked otherwise.
    let threads = match (cfg.intra_threads, cfg.device) {
        (0, Device::Cuda(_)) => 1,
        (n, _) => n,
    };
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(ort::Error::from)?;
    }
    if let Device::Cuda(n) = cfg.device {
        // A spinning intra-op thread per session would burn a core each while the device works
        // (and there are many sessions): the host's cores belong to the engine's host stages.
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(ort::Error::from)?
            .with_inter_op_spinning(false)
            .map_err(ort::Error::from)?;
        blocking_sync(n);
    }
    if cfg.shared_arena {
        builder = builder.with_env_allocators().map_err(ort::Error::from)?;
    }
    for (symbol, size) in fixed_dimensions(symbols, shape) {
        builder = builder
            .with_dimension_override(&symbol, size as i64)
            .map_err(ort::Error::from)?;
    }
    match cfg.device {
        Device::Cpu => {}
        Device::Cuda(n) => builder = with_cuda(builder, n, cfg)?,
    }
    builder.commit_from_file(model).map_err(|e| {
        let message = e.to_string();
        match cfg.device {
            Device::Cuda(device) if message.to_lowercase().contains("cuda") => {
                EngineError::Cuda { device, message }
            }
            _ => EngineError::Model {
                path: model.display().to_string(),
                message,
            },
        }
    })
}

/// The devices whose shared arena was asked for, with the limit it was registered with, or why
/// ONNX Runtime refused it (asked once: a refusal is not asked again, nor warned again).
#[allow(clippy::type_complexity)]
static ARENAS: Mutex<Vec<(Device, Result<Option<u64>, String>)>> = Mutex::new(Vec::new());

/// Registers one memory arena for `device` with the environment, once per process, so that
/// every session made with [`SessionOptions::shared_arena`] allocates from it: ONNX Runtime's
/// `CreateAndRegisterAllocatorV2` (provider `CUDAExecutionProvider`, device memory) on CUDA,
/// `CreateAndRegisterAllocator` on CPU; the sessions then replace their own allocator for that
/// device by the environment's (`session.use_env_allocators`). One arena keeps one peak, not a
/// peak per session, and `limit` bounds all of them together (the arena's `max_mem`; an
/// allocation past it fails, which the engine's out-of-memory ladder answers). The arena grows
/// by powers of two ([`ArenaCfg::new`] says why and what it measured).
///
/// Registered once: a second engine in the process (tests, `bench` rows) shares the first's
/// arena and its limit (a different limit is warned about, not applied). An `Err` says why
/// ONNX Runtime refused (the caller falls back to an arena per session).
pub(crate) fn shared_arena(
    env: &Environment,
    device: Device,
    limit: Option<u64>,
) -> Result<(), String> {
    let mut arenas = ARENAS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, first)) = arenas.iter().find(|(d, _)| *d == device) {
        return match first {
            Ok(first) if *first != limit => {
                tracing::warn!(%device, first = ?first, asked = ?limit, "the device's shared arena was registered with another limit; the first one holds");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(why) => Err(format!("{why} (refused before)")),
        };
    }
    let made = register(env, device, limit);
    arenas.push((device, made.clone().map(|()| limit)));
    made?;
    tracing::info!(%device, limit_mib = limit.map(|l| l >> 20), "one memory arena shared by every session on the device");
    Ok(())
}

/// `CreateAndRegisterAllocator(V2)` for [`shared_arena`].
fn register(env: &Environment, device: Device, limit: Option<u64>) -> Result<(), String> {
    let info = memory_info(device)?;
    let arena = ArenaCfg::new(limit.unwrap_or(0) as usize)?;
    let api = ort::api();
    let envp = env.ptr().cast_mut();
    // SAFETY: `envp`, `info` and `arena` are live ONNX Runtime objects for the whole call
    // (ONNX Runtime copies what it keeps of them); the key and value arrays hold NUL-terminated
    // strings that outlive the call, and their length is passed.
    let status = unsafe {
        match device {
            Device::Cpu => (api.CreateAndRegisterAllocator)(envp, info.ptr(), arena.0),
            Device::Cuda(n) => {
                blocking_sync(n);
                let id = std::ffi::CString::new(n.to_string()).expect("digits have no NUL");
                let keys = [c"device_id".as_ptr()];
                let values = [id.as_ptr()];
                (api.CreateAndRegisterAllocatorV2)(
                    envp,
                    c"CUDAExecutionProvider".as_ptr(),
                    info.ptr(),
                    arena.0,
                    keys.as_ptr(),
                    values.as_ptr(),
                    keys.len(),
                )
            }
        }
    };
    check(status)
}

/// The counters of the arena that serves `session`'s allocations on `device` (ONNX Runtime's
/// `AllocatorGetStats` on the session's allocator for that memory: `InUse`, `TotalAllocated`,
/// `MaxInUse`, `NumAllocs`, `NumReserves`, `Limit`, ...). With the shared arena every session
/// reads the same counters. (The environment's `GetSharedAllocator` is no way to them: it
/// answered an empty set on ONNX Runtime 1.32's CPU build, while the session's allocator
/// counted the other sessions' runs.)
pub(crate) fn arena_stats(session: &Session, device: Device) -> Option<Vec<(String, String)>> {
    let allocator = ort::memory::Allocator::new(session, memory_info(device).ok()?).ok()?;
    let api = ort::api();
    let mut pairs: *mut ort::sys::OrtKeyValuePairs = std::ptr::null_mut();
    // SAFETY: the allocator is live for the call; AllocatorGetStats makes a key-value set that
    // is read here and released before returning, its strings copied out first.
    unsafe {
        check((api.AllocatorGetStats)(allocator.ptr(), &mut pairs)).ok()?;
        if pairs.is_null() {
            return None;
        }
        let mut keys: *const *const std::ffi::c_char = std::ptr::null();
        let mut values: *const *const std::ffi::c_char = std::ptr::null();
        let mut n = 0usize;
        (api.GetKeyValuePairs)(pairs, &mut keys, &mut values, &mut n);
        let text = |p: *const std::ffi::c_char| {
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let out = (0..n)
            .map(|i| (text(*keys.add(i)), text(*values.add(i))))
            .collect();
        (api.ReleaseKeyValuePairs)(pairs);
        Some(out)
    }
}

/// The memory the shared arena of `device` hands out: device memory on CUDA (ONNX Runtime's
/// `"Cuda"` allocator name), host memory on CPU; an arena, default memory type.
fn memory_info(device: Device) -> Result<ort::memory::MemoryInfo<'static>, String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    let (what, id) = match device {
        Device::Cpu => (AllocationDevice::CPU, 0),
        Device::Cuda(n) => (AllocationDevice::CUDA, n as i32),
    };
    MemoryInfo::new(what, id, AllocatorType::Arena, MemoryType::Default).map_err(|e| e.to_string())
}

/// An `OrtArenaCfg`, released when dropped.
struct ArenaCfg(*mut ort::sys::OrtArenaCfg);

impl ArenaCfg {
    /// `max_mem` bytes at most (0: no limit), grown by powers of two (`arena_extend_strategy`
    /// 0, kNextPowerOfTwo; ONNX Runtime caps each step, `max_power_of_two_extend_bytes`, and
    /// the limit holds). Not by what is asked for (kSameAsRequested): one arena serving many
    /// shapes then keeps a region per size it was once asked for. Measured with `ocrfleet
    /// bench ocr --images <5 real pages> --simulate --like-cuda --session-per-shape
    /// --device-streams 2 ...` (134 sessions on the CPU provider, one arena): after warm-up
    /// kSameAsRequested held 10,104 MiB for at most 2,985 MiB in use (peak RSS 12.4 GB),
    /// kNextPowerOfTwo 3,696 MiB for 2,513 MiB (5.5 GB).
    fn new(max_mem: usize) -> Result<ArenaCfg, String> {
        let keys = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
        let values = [max_mem, 0];
        let mut out: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
        // SAFETY: two NUL-terminated keys and two values, their count passed; `out` receives a
        // new object that this struct releases.
        check(unsafe {
            (ort::api().CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut out)
        })?;
        if out.is_null() {
            return Err("CreateArenaCfgV2 returned no arena configuration".into());
        }
        Ok(ArenaCfg(out))
    }
}

impl Drop for ArenaCfg {
    fn drop(&mut self) {
        // SAFETY: made by CreateArenaCfgV2, released once.
        unsafe { (ort::api().ReleaseArenaCfg)(self.0) }
    }
}

/// `Ok` for a null status, else its message (ort's own conversion, which releases the status).
fn check(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
    // SAFETY: `status` was just returned by an ONNX Runtime API call and is used once.
    unsafe { ort::Error::result_from_status(status) }.map_err(|e| e.to_string())
}

/// The symbolic dimensions that `shape` fixes: a named one whose every use has the same size
/// (an exporter may name several dimensions alike, such as height and width; such a name is
/// left symbolic when they differ).
pub(crate) fn fixed_dimensions(symbols: &[String], shape: &[usize]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    let mut conflicting = Vec::new();
    for (symbol, &size) in symbols.iter().zip(shape) {
        if symbol.is_empty() {
            continue;
        }
        match out.iter().find(|(s, _)| s == symbol) {
            Some((_, n)) if *n != size => conflicting.push(symbol.clone()),
            Some(_) => {}
            None => out.push((symbol.clone(), size)),
        }
    }
    out.retain(|(s, _)| !conflicting.contains(s));
    out
}

/// Asks CUDA to block, not spin, a host thread that waits for the device
/// (`cudaDeviceScheduleBlockingSync`), once per device and before ONNX Runtime makes its context:
/// by default the CUDA runtime spin-waits in every synchronisation, a whole core per waiting
/// lane on top of the engine's host work, against the pod's CPU limit. Through the CUDA runtime
/// library that ONNX Runtime's provider uses (the same shared object, so the same device state);
/// without it, a warning and the default schedule. Not yet run on a GPU.
#[cfg(feature = "cuda")]
fn blocking_sync(device: u32) {
    static DONE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if done.contains(&device) {
        return;
    }
    done.push(device);
    const BLOCKING_SYNC: u32 = 0x04; // cudaDeviceScheduleBlockingSync
    for name in ["libcudart.so.13", "libcudart.so.12", "libcudart.so"] {
        // SAFETY: the CUDA runtime's C API: cudaSetDevice(int) and cudaSetDeviceFlags(unsigned)
        // take plain integers and return a cudaError_t; the library stays loaded (leaked) so
        // that the state it keeps outlives this call.
        unsafe {
            let Ok(lib) = libloading::Library::new(name) else {
                continue;
            };
            let set_device = lib.get::<unsafe extern "C" fn(i32) -> i32>(b"cudaSetDevice");
            let set_flags = lib.get::<unsafe extern "C" fn(u32) -> i32>(b"cudaSetDeviceFlags");
            if let (Ok(set_device), Ok(set_flags)) = (set_device, set_flags) {
                let a = set_device(device as i32);
                let b = set_flags(BLOCKING_SYNC);
                if a == 0 && b == 0 {
                    tracing::info!(
                        device,
                        library = name,
                        "CUDA waits block instead of spinning (cudaDeviceScheduleBlockingSync)"
                    );
                } else {
                    tracing::warn!(device, library = name, cuda_set_device = a, cuda_set_device_flags = b, "could not ask CUDA for blocking synchronisation; its waits may spin a core each");
                }
            }
            std::mem::forget(lib);
            return;
        }
    }
    tracing::warn!(device, "no CUDA runtime library (libcudart) found to ask for blocking synchronisation; CUDA's waits may spin a core each");
}

#[cfg(not(feature = "cuda"))]
fn blocking_sync(_device: u32) {}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    device: u32,
    cfg: &SessionOptions,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    use ort::ep::{self, ExecutionProvider};
    let mut cuda = ep::CUDA::default()
        .with_device_id(device as i32)
        // HEURISTIC: DEFAULT measured 17× slower on det; EXHAUSTIVE pays seconds per new shape.
        .with_conv_algorithm_search(ep::cuda::ConvAlgorithmSearch::Heuristic)
        // With --separate-arenas each session has its own arena, and there are many (a session
        // per shape, times the runners): grow each by what it asks for, not by powers of two.
        // (The shared arena, the default, replaces the session's own; see `shared_arena`.)
        .with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested);
    // No CUDA graphs (ONNX Runtime's enable_cuda_graph): a captured graph replays the device
    // addresses of its capture, and a run's input is copied to a new buffer at a new address
    // each time, so a replay would read another page's pixels, silently. Left out until the
    // inputs live in device buffers bound once per session and a device run proves it.
    if let Some(limit) = cfg.memory_limit {
        cuda = cuda.with_memory_limit(limit);
    }
    match ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => return Err(EngineError::Cuda {
            device,
            message:
                "this ONNX Runtime library has no CUDA execution provider (is it the CPU build?)"
                    .into(),
        }),
        Err(e) => {
            return Err(EngineError::Cuda {
                device,
                message: e.to_string(),
            })
        }
    }
    builder
        .with_execution_providers([cuda.build().error_on_failure()])
        .map_err(|e| EngineError::Cuda {
            device,
            message: ort::Error::<()>::from(e).to_string(),
        })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _builder: ort::session::builder::SessionBuilder,
    _device: u32,
    _cfg: &SessionOptions,
) -> Result<ort::session::builder::SessionBuilder, EngineError> {
    Err(EngineError::CudaNotBuilt)
}

#[cfg(test)]
mod tests {
    use super::fixed_dimensions;

    #[test]
    fn a_dimension_name_used_for_two_sizes_stays_symbolic() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fixed_dimensions(&names(&["n", "", "h", "w"]), &[8, 3, 48, 320]),
            vec![("n".into(), 8), ("h".into(), 48), ("w".into(), 320)]
        );
        assert_eq!(
            fixed_dimensions(&names(&["n", "", "d", "d"]), &[8, 3, 48, 192]),
            vec![("n".into(), 8)]
        );
        assert_eq!(
            fixed_dimensions(&names(&["n", "", "d", "d"]), &[8, 3, 64, 64]),
            vec![("n".into(), 8), ("d".into(), 64)]
        );
    }
}

/// The shared arena with a limit, on the CPU provider (the only one here; on CUDA the same
/// registration takes `CreateAndRegisterAllocatorV2`). This test owns the process's CPU arena:
/// no other unit test of this crate loads ONNX Runtime.
#[cfg(test)]
mod shared_arena_tests {
    use super::*;
    use crate::model::RunError;

    fn models() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
    }

    fn detect(session: &mut Session, n: usize, side: usize) -> Result<(), String> {
        let x = ndarray::Array4::<f32>::zeros((n, 3, side, side));
        let input = ort::value::TensorRef::from_array_view(&x).map_err(|e| e.to_string())?;
        session
            .run(ort::inputs![input])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Every session takes the one arena, its limit holds for all of them together, a run
    /// past it fails with an error the engine reads as out of memory (so that its ladder runs
    /// the batch again in smaller pieces, which with one arena frees what they need), and the
    /// arena serves the next runs.
    #[test]
    fn one_limited_arena_serves_every_session_and_its_refusal_reads_as_out_of_memory() {
        let env = environment(&models().join("lib/libonnxruntime.so")).expect("models/fetch.sh");
        shared_arena(&env, Device::Cpu, Some(64 << 20)).expect("registered");
        shared_arena(&env, Device::Cpu, Some(64 << 20)).expect("a second call keeps the first");
        let options = SessionOptions {
            device: Device::Cpu,
            intra_threads: 1,
            memory_limit: None,
            shared_arena: true,
            per_shape: false,
            max_per_model: 1,
            io_binding: false,
        };
        let det = models().join("v4/det.onnx");
        let (mut a, mut b) = (
            session(&options, &env, &det).expect("a session"),
            session(&options, &env, &det).expect("another"),
        );
        detect(&mut a, 1, 64).expect("a small run fits");
        let before = arena_stats(&b, Device::Cpu).expect("counters");
        assert!(
            before.contains(&("Limit".to_string(), (64u64 << 20).to_string())),
            "this test registered the process's CPU arena, with its limit: {before:?}"
        );
        detect(&mut a, 1, 96).expect("a small run fits");
        let after = arena_stats(&b, Device::Cpu).expect("counters");
        let allocations = |p: &[(String, String)]| {
            p.iter()
                .find(|(k, _)| k == "NumAllocs")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .expect("NumAllocs")
        };
        assert!(
            allocations(&after) > allocations(&before),
            "session a's run is counted by session b's allocator: one arena ({before:?}, {after:?})"
        );
        let err = detect(&mut b, 8, 960).expect_err("8 pages of 960 px need far more than 64 MiB");
        println!("refused: {err}");
        assert!(
            RunError::from_message(err.clone()).out_of_memory,
            "the arena's refusal reads as out of memory: {err}"
        );
        detect(&mut b, 1, 64).expect("the arena serves the next run");
        detect(&mut a, 1, 64).expect("and the other session's");
    }
}
