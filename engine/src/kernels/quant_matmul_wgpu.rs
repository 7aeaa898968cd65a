//! Linear layers with block-quantized weights on a wgpu device: y = x · Wᵀ for activations x
//! [rows, k] and a weight W [n, k] kept on the device in its GGUF bytes (Q8_0, Q4_0, Q4_1,
//! Q4_K or Q6_K, as u32 words: the file's tensor bytes and at most 3 more), dequantized in
//! registers by CubeCL kernels, four values at a time, with f32 sums of f32 activations:
//! - [`matvec`], up to [`MATVEC_MAX_ROWS`] rows of x (decoding): 8 units share an output
//!   feature, each dequantizing every 8th run of 32 weights of its row once for all rows of x;
//!   a shared-memory sum per feature;
//! - [`tiled`], more rows (prefill, batched rollouts): a cube computes a 64 × 64 tile of y,
//!   staging 32 values of 64 rows of x and of 64 dequantized weight rows in shared memory per
//!   step (16 KiB, WebGPU's default limit), each unit 4 × 4 outputs;
//! - [`gather_rows`]: rows of W dequantized whole (an embedding lookup).
//!
//! A matrix larger than one buffer of the device (WebGPU binds 128 MiB unless the adapter
//! grants more) is kept in parts of consecutive rows, each within the limit; every kernel runs
//! once a part and writes its own output features (or looked-up rows) into one output, so the
//! values are the unsplit matrix's.
//!
//! Blocks are not word-aligned (Q8_0's are 34 bytes): a four-byte read at any offset joins two
//! words. Each kernel is tested against the reference dequantizers' f64 product.

use burn::tensor::{DType, Int, Shape, Tensor as BurnTensor, TensorData};
use burn_cubecl::Cube;
use burn_cubecl::cubecl;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::quant_matmul::QuantMatrix;
use crate::backend::{Device, flush_queue, row_groups};

/// Most bytes of a weight copied to the device at once: a larger part goes in pieces joined on
/// the device, so a load holds at most this much in host (wasm) memory beyond the weight's own
/// bytes.
pub const UPLOAD_PIECE_BYTES: usize = 16 << 20;
use crate::error::{Error, Result};
use crate::quant::TensorType;

/// Rows of x up to which a product runs the matrix-vector kernel.
pub const MATVEC_MAX_ROWS: usize = 8;
/// Units sharing one output feature in [`matvec`].
const LANES: usize = 8;
/// Output features per cube in [`matvec`].
const FEATURES_PER_CUBE: usize = 32;
/// Values every block format's rows come in whole runs of (a block or a sub-block).
const CHUNK: usize = 32;
/// [`tiled`]'s tile: rows of x and output features (TILE × TILE outputs a cube).
const TILE: usize = 64;
/// Values of k [`tiled`] stages per step.
const TILE_K: usize = 32;
/// Outputs a unit of [`tiled`] computes along each side (4 × 4), so 16 × 16 units a cube.
const PER_UNIT: usize = 4;
/// Units along each side of a [`tiled`] cube.
const SIDE: usize = TILE / PER_UNIT;
/// Outputs a unit of [`tiled`] accumulates.
const PER_UNIT_OUTPUTS: usize = PER_UNIT * PER_UNIT;
/// Values of x (and of W) a unit of [`tiled`] stages per step.
const STAGED: usize = TILE_K * TILE / (SIDE * SIDE);
/// Groups of 4 values a chunk holds.
const CHUNK_GROUPS: usize = CHUNK / 4;
/// Groups of 4 values a unit of [`tiled`] stages per step.
const STAGED_GROUPS: usize = STAGED / 4;
/// Units per cube in [`gather_rows`].
const GATHER_UNITS: usize = 64;
/// Cubes per grid dimension at most (WebGPU's limit).
const MAX_CUBES_PER_DIM: usize = 65_535;

/// The kernels' compile-time ids of the block formats.
const Q8_0: u32 = 0;
const Q4_0: u32 = 1;
const Q4_1: u32 = 2;
const Q4_K: u32 = 3;
const Q6_K: u32 = 4;

