//! Reasoning tasks: the synthetic arithmetic word problems the reference models are trained on,
//! their tokenizer (a small BPE over the task's words), answer extraction and verification, and
//! GSM8K-format datasets.

pub use ets_spec::answer;
pub mod arith;
pub mod bpe;
pub mod gsm8k;
