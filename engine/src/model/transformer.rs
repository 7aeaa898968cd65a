//! The decoder-only transformer shared by the Llama family, Qwen2 and Qwen3: RMSNorm, grouped-
//! query attention with rotary positions, a SwiGLU MLP. The families differ only in flags of
//! [`ModelConfig`] (biases, q/k norm, tied embeddings), read from their `config.json`. A masked
//! diffusion model is the same body with bidirectional attention.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;

use crate::backend::{check_fits, cpu_device, flush_queue, read_f32};
use crate::error::{Error, Result};
use crate::kernels::cpu_matmul::{PackedMatrix, Storage};
use crate::kernels::quant_matmul::QuantMatrix;
use crate::kernels::quant_matmul_wgpu::DeviceQuantMatrix;
use crate::model::Precision;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{ModelConfig, Objective};
use crate::model::kv_cache::KvCache;
use crate::model::rope::Rope;
use crate::model::safetensors::{Dtype, serialize};
use crate::model::split::{ColumnParts, RowParts, transpose};

/// A linear layer's weight, W = the checkpoint's weightᵀ, [in, out], so `x · W` needs no
/// transpose.
#[derive(Clone, Debug)]
// A tensor handle is large, a packed weight an Arc: a model holds a few hundred of these.
#[allow(clippy::large_enum_variant)]
enum Weight {
    /// On the device, multiplied by Burn's matmul (in parts where it exceeds one buffer).
    Tensor(ColumnParts),
    /// In host memory packed for the CPU kernel (f32 on the CPU backend).
    Packed(Arc<PackedMatrix>),
    /// In a GGUF file's block format, [out, in], for the quantized kernels.
    Blocks(Blocks),
}

/// A matrix [out, in] in a GGUF file's block format, where the backend's quantized kernels
/// read it; clones share it (an embedding table and its tied head).
#[derive(Clone, Debug)]
enum Blocks {
    /// In host memory, for the CPU backend's kernels.
    Host(Arc<QuantMatrix>),
    /// On a wgpu device, for its kernels.
    Device(Arc<DeviceQuantMatrix>),
}

impl Blocks {
    /// `q` where `to` keeps blocks: in host memory on the CPU backend, on a wgpu device there.
    fn new(q: QuantMatrix, to: Upload) -> Result<Self> {
        Ok(match to.block_home() {
            Some(BlockHome::Device) => {
                Self::Device(Arc::new(DeviceQuantMatrix::upload(&q, to.device)?))
            }
            _ => Self::Host(Arc::new(q)),
        })
    }

    /// [out, in].
    fn dims(&self) -> [usize; 2] {
        match self {
            Self::Host(q) => q.dims(),
            Self::Device(q) => q.dims(),
        }
    }

    /// Bytes the blocks take where they live.
    fn bytes(&self) -> usize {
        match self {
            Self::Host(q) => q.bytes(),
            Self::Device(q) => q.device_bytes(),
        }
    }

    /// The number of device buffers the blocks take.
    fn part_count(&self) -> usize {
        match self {
            Self::Host(_) => 1,
            Self::Device(q) => q.part_count(),
        }
    }