/// The kernels' id of a block format; None for the float types.
fn format_id(t: TensorType) -> Option<u32> {
    match t {
        TensorType::Q8_0 => Some(Q8_0),
        TensorType::Q4_0 => Some(Q4_0),
        TensorType::Q4_1 => Some(Q4_1),
        TensorType::Q4_K => Some(Q4_K),
        TensorType::Q6_K => Some(Q6_K),
        TensorType::F32 | TensorType::F16 | TensorType::BF16 => None,
    }
}

/// A weight [n, k] in a block format, on a wgpu device as its blocks' bytes, in as many
/// parts of consecutive rows as the device's buffer limit needs.
#[derive(Clone, Debug)]
pub struct DeviceQuantMatrix {
    tensor_type: TensorType,
    n: usize,
    k: usize,
    device: Device,
    parts: Vec<Part>,
}

/// Rows `first..first + rows` of a [`DeviceQuantMatrix`] in one buffer.
#[derive(Clone, Debug)]
struct Part {
    first: usize,
    rows: usize,
    /// The rows' blocks, row after row, little-endian in u32 words (the last one zero-padded).
    words: CubeTensor,
}

impl DeviceQuantMatrix {
    /// Copies `matrix`'s blocks to `device` (a wgpu one), split by rows where the whole does
    /// not fit one buffer. Fails for a float type, a CPU device or a row larger than a buffer.
    pub fn upload(matrix: &QuantMatrix, device: &Device) -> Result<Self> {
        let t = matrix.tensor_type();
        if format_id(t).is_none() {
            return Err(Error::Backend(format!(
                "{t} is not a block format the wgpu kernels read"
            )));
        }
        let [n, k] = matrix.dims();
        // Every row gathered at once (`dequantized`) must fit the grid.
        gather_grid(n)?;
        let row_bytes = matrix.block_bytes().len() / n.max(1);
        let what = format!("a {t} weight [{n}, {k}]");
        let groups = row_groups(device, &what, n, row_bytes as u64)?;
        Self::upload_in_parts(matrix, device, groups)
    }

    /// [`Self::upload`] in parts of the rows `groups` (consecutive ranges covering 0..n),
    /// each copied to the device [`UPLOAD_PIECE_BYTES`] at a time.
    fn upload_in_parts(
        matrix: &QuantMatrix,
        device: &Device,
        groups: Vec<std::ops::Range<usize>>,
    ) -> Result<Self> {
        Self::upload_in_pieces(matrix, device, groups, UPLOAD_PIECE_BYTES)
    }

    /// [`Self::upload_in_parts`], copying `piece_bytes` (a multiple of 4) at a time.
    fn upload_in_pieces(
        matrix: &QuantMatrix,
        device: &Device,
        groups: Vec<std::ops::Range<usize>>,
        piece_bytes: usize,
    ) -> Result<Self> {
        let t = matrix.tensor_type();
        let [n, k] = matrix.dims();
        let bytes = matrix.block_bytes();
        let row_bytes = bytes.len() / n.max(1);
        let mut parts = Vec::new();
        for rows in groups {
            let part = &bytes[rows.start * row_bytes..rows.end * row_bytes];
            // Each piece becomes a tensor of words, the host copy dropped at once; pieces of
            // whole words join into the words of the whole part.
            let mut pieces: Vec<BurnTensor<1, Int>> = part
                .chunks(piece_bytes.next_multiple_of(4).max(4))
                .map(|piece| {
                    let words: Vec<u32> = piece
                        .chunks(4)
                        .map(|c| {
                            let mut word = [0u8; 4];
                            word[..c.len()].copy_from_slice(c);
                            u32::from_le_bytes(word)
                        })
                        .collect();
                    let len = words.len();
                    let piece = BurnTensor::<1, Int>::from_data(
                        TensorData::new(words, [len]),
                        (device, DType::U32),
                    );
                    // Each piece's host copy goes before the next one is made.
                    flush_queue(device);
                    piece
                })
                .collect();
            let words = match pieces.len() {
                1 => pieces.remove(0),
                _ => BurnTensor::cat(pieces, 0),
            }
            .try_into_primitive::<Cube>()
            .map_err(|_| {
                Error::Backend(
                    "block-quantized weights stay in their blocks on a wgpu device only".into(),
                )
            })?;
            parts.push(Part {
                first: rows.start,
                rows: rows.len(),
                words,
            });
        }
        Ok(Self {
            tensor_type: t,
            n,
            k,
            device: device.clone(),
            parts,
        })
    }

