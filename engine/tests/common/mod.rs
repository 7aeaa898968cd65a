//! Helpers shared by the engine's integration tests: fixture paths and the backends to test.

#![allow(dead_code)] // each test binary uses part of this module

use std::path::PathBuf;

use burn::prelude::Device;
use ets_engine::backend::{cpu_device, wgpu_device};
use ets_engine::reward::Response;

/// The golden fixture variants made by tests/fixtures/make_fixtures.py.
pub const VARIANTS: [&str; 7] = [
    "llama-gqa",
    "llama3-tied",
    "qwen2-bias",
    "qwen3-qknorm",
    "llama-f16",
    "qwen2-bf16",
    "llama-sharded",
];

/// Directory of one fixture model.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

/// Largest |Δlogit| allowed for a model run in f16 against PyTorch's f32 logits. The fixtures'
/// logits reach |6|, where one f16 step is 2⁻⁸ ≈ 0.004: this allows about 13 steps of
/// accumulated rounding; measured on CPU and lavapipe: 1.4e-2 to 3.7e-2 (llama-sharded).
pub const F16_TOLERANCE: f32 = 5e-2;

/// A tested backend: its name, device and the logits tolerance it must meet.
pub struct TestBackend {
    pub name: &'static str,
    pub device: Device,
    pub tolerance: f32,
}

pub fn cpu() -> TestBackend {
    TestBackend {
        name: "cpu",
        device: cpu_device(),
        tolerance: 1e-4,
    }
}

/// The wgpu backend. Without an adapter the test fails, unless ETS_ALLOW_NO_WGPU=1 is set, in
/// which case it says loudly that it skipped.
pub fn wgpu() -> Option<TestBackend> {
    match wgpu_device() {
        Ok((device, name)) => {
            eprintln!("wgpu adapter: {name}");
            Some(TestBackend {
                name: "wgpu",
                device,
                tolerance: 1e-3,
            })
        }
        Err(e) if std::env::var("ETS_ALLOW_NO_WGPU").as_deref() == Ok("1") => {
            eprintln!("SKIPPED wgpu tests (ETS_ALLOW_NO_WGPU=1): {e}");
            None
        }
        Err(e) => panic!(
            "{e}; install a Vulkan driver (lavapipe: apt-get install mesa-vulkan-drivers) or set ETS_ALLOW_NO_WGPU=1"
        ),
    }
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Responses as a reward model sees them: their text only.
pub fn text_responses<T: AsRef<str>>(texts: &[T]) -> Vec<Response<'_>> {
    texts
        .iter()
        .map(|t| Response::of_text(t.as_ref()))
        .collect()
}
