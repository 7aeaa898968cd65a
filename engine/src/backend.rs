//! Which Burn backend runs the model: the CPU (Burn's flex backend) or wgpu (Vulkan / Metal / DX12 natively,
//! WebGPU in the browser), and reading tensors back to the host.

use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::wgpu::{WgpuSetup, wgpu};
use burn::tensor::{ExecutionError, TensorReadError};

/// A Burn device (CPU or wgpu), chosen at run time.
pub use burn::prelude::Device;

use crate::error::{Error, Result};

/// The backends the engine can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's flex backend on the CPU (gemm matmuls, every core).
    Cpu,
    /// Burn's wgpu backend on the first GPU adapter (software adapters such as lavapipe count).
    Wgpu,
}

impl BackendKind {
    /// The name used on the command line: `cpu` or `wgpu`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            other => Err(Error::Backend(format!(
                "unknown backend {other:?}; use cpu or wgpu"
            ))),
        }
    }
}

/// The CPU device.
pub fn cpu_device() -> Device {
    Device::flex()
}

/// The wgpu device with the adapter's name, or why there is none. Initialised once per process
/// (Burn allows a single registration), so later calls return the same answer.
#[cfg(not(target_family = "wasm"))]
pub fn wgpu_device() -> Result<(Device, String)> {
    static WGPU: std::sync::OnceLock<std::result::Result<(Device, String), String>> =
        std::sync::OnceLock::new();
    WGPU.get_or_init(|| {
        Device::wgpu_options()
            .init_with_setup()
            .map(registered)
            .map_err(|e| format!("no usable wgpu adapter: {e}"))
    })
    .clone()
    .map_err(Error::Backend)
}

/// The wgpu device without blocking (WebGPU in a browser), with the adapter's name. Call it
/// once: Burn registers a device a single time.
pub async fn wgpu_device_async() -> Result<(Device, String)> {
    Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map(registered)
        .map_err(|e| Error::Backend(format!("no usable WebGPU adapter: {e}")))
}

/// The wgpu handle behind each wgpu device this process started, for [`lose_device`].
#[cfg(not(target_family = "wasm"))]
static WGPU_HANDLES: Mutex<Vec<(Device, wgpu::Device)>> = Mutex::new(Vec::new());

/// Destroys `device`'s GPU device, as a driver reset or a removed GPU would: the work in
/// progress and every later operation on it fail with [`Error::DeviceLost`]. For tests of what
/// follows a lost GPU; false when `device` is not a wgpu device this process started.
#[cfg(not(target_family = "wasm"))]
pub fn lose_device(device: &Device) -> bool {
    match wgpu_handle(device) {
        Some(handle) => {
            handle.destroy();
            // A GPU that goes away is reported lost at once (the driver's error on the next
            // operation); a destroyed one only at the device's next poll.
            let _ = handle.poll(wgpu::PollType::Poll);
            true
        }
        None => false,
    }
}

/// The wgpu handle of `device`, if it is a wgpu device this process started.
#[cfg(not(target_family = "wasm"))]
fn wgpu_handle(device: &Device) -> Option<wgpu::Device> {
    let handles = WGPU_HANDLES.lock().ok()?;
    handles
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, handle)| handle.clone())
}

/// Records a new wgpu device's buffer limit; returns it with the adapter's description.
fn registered((device, setup): (Device, WgpuSetup)) -> (Device, String) {
    #[cfg(not(target_family = "wasm"))]
    if let Ok(mut handles) = WGPU_HANDLES.lock() {
        handles.push((device.clone(), setup.device.clone()));
    }
    let info = setup.adapter.get_info();
    let limits = setup.adapter.limits();
    register_buffer_limit(
        &device,
        limits
            .max_buffer_size
            .min(limits.max_storage_buffer_binding_size),
    );
    // Browsers may hide the adapter's name.
    let name = if info.name.is_empty() {
        "unnamed adapter"
    } else {
        &info.name
    };
    // Without a Vulkan driver wgpu falls back to OpenGL (on a machine without a GPU: Mesa's
    // llvmpipe), which runs every kernel several times slower than Vulkan's software driver.
    let hint = if info.backend == wgpu::Backend::Gl {
        "; OpenGL fallback: no Vulkan driver was found (on Linux, Mesa's Vulkan driver, package \
         mesa-vulkan-drivers, adds lavapipe) — or use the CPU backend"
    } else {
        ""
    };
    (device, format!("{name} ({:?}){hint}", info.backend))
}

/// Per device: the largest buffer, in bytes, one tensor may occupy (wgpu's
/// min(maxBufferSize, maxStorageBufferBindingSize)); devices not listed have no such limit.
static BUFFER_LIMITS: Mutex<Vec<(Device, u64)>> = Mutex::new(Vec::new());

/// Records the largest buffer `device` can hold (called where the device is initialised).
pub fn register_buffer_limit(device: &Device, bytes: u64) {
    if let Ok(mut limits) = BUFFER_LIMITS.lock() {
        limits.retain(|(d, _)| d != device);
        limits.push((device.clone(), bytes));
    }
}