    /// The number of buffers the weight takes (1 unless it is larger than one).
    pub fn part_count(&self) -> usize {
        self.parts.len()
    }

    /// [n, k]: output features by input features.
    pub fn dims(&self) -> [usize; 2] {
        [self.n, self.k]
    }

    /// The block format.
    pub fn tensor_type(&self) -> TensorType {
        self.tensor_type
    }

    /// Bytes the weight takes on the device.
    pub fn device_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.words.meta.shape.num_elements() * 4)
            .sum()
    }

    /// y = x · Wᵀ for x [rows, k] on the weight's device: [rows, n] in x's float type.
    pub fn left_mul(&self, x: &BurnTensor<2>) -> Result<BurnTensor<2>> {
        let [rows, k] = x.dims();
        if k != self.k {
            return Err(Error::Backend(format!(
                "a [{rows}, {k}] activation cannot multiply a [{}, {}] weight",
                self.n, self.k
            )));
        }
        let dtype = x.dtype();
        let x: CubeTensor = x
            .clone()
            .cast(DType::F32)
            .try_into_primitive::<Cube>()
            .map_err(|e| Error::Backend(format!("activations not on a wgpu device: {e:?}")))?;
        let x = into_contiguous(x);
        let client = x.client.clone();
        let y = empty_device_contiguous_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([rows, self.n]),
            DType::F32,
        );
        let format = self.format();
        let (row_bytes, k) = (self.row_bytes() as u32, self.k as u32);
        for part in self.parts.iter().filter(|p| rows > 0 && p.rows > 0) {
            let (first, n) = (part.first as u32, part.rows as u32);
            let (words, x, y) = (
                part.words.clone().into_tensor_arg(),
                x.clone().into_tensor_arg(),
                y.clone().into_tensor_arg(),
            );
            // SAFETY: the kernels index the part's words below n · row_bytes (its rows' bytes,
            // checked by `QuantMatrix::new`), x below rows · k and y below rows · self.n (its
            // features first.. first + n of the shapes passed); wgpu bounds-checks storage
            // accesses besides.
            if rows <= MATVEC_MAX_ROWS {
                unsafe {
                    matvec::launch_unchecked(
                        &client,
                        grid(part.rows.div_ceil(FEATURES_PER_CUBE), 1)?,
                        CubeDim::new_2d(LANES as u32, FEATURES_PER_CUBE as u32),
                        words,
                        x,
                        y,
                        row_bytes,
                        first,
                        n,
                        k,
                        rows as u32,
                        format,
                    )
                };
            } else {
                unsafe {
                    tiled::launch_unchecked(
                        &client,
                        grid(part.rows.div_ceil(TILE), rows.div_ceil(TILE))?,
                        CubeDim::new_2d(SIDE as u32, SIDE as u32),
                        words,
                        x,
                        y,
                        row_bytes,
                        first,
                        n,
                        k,
                        rows as u32,
                        format,
                    )
                };
            }
        }
        Ok(BurnTensor::<2>::from_primitive::<Cube>(y).cast(dtype))
    }

    /// Rows `ids` of W dequantized: [ids, k] f32 on the weight's device (an embedding lookup).
    /// None when an id is past n.
    pub fn rows(&self, ids: &[u32]) -> Result<Option<BurnTensor<2>>> {
        if ids.iter().any(|&id| id as usize >= self.n) {
            return Ok(None);
        }
        let count = ids.len();
        let cubes = gather_grid(count)?;
        let ids = BurnTensor::<1, Int>::from_data(
            TensorData::new(ids.to_vec(), [count]),
            (&self.device, DType::U32),
        );
        Ok(ids
            .try_into_primitive::<Cube>()
            .ok()
            .map(|ids| self.gather(ids, count, cubes)))
    }

    /// The whole weight dequantized on its device: [n, k] f32.
    pub fn dequantized(&self) -> BurnTensor<2> {
        let ids: Vec<u32> = (0..self.n as u32).collect();
        let ids = BurnTensor::<1, Int>::from_data(
            TensorData::new(ids, [self.n]),
            (&self.device, DType::U32),
        );
        match (ids.try_into_primitive::<Cube>(), gather_grid(self.n)) {
            (Ok(ids), Ok(cubes)) => self.gather(ids, self.n, cubes),
            // Neither happens: the weight is on a wgpu device and `upload` checked the grid.
            _ => BurnTensor::zeros([self.n, self.k], (&self.device, DType::F32)),
        }
    }

    /// Rows `ids` (count of them, each below n) gathered by `cubes` cubes: each part writes
    /// the rows it holds.
    fn gather(&self, ids: CubeTensor, count: usize, cubes: CubeCount) -> BurnTensor<2> {
        let client = ids.client.clone();
        let y = empty_device_contiguous_dtype(
            client.clone(),
            ids.device.clone(),
            Shape::new([count, self.k]),
            DType::F32,
        );
        for part in self.parts.iter().filter(|p| count > 0 && p.rows > 0) {
            // SAFETY: a part reads only ids in first..first + rows (ids below n, checked by
            // the callers), so below its rows · row_bytes; writes below count · k; wgpu
            // bounds-checks storage accesses besides.
            unsafe {
                gather_rows::launch_unchecked(
                    &client,
                    cubes.clone(),
                    CubeDim::new_1d(GATHER_UNITS as u32),
                    part.words.clone().into_tensor_arg(),
                    ids.clone().into_tensor_arg(),
                    y.clone().into_tensor_arg(),
                    self.row_bytes() as u32,
                    part.first as u32,
                    part.rows as u32,
                    self.k as u32,
                    count as u32,
                    self.format(),
                )
            };
        }
        BurnTensor::<2>::from_primitive::<Cube>(y)
    }

    fn format(&self) -> u32 {
        // Checked in `upload`.
        format_id(self.tensor_type).unwrap_or(Q8_0)
    }

    /// Bytes of one weight row.
    fn row_bytes(&self) -> usize {
        self.k / self.tensor_type.block_len() * self.tensor_type.block_bytes()
    }
}

