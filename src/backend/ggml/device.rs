//! ggml's device registry: listing what this build can run on, choosing one from `--gpu`,
//! and opening a backend on it. Every device comes from the registry (the sys crate binds
//! no backend-specific header), so Vulkan, Metal and the CPU are chosen the same way.

use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use llama_cpp_sys_2 as sys;

use crate::backend::{BackendError, DeviceChoice, DeviceInfo, DeviceKind};

/// The level of the last ggml log line, for its `CONT` continuations.
static LAST_LEVEL: AtomicU32 = AtomicU32::new(sys::GGML_LOG_LEVEL_NONE);

/// ggml's log, keeping warnings and errors (its device banners and buffer sizes at INFO
/// level would fill stderr on every load).
unsafe extern "C" fn log_warnings(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    let level = if level == sys::GGML_LOG_LEVEL_CONT {
        LAST_LEVEL.load(Ordering::Relaxed)
    } else {
        LAST_LEVEL.store(level, Ordering::Relaxed);
        level
    };
    if level < sys::GGML_LOG_LEVEL_WARN || text.is_null() {
        return;
    }
    // SAFETY: ggml passes a NUL-terminated message that lives for the call.
    let msg = unsafe { CStr::from_ptr(text) };
    // A failed write to stderr has nowhere else to go; never unwind into C.
    let _ = std::io::stderr().write_all(msg.to_bytes());
}

/// Installs the log filter once, before the registry first speaks.
fn quiet_logs() {
    static ONCE: Once = Once::new();
    // SAFETY: `log_warnings` is a plain function that lives for the process and does not
    // unwind; a null user pointer is what it expects.
    ONCE.call_once(|| unsafe { sys::ggml_log_set(Some(log_warnings), std::ptr::null_mut()) });
}

fn string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the registry's names and descriptions are NUL-terminated strings it owns for
    // the life of the process.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn info(index: usize, dev: sys::ggml_backend_dev_t) -> DeviceInfo {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: `dev` came from the registry (non-null, valid for the process); the out
    // pointers are live locals.
    let (name, desc, ty) = unsafe {
        sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
        (
            sys::ggml_backend_dev_name(dev),
            sys::ggml_backend_dev_description(dev),
            sys::ggml_backend_dev_type(dev),
        )
    };
    let kind = match ty {
        sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
        sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
        sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
        _ => DeviceKind::Accelerator,
    };
    DeviceInfo {
        index,
        name: string(name),
        description: string(desc),
        kind,
        memory_free: free as u64,
        memory_total: total as u64,
    }
}

/// Every device of the registry, in its order (the `--gpu` indices).
pub fn devices() -> Vec<DeviceInfo> {
    quiet_logs();
    // SAFETY: the registry initialises itself on first use and lives for the process.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .map(|i| {
            // SAFETY: `i` is below the registry's count; its devices live for the process.
            let dev = unsafe { sys::ggml_backend_dev_get(i) };
            info(i, dev)
        })
        .collect()
}

fn names() -> String {
    let all: Vec<String> = devices().into_iter().map(|d| d.name).collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

/// The device `--gpu` names; without one, the first discrete GPU, else the first
/// integrated one.
pub(crate) fn find(
    choice: Option<&DeviceChoice>,
) -> Result<(sys::ggml_backend_dev_t, DeviceInfo), BackendError> {
    quiet_logs();
    let by_index = |i: usize| {
        let n = devices().len();
        if i >= n {
            return Err(BackendError::Device(format!(
                "--gpu {i}: this build sees {n} device(s) ({}); see `pocketvl devices`",
                names()
            )));
        }
        // SAFETY: `i` is below the registry's count.
        Ok((unsafe { sys::ggml_backend_dev_get(i) }, i))
    };
    let (dev, index) = match choice {
        Some(DeviceChoice::Index(i)) => by_index(*i)?,
        Some(DeviceChoice::Name(name)) => {
            let c = CString::new(name.as_str()).map_err(|_| {
                BackendError::Device(format!("--gpu {name:?}: a name cannot hold a NUL byte"))
            })?;
            // SAFETY: `c` is a NUL-terminated string alive for the call.
            let dev = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
            if dev.is_null() {
                return Err(BackendError::Device(format!(
                    "--gpu {name}: no such device (this build sees: {}; see `pocketvl devices`)",
                    names()
                )));
            }
            (dev, index_of(dev))
        }
        None => {
            // SAFETY: plain registry queries; null means "none of that type".
            let dev = unsafe {
                let gpu = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU);
                if gpu.is_null() {
                    sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_IGPU)
                } else {
                    gpu
                }
            };
            if dev.is_null() {
                return Err(BackendError::Device(format!(
                    "no GPU found (this build sees: {}); name a device with --gpu",
                    names()
                )));
            }
            (dev, index_of(dev))
        }
    };
    Ok((dev, info(index, dev)))
}

fn index_of(dev: sys::ggml_backend_dev_t) -> usize {
    // SAFETY: a registry query without side effects.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .find(|&i| {
            // SAFETY: `i` is below the registry's count.
            let d = unsafe { sys::ggml_backend_dev_get(i) };
            d == dev
        })
        .unwrap_or(n)
}

/// An initialised backend on one device (its queues, its CPU threads).
pub(super) struct Backend {
    ptr: sys::ggml_backend_t,
    pub info: DeviceInfo,
}

impl Backend {
    /// Opens `dev`; ggml's CPU backend gets `threads` workers.
    pub fn open(
        dev: sys::ggml_backend_dev_t,
        info: DeviceInfo,
        threads: usize,
    ) -> Result<Backend, BackendError> {
        // SAFETY: `dev` came from the registry; a null parameter string is allowed.
        let ptr = unsafe { sys::ggml_backend_dev_init(dev, std::ptr::null()) };
        if ptr.is_null() {
            return Err(BackendError::Device(format!(
                "{}: the device could not be initialised",
                info.name
            )));
        }
        if info.kind == DeviceKind::Cpu {
            let n = i32::try_from(threads.max(1)).unwrap_or(i32::MAX);
            // SAFETY: `ptr` is a live CPU backend (the device's type says so).
            unsafe { sys::ggml_backend_cpu_set_n_threads(ptr, n) };
        }
        Ok(Backend { ptr, info })
    }

    pub fn ptr(&self) -> sys::ggml_backend_t {
        self.ptr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: `ptr` is live and freed once; buffers and graphs on it are dropped
        // before it (field order of their owners).
        unsafe { sys::ggml_backend_free(self.ptr) };
    }
}