    /// Whether `other` is the same matrix (shared, not equal).
    fn is(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Host(a), Self::Host(b)) => Arc::ptr_eq(a, b),
            (Self::Device(a), Self::Device(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// x · Wᵀ: [rows, out].
    fn left_mul(&self, input: &mut LinearInput) -> Result<Tensor<2>> {
        match self {
            Self::Host(w) => input.on_host(w.dims()[0], |x, rows| w.left_mul(x, rows)),
            Self::Device(w) => w.left_mul(&input.x),
        }
    }

    /// Rows `ids` dequantized (an embedding lookup): [ids, in] on `device` in `dtype`.
    fn rows(&self, ids: &[i64], device: &Device, dtype: DType) -> Result<Tensor<2>> {
        let [vocab, hidden] = self.dims();
        let out_of_range = || Error::TokenOutOfRange {
            id: ids.iter().copied().max().unwrap_or(0) as u32,
            vocab_size: vocab,
        };
        match self {
            Self::Host(table) => {
                let mut rows = Vec::with_capacity(ids.len() * hidden);
                table
                    .rows_into(ids.iter().map(|&id| id as usize), &mut rows)
                    .ok_or_else(out_of_range)?;
                let rows = TensorData::new(rows, [ids.len(), hidden]);
                Ok(Tensor::from_data(rows, (device, dtype)))
            }
            Self::Device(table) => {
                let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
                let rows = table.rows(&ids)?.ok_or_else(out_of_range)?;
                Ok(rows.cast(dtype))
            }
        }
    }

    /// The whole matrix dequantized, [out, in] in `dtype`, where its blocks were (host blocks
    /// on the CPU device), for training and saving.
    fn dequantized(&self, dtype: DType) -> Tensor<2> {
        match self {
            Self::Host(q) => {
                let values = TensorData::new(q.to_row_major(), q.dims());
                Tensor::from_data(values, (&cpu_device(), dtype))
            }
            Self::Device(q) => q.dequantized().cast(dtype),
        }
    }

    /// The whole matrix dequantized and transposed, W = [in, out] in `dtype`, as
    /// [`Blocks::dequantized`] (the host transposes its values into a contiguous tensor).
    fn dequantized_transposed(&self, dtype: DType) -> Tensor<2> {
        match self {
            Self::Host(q) => {
                let [n, k] = q.dims();
                let values = TensorData::new(transpose(&q.to_row_major(), n, k), [k, n]);
                Tensor::from_data(values, (&cpu_device(), dtype))
            }
            Self::Device(q) => q.dequantized().transpose().cast(dtype),
        }
    }
}

/// The token embedding table, [vocab, hidden].
#[derive(Clone, Debug)]
// As `Weight`: a tensor handle beside an enum of Arcs.
#[allow(clippy::large_enum_variant)]
enum Embedding {
    /// On the device (in parts where it exceeds one buffer); a lookup selects rows.
    Table(RowParts),
    /// In a GGUF file's block format: a lookup dequantizes the rows it needs, so the table
    /// takes its file's bytes, not four bytes a value.
    Blocks(Blocks),
}

impl Embedding {
    /// The rows of the tokens `ids` (each checked below the vocabulary size by the caller):
    /// [ids, hidden].
    fn lookup(&self, ids: Vec<i64>, device: &Device, dtype: DType) -> Result<Tensor<2>> {
        match self {
            Self::Table(table) => Ok(table.select(&ids, device)),
            Self::Blocks(table) => table.rows(&ids, device, dtype),
        }
    }

    /// The table as a tensor in the model's float type, a quantized one dequantized first (as
    /// [`Weight::tensor_mut`], for training and saving).
    fn table_mut(&mut self, dtype: DType) -> &mut Tensor<2> {
        if let Self::Blocks(q) = self {
            *self = Self::Table(q.dequantized(dtype).into());
        }
        match self {
            Self::Table(t) => t.whole_mut(),
            Self::Blocks(_) => unreachable!("dequantized above"),
        }
    }
}

/// A linear layer: x · W (+ bias).
#[derive(Clone, Debug)]
struct Linear {
    weight: Weight,
    bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `{prefix}.weight` (HF layout [out, in]) and, when `bias`, `{prefix}.bias`.
    fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        (d_in, d_out): (usize, usize),
        bias: bool,
        to: Upload,
    ) -> Result<Self> {
        let bias = bias
            .then(|| load_vector(ckpt, &format!("{prefix}.bias"), d_out, to))
            .transpose()?;
        let name = format!("{prefix}.weight");
        if to.block_home().is_some()
            && let Some(q) = ckpt.read_quantized(&name, &[d_out, d_in])?
        {
            return Ok(Self {
                weight: Weight::Blocks(Blocks::new(q, to)?),
                bias,
            });
        }
        let w = ckpt.read(&name, &[d_out, d_in])?;
        Self::from_checkpoint_layout(&w, (d_out, d_in), bias, to)
    }

    /// The layer of a row-major [out, in] weight, packed for the CPU kernel on the CPU backend
    /// in f32 and uploaded as its transpose elsewhere (in parts where it exceeds one buffer).
    fn from_checkpoint_layout(
        w: &[f32],
        (d_out, d_in): (usize, usize),
        bias: Option<Tensor<1>>,
        to: Upload,
    ) -> Result<Self> {
        let weight = if let Some(storage) = to.packed_storage() {
            let packed = PackedMatrix::from_transposed(w, d_out, d_in, storage);
            Weight::Packed(Arc::new(packed))
        } else {
            let parts = ColumnParts::from_checkpoint_layout(w, (d_out, d_in), to.device, to.dtype)?;
            Weight::Tensor(parts)
        };
        Ok(Self { weight, bias })
    }

    /// x: [rows, in] → [rows, out].
    fn forward(&self, input: &mut LinearInput) -> Result<Tensor<2>> {
        let y = match &self.weight {
            Weight::Tensor(w) => w.left_mul(&input.x),
            Weight::Packed(w) => input.on_host(w.dims()[1], |x, rows| w.left_mul(x, rows))?,
            Weight::Blocks(w) => w.left_mul(input)?,
        };
        Ok(match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        })
    }
}