/// The cubes of a gather of `count` rows, one each, numbered across then down.
fn gather_grid(count: usize) -> Result<CubeCount> {
    let across = count.clamp(1, MAX_CUBES_PER_DIM);
    grid(across, count.div_ceil(across))
}

/// `across` × `down` cubes; an error past the device's grid limit.
fn grid(across: usize, down: usize) -> Result<CubeCount> {
    if across > MAX_CUBES_PER_DIM || down > MAX_CUBES_PER_DIM {
        return Err(Error::Backend(format!(
            "a grid of {across} × {down} cubes is past wgpu's {MAX_CUBES_PER_DIM} a dimension"
        )));
    }
    Ok(CubeCount::Static(across as u32, down as u32, 1))
}

/// The 4 bytes from byte `at` on (any alignment) as a little-endian u32.
#[cube]
fn word_at(words: &Tensor<u32>, at: usize) -> u32 {
    let i = at / 4;
    let shift = u32::cast_from(at % 4) * 8;
    let low = words[i];
    let mut word = low;
    if shift != 0 {
        word = (low >> shift) | (words[i + 1] << (32 - shift));
    }
    word
}

/// The byte at `at`.
#[cube]
fn byte_at(words: &Tensor<u32>, at: usize) -> u32 {
    (words[at / 4] >> (u32::cast_from(at % 4) * 8)) & 0xFF
}

/// The f16 at byte `at` (even: block fields are), as f32 (exact).
#[cube]
fn half_at(words: &Tensor<u32>, at: usize) -> f32 {
    let bits = (words[at / 4] >> (u32::cast_from(at % 4) * 8)) & 0xFFFF;
    let sign = (bits & 0x8000) << 16;
    let exponent = (bits >> 10) & 0x1F;
    let mantissa = bits & 0x3FF;
    let normal = f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
    let special = f32::from_bits(sign | 0x7F80_0000u32 | (mantissa << 13));
    // Zero or subnormal: mantissa · 2^−24 (0x3380_0000 is 2^−24).
    let magnitude = f32::cast_from(mantissa) * f32::from_bits(0x3380_0000u32);
    let tiny = select(sign != 0, -magnitude, magnitude);
    select(exponent == 0, tiny, select(exponent == 31, special, normal))
}

