//! AdamW (decoupled weight decay) with global gradient-norm clipping, over the named weight
//! tensors of a [`Transformer`]. Moments are kept flat ([n] per tensor) on the plain device.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::Gradients;

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::model::transformer::{ParamMut, Transformer};

/// AdamW's constants.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Decoupled decay applied to matrices (not to norms or biases), per unit learning rate.
    pub weight_decay: f64,
    /// Gradients are scaled down so their global L2 norm is at most this.
    pub grad_clip: f64,
}

/// AdamW's state: the step count and both moments of every parameter, by checkpoint name.
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    /// name → (first moment, second moment), each [numel].
    moments: HashMap<String, (Tensor<1>, Tensor<1>)>,
}

/// A parameter's value or gradient flattened to [numel], without autodiff tracking.
fn flat(tensor: &ParamMut<'_>) -> Tensor<1> {
    match tensor {
        ParamMut::Vector(t) => (*t).clone().without_autodiff(),
        ParamMut::Matrix(t) => {
            let n = t.shape().num_elements();
            (*t).clone().without_autodiff().reshape([n])
        }
    }
}

impl AdamW {
    /// Fresh state (zero moments, step 0).
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Applies one update at learning rate `lr` from `grads` (the backward of a loss computed
    /// with `model`'s tracked parameters); the parameters come back as fresh tracked leaves.
    /// Returns the global gradient norm before clipping.
    pub fn step(&mut self, model: &mut Transformer, grads: &Gradients, lr: f64) -> Result<f64> {
        let mut params = model.parameters_mut();
        let mut flat_grads = Vec::with_capacity(params.len());
        for p in &params {
            let grad = match &p.tensor {
                ParamMut::Vector(t) => t.grad(grads),
                ParamMut::Matrix(t) => t.grad(grads).map(|g| {
                    let n = g.shape().num_elements();
                    g.reshape([n])
                }),
            };
            let grad =
                grad.ok_or_else(|| Error::Train(format!("no gradient reached `{}`", p.name)))?;
            flat_grads.push(grad);
        }
        let squares: Vec<Tensor<1>> = flat_grads
            .iter()
            .map(|g| g.clone().square().sum())
            .collect();
        let norm = read_f32(Tensor::cat(squares, 0).sum())?[0].max(0.0).sqrt() as f64;
        if !norm.is_finite() {
            return Err(Error::Train(format!(
                "the gradient norm is {norm}: training diverged (lower the learning rate)"
            )));
        }
        let clip = if norm > self.config.grad_clip {
            self.config.grad_clip / norm
        } else {
            1.0
        };
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (p, grad) in params.iter_mut().zip(flat_grads) {
            let grad = grad.mul_scalar(clip);
            let value = flat(&p.tensor);
            let (m, v) = match self.moments.remove(&p.name) {
                Some(state) => state,
                None => (value.zeros_like(), value.zeros_like()),
            };
            let m = m.mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
            let v = v.mul_scalar(c.beta2) + grad.square().mul_scalar(1.0 - c.beta2);
            let update = m
                .clone()
                .div_scalar(bias1)
                .div(v.clone().div_scalar(bias2).sqrt().add_scalar(c.epsilon));
            let decay = match p.tensor {
                ParamMut::Matrix(_) => c.weight_decay,
                ParamMut::Vector(_) => 0.0,
            };
            let value = value.mul_scalar(1.0 - lr * decay) - update.mul_scalar(lr);
            match &mut p.tensor {
                ParamMut::Vector(t) => **t = value.autodiff().require_grad(),
                ParamMut::Matrix(t) => {
                    let [rows, cols] = t.dims();
                    **t = value.reshape([rows, cols]).autodiff().require_grad();
                }
            }
            self.moments.insert(p.name.clone(), (m, v));
        }
        Ok(norm)
    }

    /// The moments as (name, values) pairs, `{name}.exp_avg` and `{name}.exp_avg_sq`, for a
    /// checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(2 * names.len());
        for name in names {
            let (m, v) = &self.moments[name];
            out.push((format!("{name}.exp_avg"), read_f32(m.clone())?));
            out.push((format!("{name}.exp_avg_sq"), read_f32(v.clone())?));
        }
        Ok(out)
    }

    /// Restores the state written by [`state_tensors`](Self::state_tensors) after `step` steps;
    /// `lookup` returns a stored tensor's values by name.
    pub fn restore(
        &mut self,
        model: &mut Transformer,
        step: u64,
        mut lookup: impl FnMut(&str) -> Result<Vec<f32>>,
    ) -> Result<()> {
        let device = model.device().clone();
        for p in model.parameters_mut() {
            let n = flat(&p.tensor).dims()[0];
            let mut load = |suffix: &str| -> Result<Tensor<1>> {
                let values = lookup(&format!("{}.{suffix}", p.name))?;
                if values.len() != n {
                    return Err(Error::Train(format!(
                        "optimizer state for `{}` has {} values, the model {n}",
                        p.name,
                        values.len()
                    )));
                }
                Ok(Tensor::from_data(TensorData::new(values, [n]), &device).without_autodiff())
            };
            let state = (load("exp_avg")?, load("exp_avg_sq")?);
            self.moments.insert(p.name, state);
        }
        self.step = step;
        Ok(())
    }
}