/// An activation the linear layers read, [rows, in]: the tensor and, once a packed layer has
/// needed them, its values on the host, read back once for every layer that shares it (q, k
/// and v; gate and up).
struct LinearInput {
    x: Tensor<2>,
    host: Option<Vec<f32>>,
}

impl LinearInput {
    /// A CPU kernel's `product(x, rows)` of x's values on the host (read back once) as a
    /// [rows, `out`] tensor beside x.
    fn on_host(
        &mut self,
        out: usize,
        product: impl FnOnce(&[f32], usize) -> Vec<f32>,
    ) -> Result<Tensor<2>> {
        let [rows, _] = self.x.dims();
        let (device, dtype) = (self.x.device(), self.x.dtype());
        let values = match &self.host {
            Some(values) => values,
            None => self.host.insert(read_f32(self.x.clone())?),
        };
        let y = product(values, rows);
        Ok(Tensor::from_data(
            TensorData::new(y, [rows, out]),
            (&device, dtype),
        ))
    }
}

impl From<Tensor<2>> for LinearInput {
    fn from(x: Tensor<2>) -> Self {
        Self { x, host: None }
    }
}

impl Weight {
    /// The weight as a tensor, [in, out], in the model's float type; a packed weight is
    /// unpacked into one first (so training and saving work on every backend, through Burn's
    /// ops).
    fn tensor_mut(&mut self, dtype: DType) -> &mut Tensor<2> {
        match self {
            Self::Packed(w) => {
                let values = TensorData::new(w.to_row_major(), w.dims());
                *self = Self::Tensor(Tensor::from_data(values, (&cpu_device(), dtype)).into());
            }
            Self::Blocks(w) => *self = Self::Tensor(w.dequantized_transposed(dtype).into()),
            Self::Tensor(_) => {}
        }
        match self {
            Self::Tensor(t) => t.whole_mut(),
            Self::Packed(_) | Self::Blocks(_) => unreachable!("unpacked above"),
        }
    }
}

/// Where weights go: the device and the float type they take there.
#[derive(Clone, Copy)]
struct Upload<'a> {
    device: &'a Device,
    dtype: DType,
}

impl Upload<'_> {
    /// How linear weights are packed for the CPU kernel on the CPU backend (f32 or f16); None
    /// elsewhere.
    fn packed_storage(self) -> Option<Storage> {
        if *self.device != cpu_device() {
            return None;
        }
        match self.dtype {
            DType::F32 => Some(Storage::F32),
            DType::F16 => Some(Storage::F16),
            _ => None,
        }
    }

    /// Where block-quantized matrices stay in their blocks: in host memory for the CPU
    /// backend's kernels (when it packs weights), on a wgpu device for its kernels.
    fn block_home(self) -> Option<BlockHome> {
        if *self.device != cpu_device() {
            Some(BlockHome::Device)
        } else {
            self.packed_storage().map(|_| BlockHome::Host)
        }
    }
}

/// Where block-quantized weights live ([`Upload::block_home`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockHome {
    Host,
    Device,
}