/// Values e, e+1, e+2, e+3 (e a multiple of 4) of the weight row that starts at byte `row`,
/// into `w`; the arithmetic of [`crate::quant::dequantize`]'s block functions.
#[cube]
fn dequantize_4(
    words: &Tensor<u32>,
    row: usize,
    e: usize,
    w: &mut Array<f32>,
    #[comptime] format: u32,
) {
    if comptime!(format == Q8_0) {
        // 34 bytes: d, 32 signed bytes.
        let block = row + (e / 32) * 34;
        let d = half_at(words, block);
        let q = word_at(words, block + 2 + e % 32);
        #[unroll]
        for t in 0..4 {
            let b = (q >> (8 * t as u32)) & 0xFF;
            w[t] = (f32::cast_from(b) - select(b >= 128, 256.0f32, 0.0f32)) * d;
        }
    } else if comptime!(format == Q4_0 || format == Q4_1) {
        // 18 bytes: d, 16 bytes of nibbles (low: values 0–15, high: 16–31); Q4_1: 20 bytes,
        // d and m first.
        let j = e % 32;
        let shift = select(j >= 16, 4u32, 0u32);
        if comptime!(format == Q4_0) {
            let block = row + (e / 32) * 18;
            let d = half_at(words, block);
            let q = word_at(words, block + 2 + j % 16);
            #[unroll]
            for t in 0..4 {
                let nibble = (q >> (8 * t as u32 + shift)) & 0xF;
                w[t] = d * (f32::cast_from(nibble) - 8.0);
            }
        } else {
            let block = row + (e / 32) * 20;
            let d = half_at(words, block);
            let m = half_at(words, block + 2);
            let q = word_at(words, block + 4 + j % 16);
            #[unroll]
            for t in 0..4 {
                let nibble = (q >> (8 * t as u32 + shift)) & 0xF;
                w[t] = d * f32::cast_from(nibble) + m;
            }
        }
    } else if comptime!(format == Q4_K) {
        // 144 bytes: d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
        let block = row + (e / 256) * 144;
        let within = e % 256;
        let sub = within / 32;
        let d = half_at(words, block);
        let dmin = half_at(words, block + 2);
        let s = block + 4;
        // Scales and mins 0–3: bytes 0–3 and 4–7, low 6 bits; 4–7: bytes 8–11's nibbles with
        // the top bits of bytes 0–3 (scales) and 4–7 (mins).
        let low = byte_at(words, s + sub % 4);
        let middle = byte_at(words, s + sub % 4 + 4);
        let high = byte_at(words, s + sub % 4 + 8);
        let first = sub < 4;
        let scale = select(first, low & 63, (high & 0xF) | ((low >> 6) << 4));
        let min = select(first, middle & 63, (high >> 4) | ((middle >> 6) << 4));
        let d1 = d * f32::cast_from(scale);
        let min1 = dmin * f32::cast_from(min);
        let q = word_at(words, block + 16 + (sub / 2) * 32 + within % 32);
        let shift = (u32::cast_from(sub) % 2) * 4;
        #[unroll]
        for t in 0..4 {
            let nibble = (q >> (8 * t as u32 + shift)) & 0xF;
            w[t] = d1 * f32::cast_from(nibble) - min1;
        }
    } else {
        // Q6_K, 210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed scales, d.
        let block = row + (e / 256) * 210;
        let within = e % 256;
        let half = within / 128;
        let quarter = u32::cast_from((within % 128) / 32);
        let l = within % 32;
        let d = half_at(words, block + 208);
        let scale_byte = byte_at(words, block + 192 + within / 16);
        let scale = d * (f32::cast_from(scale_byte) - select(scale_byte >= 128, 256.0f32, 0.0f32));
        let low = word_at(words, block + 64 * half + l + 32 * (within % 64 / 32));
        let high = word_at(words, block + 128 + 32 * half + l);
        let low_shift = (quarter / 2) * 4;
        let high_shift = quarter * 2;
        #[unroll]
        for t in 0..4 {
            let low4 = (low >> (8 * t as u32 + low_shift)) & 0xF;
            let high2 = (high >> (8 * t as u32 + high_shift)) & 3;
            w[t] = scale * (f32::cast_from(low4 | (high2 << 4)) - 32.0);
        }
    }
}