/// Sends what `device` has queued on its way, without waiting for it (a wgpu device; nothing
/// on the CPU). CubeCL keeps a write's bytes in host memory until its queue is flushed, so a load
/// flushes as it goes and holds a few tensors' host copies at a time, not the model's.
pub fn flush_queue(device: &Device) {
    if *device == cpu_device() {
        return;
    }
    let probe = Tensor::<1>::zeros([1], device);
    if let Ok(t) = probe.try_into_primitive::<burn_cubecl::Cube>() {
        let _ = t.client.flush();
    }
}

pub fn cap_buffer_limit(device: &Device, bytes: u64) {
    let limit = max_buffer_bytes(device).map_or(bytes, |own| own.min(bytes));
    register_buffer_limit(device, limit);
}

/// The largest buffer, in bytes, one tensor may occupy on `device`, if the backend limits it.
pub fn max_buffer_bytes(device: &Device) -> Option<u64> {
    let limits = BUFFER_LIMITS.lock().ok()?;
    limits
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, bytes)| *bytes)
}

/// Host memory free for this process to use, bytes: what Linux reports available, or in a
/// browser what a wasm32 heap may still grow by (to 4 GiB); None where it is not known.
pub fn free_host_memory() -> Option<u64> {
    #[cfg(target_family = "wasm")]
    {
        let pages = core::arch::wasm32::memory_size(0) as u64;
        Some((4u64 << 30).saturating_sub(pages * 65_536))
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// Host memory this engine holds, bytes: natively the process's resident memory (RSS, as Linux
/// reports it; None elsewhere), in a browser the size of the wasm32 heap (which only grows).
pub fn resident_host_memory() -> Option<u64> {
    #[cfg(target_family = "wasm")]
    {
        Some(core::arch::wasm32::memory_size(0) as u64 * 65_536)
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

/// What a wgpu device's memory pools hold, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Device allocations the pools hold (what the GPU gave out).
    pub reserved_bytes: u64,
    /// The part of them live tensors use.
    pub in_use_bytes: u64,
}

/// The memory `device`'s pools hold, every stream of it; None on the CPU, whose tensors are host
/// memory ([`resident_host_memory`]).
pub fn device_memory(device: &Device) -> Option<DeviceMemory> {
    if *device == cpu_device() {
        return None;
    }
    let probe = Tensor::<1>::zeros([1], device);
    let t = probe.try_into_primitive::<burn_cubecl::Cube>().ok()?;
    let usage = t
        .client
        .memory_report(burn_cubecl::cubecl::MemoryScope::Device)
        .usage();
    Some(DeviceMemory {
        reserved_bytes: usage.bytes_reserved,
        in_use_bytes: usage.bytes_in_use,
    })
}

/// Fails with [`Error::TooLargeForDevice`] if a tensor of `bytes` does not fit one buffer of `device`.
pub fn check_fits(device: &Device, what: &str, bytes: u64) -> Result<()> {
    match max_buffer_bytes(device) {
        Some(limit) if bytes > limit => Err(Error::TooLargeForDevice {
            what: what.to_string(),
            bytes,
            limit,
        }),
        _ => Ok(()),
    }
}

/// Consecutive groups of `rows` rows of `row_bytes` bytes each such that every group fits one
/// buffer of `device` (a word of padding to spare): how a matrix larger than the device's
/// binding limit is split into parts. One group, `0..rows`, where the backend has no limit or
/// the whole matrix fits; an error when a single row does not fit.
pub fn row_groups(
    device: &Device,
    what: &str,
    rows: usize,
    row_bytes: u64,
) -> Result<Vec<std::ops::Range<usize>>> {
    let limit = max_buffer_bytes(device);
    groups_within(limit, rows, row_bytes).ok_or_else(|| Error::TooLargeForDevice {
        what: format!("one row of {what}"),
        bytes: row_bytes,
        limit: limit.unwrap_or(u64::MAX),
    })
}

/// [`row_groups`] for a buffer limit of `limit` bytes (None: no limit); None when one row
/// does not fit.
fn groups_within(
    limit: Option<u64>,
    rows: usize,
    row_bytes: u64,
) -> Option<Vec<std::ops::Range<usize>>> {
    let Some(limit) = limit else {
        return Some(std::iter::once(0..rows).collect());
    };
    let room = limit.saturating_sub(3);
    if row_bytes > room {
        return None;
    }
    let per_group = usize::try_from(room / row_bytes.max(1))
        .unwrap_or(usize::MAX)
        .clamp(1, rows.max(1));
    Some(
        (0..rows.max(1))
            .step_by(per_group)
            .map(|start| start..(start + per_group).min(rows))
            .collect(),
    )
}

/// A device of the requested kind, or wgpu when an adapter exists and the CPU otherwise
/// (`None`). Returns the kind chosen and a description for the user.
#[cfg(not(target_family = "wasm"))]
pub fn select_device(requested: Option<BackendKind>) -> Result<(Device, BackendKind, String)> {
    match requested {
        Some(BackendKind::Cpu) => Ok((cpu_device(), BackendKind::Cpu, "cpu (flex)".into())),
        Some(BackendKind::Wgpu) => {
            let (device, name) = wgpu_device()?;
            Ok((device, BackendKind::Wgpu, format!("wgpu on {name}")))
        }
        None => match wgpu_device() {
            Ok((device, name)) => Ok((device, BackendKind::Wgpu, format!("wgpu on {name}"))),
            Err(e) => Ok((cpu_device(), BackendKind::Cpu, format!("cpu (flex); {e}"))),
        },
    }
}

/// Reads a float tensor back to the host as f32 values (row-major), without blocking: the way
/// to read on WebGPU, where a browser cannot wait for the GPU.
pub async fn read_f32_async<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| read_failed(e.into()))?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(data_failed)
}

/// Reads a float tensor back to the host as f32 values (row-major), blocking until the device
/// is done (not in a browser).
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor.try_into_vec_as::<f32>().map_err(read_failed)
}

