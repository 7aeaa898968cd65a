//! Compute kernels, kept apart from the model definitions that call them, each tested against a
//! plain CPU reference: the CPU backend's packed matmul ([`cpu_matmul`], against a naive
//! product) and the fused sampling kernel on wgpu ([`sampling`], against
//! [`crate::sampling`]'s host code). Quantized matmuls and attention kernels belong here too.

pub mod cpu_matmul;
pub(crate) mod sampling;