/// y = x · Wᵀ for rows ≤ [`MATVEC_MAX_ROWS`] of x and the n weight rows in `words` (features
/// first.. of y): cube dim (LANES, FEATURES_PER_CUBE); unit (lane, slot) of cube c dots every
/// LANES-th run of 32 values of feature c · FEATURES_PER_CUBE + slot with every row of x,
/// then the lanes' sums are added per row.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matvec(
    words: &Tensor<u32>,
    x: &Tensor<f32>,
    y: &mut Tensor<f32>,
    row_bytes: u32,
    first: u32,
    n: u32,
    k: u32,
    rows: u32,
    #[comptime] format: u32,
) {
    let lane = UNIT_POS_X as usize;
    let slot = UNIT_POS_Y as usize;
    let feature = CUBE_POS_X as usize * FEATURES_PER_CUBE + slot;
    let (n, k, rows) = (n as usize, k as usize, rows as usize);
    let stride = x.stride(0);
    let mut sums = Array::<f32>::new(MATVEC_MAX_ROWS);
    #[unroll]
    for r in 0..MATVEC_MAX_ROWS {
        sums[r] = 0.0;
    }
    let mut w = Array::<f32>::new(4usize);
    if feature < n {
        let row = feature * row_bytes as usize;
        let mut chunk = lane;
        while chunk < k / CHUNK {
            // The run's scales are the same for its 8 groups: the compiler reads them once.
            #[unroll]
            for group in 0..CHUNK_GROUPS {
                let e = chunk * CHUNK + group * 4;
                dequantize_4(words, row, e, &mut w, format);
                #[unroll]
                for r in 0..MATVEC_MAX_ROWS {
                    if r < rows {
                        let at = r * stride + e;
                        sums[r] +=
                            w[0] * x[at] + w[1] * x[at + 1] + w[2] * x[at + 2] + w[3] * x[at + 3];
                    }
                }
            }
            chunk += LANES;
        }
    }
    // Every unit's sums in shared memory, [row][slot][lane]; lane r < rows then adds row r's.
    let mut shared = Shared::<[f32]>::new_slice(MATVEC_MAX_ROWS * FEATURES_PER_CUBE * LANES);
    let unit = slot * LANES + lane;
    #[unroll]
    for r in 0..MATVEC_MAX_ROWS {
        shared[r * FEATURES_PER_CUBE * LANES + unit] = sums[r];
    }
    sync_cube();
    if lane < rows && feature < n {
        let start = lane * FEATURES_PER_CUBE * LANES + slot * LANES;
        let mut total = 0.0f32;
        #[unroll]
        for i in 0..LANES {
            total += shared[start + i];
        }
        let at = lane * y.stride(0) + first as usize + feature;
        y[at] = total;
    }
}