fn load_vector(ckpt: &Checkpoint, name: &str, len: usize, to: Upload) -> Result<Tensor<1>> {
    let v = ckpt.read(name, &[len])?;
    Ok(Tensor::from_data(
        TensorData::new(v, [len]),
        (to.device, to.dtype),
    ))
}

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) · weight, the normalisation in
/// f32 whatever x's float type (as Hugging Face computes it).
fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let rms = x.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt();
    x.div(rms).cast(dtype).mul(weight.clone().unsqueeze::<D>())
}

#[derive(Clone, Debug)]
struct Layer {
    input_norm: Tensor<1>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor<1>>,
    k_norm: Option<Tensor<1>>,
    post_attention_norm: Tensor<1>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// The layer's linear layers: q, k, v, o, gate, up, down.
    fn linears(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// A weight tensor of the model, borrowed mutably (for training).
pub enum ParamMut<'a> {
    /// A norm weight or a bias: `[n]`.
    Vector(&'a mut Tensor<1>),
    /// A matrix: linear weights stored [in, out], the embedding table [vocab, hidden].
    Matrix(&'a mut Tensor<2>),
}

/// One named weight tensor: its Hugging Face name and how it is stored here.
pub struct NamedParam<'a> {
    /// The checkpoint name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Stored as the transpose of the checkpoint's layout (linear weights).
    pub transposed: bool,
    pub tensor: ParamMut<'a>,
}

impl Linear {
    /// The weight and bias as named parameters under `prefix`.
    fn params(&mut self, prefix: &str, dtype: DType) -> Vec<NamedParam<'_>> {
        let mut out = vec![NamedParam {
            name: format!("{prefix}.weight"),
            transposed: true,
            tensor: ParamMut::Matrix(self.weight.tensor_mut(dtype)),
        }];
        if let Some(bias) = &mut self.bias {
            out.push(NamedParam {
                name: format!("{prefix}.bias"),
                transposed: false,
                tensor: ParamMut::Vector(bias),
            });
        }
        out
    }
}

fn vector_param<'a>(name: String, tensor: &'a mut Tensor<1>) -> NamedParam<'a> {
    NamedParam {
        name,
        transposed: false,
        tensor: ParamMut::Vector(tensor),
    }
}

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position of the chunk: [batch, chunk_len, vocab].
    All,
    /// Only each sequence's last position: [batch, 1, vocab].
    Last,
    /// The last n positions of the chunk (the answer of a masked diffusion model):
    /// [batch, n, vocab]; n is kept between 1 and the chunk length.
    Tail(usize),
}

impl LogitsFor {
    /// How many trailing positions of a `seq`-long chunk get logits.
    fn tail_len(self, seq: usize) -> usize {
        match self {
            Self::All => seq,
            Self::Last => 1,
            Self::Tail(n) => n.clamp(1, seq),
        }
    }
}

/// A loaded model: weights on one device plus its config.
#[derive(Clone, Debug)]
pub struct Transformer {
    config: ModelConfig,
    device: Device,
    /// The float type of weights and activations.
    dtype: DType,
    rope: Rope,
    /// [vocab, hidden]
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: Tensor<1>,
    /// hidden → vocab (a reward model: hidden → 1, its `score` head)
    lm_head: Linear,
}

/// Large negative score for masked attention slots: finite, so a row with every slot masked
/// (a padding query) gives a uniform softmax rather than NaN.
const MASKED: f32 = -1.0e9;

/// Most slots one forward window runs (longer chunks are split into windows).
const WINDOW: usize = 256;