/// Reads an int tensor back to the host as i64 values (row-major).
pub fn read_i64<const D: usize>(tensor: Tensor<D, Int>) -> Result<Vec<i64>> {
    tensor.try_into_vec_as::<i64>().map_err(read_failed)
}

/// Why `device` is gone, when its GPU was lost ([`Error::DeviceLost`]) or its reads fail: a
/// one-value read back tells. None on the CPU and on a device that works.
pub async fn device_lost(device: &Device) -> Option<String> {
    if *device == cpu_device() {
        return None;
    }
    // Natively, a poll first delivers a loss wgpu has seen but not yet reported.
    #[cfg(not(target_family = "wasm"))]
    if let Some(handle) = wgpu_handle(device) {
        let _ = handle.poll(wgpu::PollType::Poll);
    }
    // A device whose reads fail is lost too, whatever it says: in a browser a read can fail as
    // the device goes, before it is reported lost; the second try sees the report.
    let mut failure = None;
    for _ in 0..2 {
        match read_f32_async(Tensor::<1>::zeros([1], device)).await {
            Ok(_) => return None,
            Err(Error::DeviceLost(reason)) => return Some(reason),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    failure
}

/// What a failed read back means: [`Error::DeviceLost`] once the device is gone (CubeCL marks it
/// poisoned when wgpu reports the loss), [`Error::Backend`] otherwise.
fn read_failed(e: TensorReadError) -> Error {
    match e {
        TensorReadError::Execution(ExecutionError::DevicePoisoned { reason }) => {
            Error::DeviceLost(reason)
        }
        e => data_failed(e),
    }
}

/// A failed read of a tensor's bytes (`e`): the bytes are read lazily, and a poisoned device's
/// refusal then arrives as text ("The device is poisoned\nCaused by:\n  REASON…"), which is
/// [`Error::DeviceLost`]; anything else is [`Error::Backend`].
fn data_failed(e: impl std::fmt::Debug) -> Error {
    let text = format!("{e:?}").replace("\\n", "\n");
    match text.split_once("The device is poisoned") {
        Some((_, rest)) => {
            let reason = rest
                .split_once("Caused by:")
                .map_or(rest, |(_, cause)| cause)
                .trim_start()
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .trim_end_matches(':');
            Error::DeviceLost(reason.to_string())
        }
        None => Error::Backend(format!("reading a tensor back failed: {text}")),
    }
}

#[cfg(test)]
// The expected groups are written as lists of ranges, one range or several.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::groups_within;

    #[test]
    fn a_poisoned_device_read_is_a_lost_device() {
        use crate::error::Error;
        /// An error whose Debug form is the text given.
        struct Shown(&'static str);
        impl std::fmt::Debug for Shown {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        // What a read from a destroyed wgpu device gave (lavapipe, Burn 0.22).
        let read = Shown(
            r#"StorageAccess(Read("The device is poisoned\nCaused by:\n  Destroyed: \nBacktrace:\nNo backtrace available"))"#,
        );
        match super::data_failed(read) {
            Error::DeviceLost(reason) => assert_eq!(reason, "Destroyed"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            super::data_failed(Shown(r#"StorageAccess(Read("out of memory"))"#)),
            Error::Backend(_)
        ));
    }

    #[test]
    fn row_groups_cover_every_row_once_within_the_limit() {
        assert_eq!(groups_within(None, 10, 1 << 40), Some(vec![0..10]));
        // 103 bytes leave room for 25 rows of 4 bytes beside 3 bytes of word padding.
        assert_eq!(
            groups_within(Some(103), 60, 4),
            Some(vec![0..25, 25..50, 50..60])
        );
        assert_eq!(groups_within(Some(1 << 30), 60, 4), Some(vec![0..60]));
        assert_eq!(groups_within(Some(103), 0, 4), Some(vec![0..0]));
        assert_eq!(groups_within(Some(103), 1, 101), None);
        assert_eq!(groups_within(Some(10), 3, 0), Some(vec![0..3]));
    }
}