/// y = x · Wᵀ tile by tile for the n weight rows in `words` (features first.. of y): cube
/// (i, j) computes rows 64j.. of y at the part's features 64i.., cube dim 16 × 16, unit
/// (tx, ty) rows 4ty.. by features 4tx..; per step of 32 values of k, unit u stages 8 values
/// of row u / 4 of the x tile and 8 dequantized values of weight row u / 4, both k-major in
/// shared memory.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn tiled(
    words: &Tensor<u32>,
    x: &Tensor<f32>,
    y: &mut Tensor<f32>,
    row_bytes: u32,
    first: u32,
    n: u32,
    k: u32,
    rows: u32,
    #[comptime] format: u32,
) {
    let (n, k, rows) = (n as usize, k as usize, rows as usize);
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let unit = ty * SIDE + tx;
    let row0 = CUBE_POS_Y as usize * TILE;
    let feature0 = CUBE_POS_X as usize * TILE;
    let mut xs = Shared::<[f32]>::new_slice(TILE_K * TILE);
    let mut ws = Shared::<[f32]>::new_slice(TILE_K * TILE);
    let mut w = Array::<f32>::new(4usize);
    let mut acc = Array::<f32>::new(PER_UNIT_OUTPUTS);
    #[unroll]
    for i in 0..PER_UNIT_OUTPUTS {
        acc[i] = 0.0;
    }
    // What this unit stages: tile row `load`, values `col`..`col` + 8 of the step.
    let load = unit / (TILE_K / STAGED);
    let col = (unit % (TILE_K / STAGED)) * STAGED;
    let x_row = row0 + load;
    let feature = feature0 + load;
    let mut k0 = 0;
    while k0 < k {
        #[unroll]
        for g in 0..STAGED_GROUPS {
            let c = col + 4 * g;
            if x_row < rows {
                let at = x_row * x.stride(0) + k0 + c;
                #[unroll]
                for t in 0..4 {
                    xs[(c + t) * TILE + load] = x[at + t];
                }
            } else {
                #[unroll]
                for t in 0..4 {
                    xs[(c + t) * TILE + load] = 0.0;
                }
            }
            if feature < n {
                dequantize_4(words, feature * row_bytes as usize, k0 + c, &mut w, format);
            } else {
                #[unroll]
                for t in 0..4 {
                    w[t] = 0.0;
                }
            }
            #[unroll]
            for t in 0..4 {
                ws[(c + t) * TILE + load] = w[t];
            }
        }
        sync_cube();
        for i in 0..TILE_K {
            let xa = i * TILE + ty * PER_UNIT;
            let wa = i * TILE + tx * PER_UNIT;
            #[unroll]
            for a in 0..PER_UNIT {
                let p = xs[xa + a];
                #[unroll]
                for b in 0..PER_UNIT {
                    acc[a * PER_UNIT + b] += p * ws[wa + b];
                }
            }
        }
        sync_cube();
        k0 += TILE_K;
    }
    let s = y.stride(0);
    #[unroll]
    for a in 0..PER_UNIT {
        let r = row0 + ty * PER_UNIT + a;
        #[unroll]
        for b in 0..PER_UNIT {
            let f = feature0 + tx * PER_UNIT + b;
            if r < rows && f < n {
                y[r * s + first as usize + f] = acc[a * PER_UNIT + b];
            }
        }
    }
}

