//! Reasoning tasks: the synthetic arithmetic word problems the reference models are trained on,
//! answer extraction and verification, and GSM8K-format datasets.

pub mod answer;
pub mod arith;
pub mod gsm8k;