impl Transformer {
    /// Loads the weights named by HF's Llama/Qwen conventions from `ckpt` onto `device`.
    pub fn load(
        config: ModelConfig,
        ckpt: &Checkpoint,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let dtype = precision.dtype();
        let to = Upload { device, dtype };
        let c = &config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_heads * d, c.num_kv_heads * d);
        let embed_name = "model.embed_tokens.weight";
        // A quantized table stays in its blocks where the backend keeps blocks (and is the
        // tied head).
        let quantized_embed = match to.block_home() {
            Some(_) => ckpt.read_quantized(embed_name, &[c.vocab_size, h])?,
            None => None,
        };
        let (embed_tokens, lm_head) = match quantized_embed {
            Some(q) => {
                let table = Blocks::new(q, to)?;
                let lm_head = if c.head_is_tied() {
                    Linear {
                        weight: Weight::Blocks(table.clone()),
                        bias: None,
                    }
                } else {
                    Linear::load(ckpt, c.head_name(), (h, c.head_width()), false, to)?
                };
                (Embedding::Blocks(table), lm_head)
            }
            None => {
                let embed = ckpt.read(embed_name, &[c.vocab_size, h])?;
                let lm_head = if c.head_is_tied() {
                    Linear::from_checkpoint_layout(&embed, (c.vocab_size, h), None, to)?
                } else {
                    Linear::load(ckpt, c.head_name(), (h, c.head_width()), false, to)?
                };
                flush_queue(device);
                let table = RowParts::new(&embed, [c.vocab_size, h], device, dtype)?;
                flush_queue(device);
                (Embedding::Table(table), lm_head)
            }
        };
        let mut layers = Vec::new(); // grown as layers load: not sized by the config
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            let qk_norm = |name: &str| {
                c.qk_norm
                    .then(|| load_vector(ckpt, &format!("{attn}.{name}.weight"), d, to))
                    .transpose()
            };
            layers.push(Layer {
                input_norm: load_vector(ckpt, &format!("{p}.input_layernorm.weight"), h, to)?,
                q: Linear::load(ckpt, &format!("{attn}.q_proj"), (h, q_dim), c.qkv_bias, to)?,
                k: Linear::load(ckpt, &format!("{attn}.k_proj"), (h, kv_dim), c.qkv_bias, to)?,
                v: Linear::load(ckpt, &format!("{attn}.v_proj"), (h, kv_dim), c.qkv_bias, to)?,
                o: Linear::load(ckpt, &format!("{attn}.o_proj"), (q_dim, h), c.o_bias, to)?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                post_attention_norm: load_vector(
                    ckpt,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    to,
                )?,
                gate: Linear::load(
                    ckpt,
                    &format!("{mlp}.gate_proj"),
                    (h, c.intermediate_size),
                    c.mlp_bias,
                    to,
                )?,
                up: Linear::load(
                    ckpt,
                    &format!("{mlp}.up_proj"),
                    (h, c.intermediate_size),
                    c.mlp_bias,
                    to,
                )?,
                down: Linear::load(
                    ckpt,
                    &format!("{mlp}.down_proj"),
                    (c.intermediate_size, h),
                    c.mlp_bias,
                    to,
                )?,
            });
            // The layer's weights are on their way: their host copies can go.
            flush_queue(device);
        }
        let norm = load_vector(ckpt, "model.norm.weight", h, to)?;
        let mut rope = Rope::new(&config);
        if let Some(divisors) = ckpt.rope_freq_divisors(rope.half_dim())? {
            rope = rope.divided_by(&divisors);
        }
        Ok(Self {
            rope,
            config,
            device: device.clone(),
            dtype,
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes the KV cache holds per token of one sequence (all layers, keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.kv_bytes_per_token(self.dtype.size())
    }

    /// Bytes the weights take where they live (the device's memory on wgpu, host memory on
    /// the CPU backend): block-quantized matrices their blocks' bytes, float tensors their
    /// type's size a value, packed matrices their panels; a tied head counted once.
    pub fn weight_bytes(&self) -> usize {
        fn tensor<const D: usize>(t: &Tensor<D>) -> usize {
            t.shape().num_elements() * t.dtype().size()
        }
        fn linear(l: &Linear) -> usize {
            let weight = match &l.weight {
                Weight::Tensor(t) => t.bytes(),
                Weight::Packed(w) => w.bytes(),
                Weight::Blocks(w) => w.bytes(),
            };
            weight + l.bias.as_ref().map_or(0, tensor)
        }
        let embedding = match &self.embed_tokens {
            Embedding::Table(t) => t.bytes(),
            Embedding::Blocks(q) => q.bytes(),
        };
        let head = match (&self.embed_tokens, &self.lm_head.weight) {
            (Embedding::Blocks(a), Weight::Blocks(b)) if a.is(b) => 0,
            _ => linear(&self.lm_head),
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let norms = [&l.q_norm, &l.k_norm]
                    .into_iter()
                    .flatten()
                    .map(tensor)
                    .sum::<usize>();
                l.linears().into_iter().map(linear).sum::<usize>()
                    + tensor(&l.input_norm)
                    + tensor(&l.post_attention_norm)
                    + norms
            })
            .sum();
        embedding + head + layers + tensor(&self.norm)
    }

    /// How many weight matrices are kept in more than one device buffer (those larger than
    /// the device's buffer limit; a tied head counted with its table).
    pub fn matrices_in_parts(&self) -> usize {
        fn parts(weight: &Weight) -> usize {
            match weight {
                Weight::Tensor(t) => t.part_count(),
                Weight::Blocks(b) => b.part_count(),
                Weight::Packed(_) => 1,
            }
        }
        let embedding = match &self.embed_tokens {
            Embedding::Table(t) => t.part_count(),
            Embedding::Blocks(b) => b.part_count(),
        };
        let head = match (&self.embed_tokens, &self.lm_head.weight) {
            (Embedding::Blocks(a), Weight::Blocks(b)) if a.is(b) => 1,
            (_, head) => parts(head),
        };
        let layers = self
            .layers
            .iter()
            .flat_map(|l| l.linears().map(|l| parts(&l.weight)));
        [embedding, head]
            .into_iter()
            .chain(layers)
            .filter(|&p| p > 1)
            .count()
    }

    /// Every weight tensor with its checkpoint name. With tied embeddings the output head is
    /// a copy of the embedding table and is not listed (so training refuses tied models).
    pub fn parameters_mut(&mut self) -> Vec<NamedParam<'_>> {
        let dtype = self.dtype;
        let mut out = vec![NamedParam {
            name: "model.embed_tokens.weight".into(),
            transposed: false,
            tensor: ParamMut::Matrix(self.embed_tokens.table_mut(dtype)),
        }];
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            out.push(vector_param(
                format!("{p}.input_layernorm.weight"),
                &mut layer.input_norm,
            ));
            out.push(vector_param(
                format!("{p}.post_attention_layernorm.weight"),
                &mut layer.post_attention_norm,
            ));
            for (name, linear) in [
                ("q_proj", &mut layer.q),
                ("k_proj", &mut layer.k),
                ("v_proj", &mut layer.v),
                ("o_proj", &mut layer.o),
            ] {
                out.extend(linear.params(&format!("{p}.self_attn.{name}"), dtype));
            }
            for (name, norm) in [("q_norm", &mut layer.q_norm), ("k_norm", &mut layer.k_norm)] {
                if let Some(norm) = norm {
                    out.push(vector_param(format!("{p}.self_attn.{name}.weight"), norm));
                }
            }
            for (name, linear) in [
                ("gate_proj", &mut layer.gate),
                ("up_proj", &mut layer.up),
                ("down_proj", &mut layer.down),
            ] {
                out.extend(linear.params(&format!("{p}.mlp.{name}"), dtype));
            }
        }
        out.push(vector_param("model.norm.weight".into(), &mut self.norm));
        if !self.config.head_is_tied() {
            out.push(NamedParam {
                name: format!("{}.weight", self.config.head_name()),
                transposed: true,
                tensor: ParamMut::Matrix(self.lm_head.weight.tensor_mut(dtype)),
            });
        }
        out
    }

    /// The weights as a `model.safetensors` file in the checkpoint layout, stored as `dtype`.
    pub fn to_safetensors(&self, dtype: Dtype) -> Result<Vec<u8>> {
        let mut copy = self.clone(); // tensors are shared handles: nothing is copied here
        let mut tensors = Vec::new();
        for param in copy.parameters_mut() {
            let (values, shape) = match param.tensor {
                ParamMut::Vector(t) => {
                    let n = t.dims()[0];
                    (read_f32(t.clone())?, vec![n])
                }
                ParamMut::Matrix(t) => {
                    let [rows, cols] = t.dims();
                    let values = read_f32(t.clone())?;
                    if param.transposed {
                        (transpose(&values, rows, cols), vec![cols, rows])
                    } else {
                        (values, vec![rows, cols])
                    }
                }
            };
            tensors.push((param.name, shape, values));
        }
        let views: Vec<(&str, &[usize], &[f32])> = tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
            .collect();
        Ok(serialize(&views, dtype))
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh, empty KV cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.config.num_layers, batch)
    }

    /// Runs one chunk of new tokens per sequence through the model, appending their keys and
    /// values to `cache`, and returns logits ([batch, chunk, vocab] or [batch, 1, vocab]; a
    /// reward model's scores: [batch, chunk or 1, 1]).
    ///
    /// Chunks may differ in length: shorter ones are left-padded with masked slots, and each
    /// sequence keeps its own positions, so a batch gives the same logits as its sequences run
    /// one by one.
    pub fn forward(
        &self,
        chunks: &[&[u32]],
        cache: &mut KvCache,
        logits_for: LogitsFor,
    ) -> Result<Tensor<3>> {
        let c = &self.config;
        let batch = chunks.len();
        if batch == 0 {
            return Err(Error::EmptyInput("no sequences to run"));
        }
        if batch != cache.batch_size() {
            return Err(Error::Backend(format!(
                "{batch} chunks for a KV cache of {} sequences",
                cache.batch_size()
            )));
        }
        let seq = chunks.iter().map(|t| t.len()).max().unwrap_or(0);
        for (b, chunk) in chunks.iter().enumerate() {
            if chunk.is_empty() {
                return Err(Error::EmptyInput("a sequence has no tokens to run"));
            }
            if let Some(&id) = chunk.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab_size: c.vocab_size,
                });
            }
            let needed = cache.position(b) + chunk.len();
            if needed > c.max_position_embeddings {
                return Err(Error::ContextTooLong {
                    needed,
                    max: c.max_position_embeddings,
                });
            }
        }
        // Bidirectional attention must see the whole sequence at once: no cache, no windows.
        let window_len = match c.objective {
            Objective::Causal => WINDOW,
            Objective::MaskedDiffusion { .. } if cache.slots() == 0 => seq,
            Objective::MaskedDiffusion { .. } => {
                return Err(Error::Backend(
                    "a masked diffusion model reruns the whole sequence: pass a fresh KV cache"
                        .into(),
                ));
            }
        };
        let window = seq.min(window_len) as u64;
        let slots = (cache.slots() + seq) as u64;
        let scores = batch as u64 * c.num_heads as u64 * window * slots * 4;
        check_fits(&self.device, "the attention scores", scores)?;
        let kv = batch as u64 * (c.num_kv_heads * c.head_dim) as u64 * slots * 4;
        check_fits(&self.device, "the KV cache of one layer", kv)?;
        // Long chunks run in windows of at most WINDOW slots, which bounds the attention
        // scores and mask of a long prompt; each sequence stays left-padded in every window.
        let mut logits = Vec::new();
        for start in (0..seq).step_by(window_len) {
            let end = (start + window_len).min(seq);
            let mut ids = Vec::with_capacity(batch * (end - start));
            let mut lengths = Vec::with_capacity(batch);
            for chunk in chunks {
                let pad = seq - chunk.len();
                lengths.push(end - start.max(pad).min(end));
                ids.extend((start..end).map(|s| if s < pad { 0 } else { chunk[s - pad] as i64 }));
            }
            // Logits from chunk position `first` on: this window's share of them, if any.
            let first = seq - logits_for.tail_len(seq);
            let wanted = (end > first).then(|| first.max(start) - start);
            logits.extend(self.forward_window(ids, &lengths, cache, wanted)?);
        }
        Ok(Tensor::cat(logits, 1))
    }

    /// One window of a forward pass: `ids` is [batch, window] with sequence b's tokens in its
    /// last `lengths[b]` slots. Returns the logits of window positions `logits_from..` when
    /// asked for any.
    fn forward_window(
        &self,
        ids: Vec<i64>,
        lengths: &[usize],
        cache: &mut KvCache,
        logits_from: Option<usize>,
    ) -> Result<Option<Tensor<3>>> {
        let c = &self.config;
        let batch = lengths.len();
        let seq = ids.len() / batch;
        let step = cache.append(lengths, seq);

        // Rotary angles per (sequence, slot) and the additive attention mask, built on the host.
        let half = self.rope.half_dim();
        let mut cos = Vec::with_capacity(batch * seq * half);
        let mut sin = Vec::with_capacity(batch * seq * half);
        for positions in &step.positions {
            for &p in positions {
                self.rope.push_angles(p, &mut cos, &mut sin);
            }
        }
        let dev = &self.device;
        let cos =
            Tensor::<3>::from_data(TensorData::new(cos, [batch, seq, half]), (dev, self.dtype))
                .unsqueeze_dim::<4>(1);
        let sin =
            Tensor::<3>::from_data(TensorData::new(sin, [batch, seq, half]), (dev, self.dtype))
                .unsqueeze_dim::<4>(1);
        let total = step.total_slots;
        let causal = c.objective == Objective::Causal;
        let rep = c.num_heads / c.num_kv_heads;
        // Queries are grouped as [batch, kv_heads, rep·seq, d]; the mask repeats per group.
        let mut mask = Vec::with_capacity(batch * rep * seq * total);
        for b in 0..batch {
            for _ in 0..rep {
                for s in 0..seq {
                    let query_slot = total - seq + s;
                    mask.extend((0..total).map(|k| {
                        if (k <= query_slot || !causal) && cache.is_valid(b, k) {
                            0.0
                        } else {
                            MASKED
                        }
                    }));
                }
            }
        }
        let mask = Tensor::<3>::from_data(TensorData::new(mask, [batch, rep * seq, total]), dev)
            .unsqueeze_dim::<4>(1);

        let mut x = self.embed_tokens.lookup(ids, dev, self.dtype)?; // [batch·seq, hidden]
        for (layer_index, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(x.clone(), &layer.input_norm, c.rms_norm_eps);
            let attn = self.attention(
                layer,
                layer_index,
                h,
                &cos,
                &sin,
                &mask,
                cache,
                (batch, seq),
            )?;
            x = x + attn;
            let h = rms_norm(x.clone(), &layer.post_attention_norm, c.rms_norm_eps);
            let mut h = LinearInput::from(h);
            let gated = silu(layer.gate.forward(&mut h)?) * layer.up.forward(&mut h)?;
            let mlp = layer.down.forward(&mut gated.into())?;
            x = x + mlp;
        }
        let x = x.reshape([batch, seq, c.hidden_size]);
        let Some(from) = logits_from else {
            return Ok(None);
        };
        let x = x.narrow(1, from, seq - from);
        let rows = x.dims()[1];
        let x = rms_norm(x, &self.norm, c.rms_norm_eps).reshape([batch * rows, c.hidden_size]);
        Ok(Some(
            self.lm_head
                .forward(&mut x.into())?
                .cast(DType::F32)
                .reshape([batch, rows, c.head_width()]),
        ))
    }

    /// Self-attention of one layer for x: [batch·seq, hidden] → [batch·seq, hidden].
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        layer_index: usize,
        x: Tensor<2>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<4>,
        cache: &mut KvCache,
        (batch, seq): (usize, usize),
    ) -> Result<Tensor<2>> {
        let c = &self.config;
        let (d, heads, kv_heads) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let split = |t: Tensor<2>, n: usize| t.reshape([batch, seq, n, d]).swap_dims(1, 2);
        let mut x = LinearInput::from(x);
        let mut q = split(layer.q.forward(&mut x)?, heads); // [b, heads, seq, d]
        let mut k = split(layer.k.forward(&mut x)?, kv_heads);
        let v = split(layer.v.forward(&mut x)?, kv_heads);
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = rms_norm(q, qn, c.rms_norm_eps);
            k = rms_norm(k, kn, c.rms_norm_eps);
        }
        let q = apply_rope(q, cos, sin);
        let k = apply_rope(k, cos, sin);
        let rep = heads / kv_heads;
        // Group the query heads that share a kv head: head h uses kv head h / rep.
        let q = q.reshape([batch, kv_heads, rep * seq, d]);
        let out = cache.attend(layer_index, q, k, v, mask.clone()); // [b, kv_heads, rep·seq, d]
        let out = out
            .reshape([batch, heads, seq, d])
            .swap_dims(1, 2)
            .reshape([batch * seq, heads * d]);
        layer.o.forward(&mut out.into())
    }
}

/// HF's rotary embedding: x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁].
/// x: [b, heads, seq, d]; cos, sin: [b, 1, seq, d/2].
fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let out1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let out2 = x2 * cos.clone() + x1 * sin.clone();
    Tensor::cat(vec![out1, out2], 3)
}
