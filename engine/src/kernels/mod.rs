//! Compute kernels, kept apart from the model definitions that call them, each tested against a
//! plain CPU reference: the CPU backend's packed matmul ([`cpu_matmul`], against a naive
//! product), its block-quantized counterpart ([`quant_matmul`] with the decoding dot products of
//! [`quant_dot`], against the product of the reference-dequantized weights), wgpu's block
//! kernels ([`quant_matmul_wgpu`], against the same product) and the fused
//! sampling kernel on wgpu ([`sampling`], against [`crate::sampling`]'s host code). The CPU
//! kernels share their worker threads ([`threads`]). Attention kernels belong here too.

pub mod cpu_matmul;
pub(crate) mod quant_dot;
pub mod quant_matmul;
pub mod quant_matmul_wgpu;
pub(crate) mod sampling;
pub(crate) mod threads;