/// Row ids[i] of W dequantized into row i of y for every id among the rows first..first +
/// part_rows that `words` holds: one cube per id (cubes numbered across, then down),
/// GATHER_UNITS units taking every GATHER_UNITS-th group of 4 values.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    words: &Tensor<u32>,
    ids: &Tensor<u32>,
    y: &mut Tensor<f32>,
    row_bytes: u32,
    first: u32,
    part_rows: u32,
    k: u32,
    count: u32,
    #[comptime] format: u32,
) {
    let i = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    let mut id = 0u32;
    let mut held = false;
    if i < count as usize {
        id = ids[i];
        held = id >= first && id - first < part_rows;
    }
    if held {
        let row = (id - first) as usize * row_bytes as usize;
        let k = k as usize;
        let mut w = Array::<f32>::new(4usize);
        let mut g = UNIT_POS as usize;
        while g < k / 4 {
            let e = g * 4;
            dequantize_4(words, row, e, &mut w, format);
            let at = i * y.stride(0) + e;
            #[unroll]
            for t in 0..4 {
                y[at + t] = w[t];
            }
            g += GATHER_UNITS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{read_f32, wgpu_device};
    use crate::quant::random_blocks;

    const TYPES: [TensorType; 5] = [
        TensorType::Q8_0,
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q4_K,
        TensorType::Q6_K,
    ];

    /// The wgpu device, or None (said loudly) where ETS_ALLOW_NO_WGPU=1 and there is none.
    fn device() -> Option<Device> {
        match wgpu_device() {
            Ok((device, _)) => Some(device),
            Err(e) if std::env::var("ETS_ALLOW_NO_WGPU").as_deref() == Ok("1") => {
                eprintln!("SKIPPED the wgpu block kernels' tests (ETS_ALLOW_NO_WGPU=1): {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn random_x(rows: usize, k: usize) -> Vec<f32> {
        let rng = crate::rng::CounterRng { seed: 11 };
        (0..rows * k)
            .map(|i| (rng.uniform(0, i as u64) * 2.0 - 1.0) as f32)
            .collect()
    }

    /// Every kernel × every type × shapes that leave partial tiles, cubes and lane groups:
    /// within 1e-5 (relative to the sum of |terms|) of the f64 product of the reference
    /// dequantizers' weights; the gathered rows equal to them.
    #[test]
    fn the_block_kernels_compute_the_dequantized_product() {
        let Some(device) = device() else { return };
        for t in TYPES {
            let k = if t.block_len() == 256 { 512 } else { 96 };
            for n in [1, 7, 45] {
                let blocks = random_blocks(t, n, k, n as u64);
                let matrix = QuantMatrix::new(t, n, k, blocks).unwrap();
                let on_device = DeviceQuantMatrix::upload(&matrix, &device).unwrap();
                assert_eq!(on_device.part_count(), 1);
                // The same matrix in parts of 3 rows (the last one shorter): every kernel's
                // values equal the whole matrix's.
                let groups = (0..n).step_by(3).map(|s| s..(s + 3).min(n)).collect();
                // Each part copied 8 bytes at a time (not whole blocks): the same words.
                let split =
                    DeviceQuantMatrix::upload_in_pieces(&matrix, &device, groups, 8).unwrap();
                assert_eq!(split.part_count(), n.div_ceil(3));
                let w = matrix.to_row_major();
                // Equal but for a fused multiply-add the driver may contract (Q4_1, Q4_K).
                let rows = read_f32(on_device.dequantized()).unwrap();
                for (got, want) in rows.iter().zip(&w) {
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{t}, n {n}"
                    );
                }
                assert_eq!(rows.len(), w.len());
                assert_eq!(
                    read_f32(split.dequantized()).unwrap(),
                    rows,
                    "{t}, n {n}: parts"
                );
                let looked_up = on_device.rows(&[n as u32 - 1, 0]).unwrap().unwrap();
                let looked_up = read_f32(looked_up).unwrap();
                let split_ids = [n as u32 - 1, 0, (n / 2) as u32];
                let split_rows = read_f32(split.rows(&split_ids).unwrap().unwrap()).unwrap();
                for (i, id) in split_ids.iter().enumerate() {
                    let id = *id as usize;
                    assert_eq!(
                        split_rows[i * k..][..k],
                        rows[id * k..][..k],
                        "{t}: part rows"
                    );
                }
                assert_eq!(looked_up[..k], rows[(n - 1) * k..], "{t}: the last row");
                assert_eq!(looked_up[k..], rows[..k], "{t}: the first row");
                assert!(
                    on_device.rows(&[n as u32]).unwrap().is_none(),
                    "id n refused"
                );
                for rows in [1, 3, 8, 9, 70] {
                    let x = random_x(rows, k);
                    let xt =
                        BurnTensor::<2>::from_data(TensorData::new(x.clone(), [rows, k]), &device);
                    let y = read_f32(on_device.left_mul(&xt).unwrap()).unwrap();
                    let y_split = read_f32(split.left_mul(&xt).unwrap()).unwrap();
                    assert_eq!(y_split, y, "{t}, n {n}, rows {rows}: in parts");
                    for r in 0..rows {
                        for f in 0..n {
                            let terms = (0..k).map(|e| x[r * k + e] as f64 * w[f * k + e] as f64);
                            let want: f64 = terms.clone().sum();
                            let scale: f64 = terms.map(f64::abs).sum::<f64>().max(1e-6);
                            let got = y[r * n + f] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * scale,
                                "{t}, n {n}, rows {rows}: y[{r}, {f}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn float_types_and_the_cpu_are_refused() {
        let matrix = QuantMatrix::new(TensorType::F32, 1, 1, 1.0f32.to_le_bytes().to_vec());
        if let (Some(device), Ok(matrix)) = (device(), matrix) {
            assert!(DeviceQuantMatrix::upload(&matrix, &device).is_err());
        }
        let q = QuantMatrix::new(
            TensorType::Q8_0,
            1,
            32,
            random_blocks(TensorType::Q8_0, 1, 32, 1),
        )
        .unwrap();
        assert!(DeviceQuantMatrix::upload(&q, &crate::backend::cpu_device()).is_err());
    }
}
