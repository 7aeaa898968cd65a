//! Float matrices on a device in as many buffers as its buffer limit needs. WebGPU binds at
//! most `maxStorageBufferBindingSize` bytes of one buffer (128 MiB unless the adapter grants
//! more), and a real model's embedding table or output head is larger (Qwen2.5-0.5B's is
//! 545 MB in f32). A matrix is split into consecutive parts that each fit
//! ([`crate::backend::row_groups`]); products and lookups run part by part and join the
//! results, which are the unsplit matrix's values. (Block-quantized matrices split the same
//! way inside [`crate::kernels::quant_matmul_wgpu::DeviceQuantMatrix`].)

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::DType;

use crate::backend::row_groups;
use crate::error::Result;

/// A linear layer's weight W [in, out] split by output features: part i is W[:, range i].
#[derive(Clone, Debug)]
pub(crate) struct ColumnParts {
    parts: Vec<Tensor<2>>,
}

impl ColumnParts {
    /// W = wᵀ for the row-major checkpoint weight w [out, in], on `device` in `dtype`, in as
    /// many parts as the device's buffer limit needs.
    pub(crate) fn from_checkpoint_layout(
        w: &[f32],
        (d_out, d_in): (usize, usize),
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let what = format!("a weight [{d_out}, {d_in}]");
        let groups = row_groups(device, &what, d_out, (d_in * dtype.size()) as u64)?;
        let parts = groups
            .into_iter()
            .map(|rows| {
                let values = &w[rows.start * d_in..rows.end * d_in];
                let data = TensorData::new(transpose(values, rows.len(), d_in), [d_in, rows.len()]);
                Tensor::from_data(data, (device, dtype))
            })
            .collect();
        Ok(Self { parts })
    }

    /// x · W for x [rows, in]: [rows, out].
    pub(crate) fn left_mul(&self, x: &Tensor<2>) -> Tensor<2> {
        match self.parts.as_slice() {
            [w] => x.clone().matmul(w.clone()),
            parts => Tensor::cat(
                parts.iter().map(|w| x.clone().matmul(w.clone())).collect(),
                1,
            ),
        }
    }

    /// The number of parts.
    pub(crate) fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// Bytes the parts take.
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(tensor_bytes).sum()
    }

    /// W whole, the parts joined into one tensor first (for training and saving).
    pub(crate) fn whole_mut(&mut self) -> &mut Tensor<2> {
        join(&mut self.parts, 1)
    }
}

impl From<Tensor<2>> for ColumnParts {
    /// W in one part.
    fn from(w: Tensor<2>) -> Self {
        Self { parts: vec![w] }
    }
}

/// An embedding table [vocab, hidden] split by rows (token ids): part i holds rows range i.
#[derive(Clone, Debug)]
pub(crate) struct RowParts {
    parts: Vec<(Range<usize>, Tensor<2>)>,
}

impl RowParts {
    /// The row-major table `values` [rows, cols] on `device` in `dtype`, in as many parts as
    /// the device's buffer limit needs.
    pub(crate) fn new(
        values: &[f32],
        [rows, cols]: [usize; 2],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let what = format!("a table [{rows}, {cols}]");
        let groups = row_groups(device, &what, rows, (cols * dtype.size()) as u64)?;
        let parts = groups
            .into_iter()
            .map(|range| {
                let part = &values[range.start * cols..range.end * cols];
                let data = TensorData::new(part.to_vec(), [range.len(), cols]);
                (range, Tensor::from_data(data, (device, dtype)))
            })
            .collect();
        Ok(Self { parts })
    }

    /// Rows `ids` (each below the row count, checked by the caller): [ids, cols].
    pub(crate) fn select(&self, ids: &[i64], device: &Device) -> Tensor<2> {
        let int_tensor = |ids: Vec<i64>| {
            let len = ids.len();
            Tensor::<1, Int>::from_data(TensorData::new(ids, [len]), device)
        };
        if let [(_, table)] = self.parts.as_slice() {
            return table.clone().select(0, int_tensor(ids.to_vec()));
        }
        // Each part selects the ids it holds; `order[i]` is where id i's row lands among the
        // parts' results, joined in part order.
        let mut order = vec![0i64; ids.len()];
        let mut pieces = Vec::new();
        let mut joined = 0i64;
        for (range, table) in &self.parts {
            let mut local = Vec::new();
            for (i, &id) in ids.iter().enumerate() {
                if range.contains(&(id as usize)) {
                    order[i] = joined + local.len() as i64;
                    local.push(id - range.start as i64);
                }
            }
            if !local.is_empty() {
                joined += local.len() as i64;
                pieces.push(table.clone().select(0, int_tensor(local)));
            }
        }
        if pieces.is_empty() {
            let cols = self.parts[0].1.dims()[1];
            return Tensor::zeros([0, cols], (device, self.parts[0].1.dtype()));
        }
        Tensor::cat(pieces, 0).select(0, int_tensor(order))
    }

    /// The number of parts.
    pub(crate) fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// Bytes the parts take.
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(|(_, t)| tensor_bytes(t)).sum()
    }

    /// The table whole, the parts joined into one tensor first (for training and saving).
    pub(crate) fn whole_mut(&mut self) -> &mut Tensor<2> {
        if self.parts.len() > 1 {
            let rows = self.parts.last().map_or(0, |(r, _)| r.end);
            let tables: Vec<Tensor<2>> = self.parts.drain(..).map(|(_, t)| t).collect();
            self.parts.push((0..rows, Tensor::cat(tables, 0)));
        }
        &mut self.parts[0].1
    }
}

impl From<Tensor<2>> for RowParts {
    /// The table in one part.
    fn from(table: Tensor<2>) -> Self {
        let rows = table.dims()[0];
        Self {
            parts: vec![(0..rows, table)],
        }
    }
}

/// The parts joined along `dim` into the first (and only) one.
fn join(parts: &mut Vec<Tensor<2>>, dim: usize) -> &mut Tensor<2> {
    if parts.len() > 1 {
        let whole = Tensor::cat(std::mem::take(parts), dim);
        parts.push(whole);
    }
    &mut parts[0]
}

/// Bytes of a tensor's values.
fn tensor_bytes(t: &Tensor<2>) -> usize {
    t.shape().num_elements() * t.dtype().size()
}

/// The transpose [cols, rows] of a row-major [rows, cols] matrix, row-major.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}
