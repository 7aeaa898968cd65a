//! The fused sampling kernel: [`SamplingParams::take`] for every row of a [rows, vocab] logits
//! tensor in one CubeCL launch on a wgpu device, one cube of up to 256 units per row, where
//! the tensor-op path ([`crate::decode::device_sampling`]) dispatches some 60 kernels for a draw at a
//! temperature and about 10 more for each of a top-p cut's 40 bisection steps.
//!
//! Per row, in passes over the row that end in a shared-memory reduction:
//! 1. the maximum and the first index holding it;
//! 2. Σ exp(s), Σ exp(s)·s and Σ s, s = logit − max: log Z, the entropy and the mean log p;
//! 3. when drawing, the cuts, exactly: the k-th largest logit and then the top-p cut are found
//!    by bisection on the logits' order-preserving u32 keys (32 passes each), so every logit
//!    equal to the cut is kept, as the host reference keeps ties;
//! 4. the inverse CDF over the kept weights exp((logit − max)/T) in token-id order: each unit
//!    sums its own contiguous span, unit 0 turns the span sums into running sums, and the unit
//!    whose span crosses u · total walks it to the token.
//!
//! Unit 0 writes [token, log p(token), log q(token), entropy of p, mean log p], the layout the
//! tensor-op path reads back; a token the cuts remove gets log q = [`LOG_ZERO`].

use burn::tensor::{DType, Shape, Tensor as BurnTensor, TensorData};
use burn_cubecl::Cube;
use burn_cubecl::cubecl;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::sampling::{RowPick, SamplingParams};

/// Numbers written per row.
pub(crate) const OUT_PER_ROW: usize = 5;
/// What the kernel writes for log 0 (WGSL has no infinity literal); read back as −∞.
pub(crate) const LOG_ZERO: f32 = f32::MIN;
/// Units per cube at most: WebGPU's default workgroup limit.
const MAX_UNITS: u32 = 256;
/// Cubes per grid dimension at most (WebGPU's limit).
const MAX_CUBES_PER_DIM: u32 = 65_535;

/// [rows, 5] per-row results of taking `picks` from `logits` [rows, vocab] with `sampling`, in
/// one launch, or `None` where the tensor is not on a CubeCL (wgpu) device, is empty or has
/// more rows than a grid dimension holds.
/// Parameters and picks must have been checked.
pub(crate) fn take_by_kernel(
    logits: &BurnTensor<2>,
    picks: &[RowPick],
    sampling: &SamplingParams,
) -> Option<BurnTensor<2>> {
    let [rows, vocab] = logits.dims();
    if rows == 0 || vocab == 0 || rows > MAX_CUBES_PER_DIM as usize {
        return None;
    }
    let device = logits.device();
    let logits = logits
        .clone()
        .cast(DType::F32)
        .try_into_primitive::<Cube>()
        .ok()?;
    // Per row: u and the forced token, or −1 (token ids are exact in f32 below 2^24).
    let pick_values: Vec<f32> = picks
        .iter()
        .flat_map(|p| match p {
            RowPick::Draw(u) => [*u as f32, -1.0],
            RowPick::Forced(token) => [0.0, *token as f32],
        })
        .collect();
    let picks = BurnTensor::<2>::from_data(TensorData::new(pick_values, [rows, 2]), &device)
        .try_into_primitive::<Cube>()
        .ok()?;
    let logits: CubeTensor = into_contiguous(logits);
    let client = logits.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        logits.device.clone(),
        Shape::new([rows, OUT_PER_ROW]),
        DType::F32,
    );
    // A power of two, for the reductions' halving.
    let limit = client
        .properties()
        .hardware
        .max_units_per_cube
        .min(MAX_UNITS);
    let units = 1u32 << (31 - limit.max(1).leading_zeros());
    let (inv_temperature, top_k, top_p) = match sampling.temperature {
        0.0 => (0.0, 0, 1.0),
        t => (
            1.0 / t,
            sampling
                .top_k
                .filter(|&k| k > 0 && k < vocab)
                .map_or(0, |k| k as u32),
            sampling.top_p.unwrap_or(1.0),
        ),
    };
    take_rows::launch(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(units),
        logits.into_tensor_arg(),
        picks.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        inv_temperature,
        top_k,
        top_p,
        units as usize,
    );
    Some(BurnTensor::<2>::from_primitive::<Cube>(out))
}

/// One cube per row of `logits`; see the module documentation for the passes. `picks` is
/// [rows, 2] (u, forced token or −1), `out` [rows, 5]; `inv_temperature` is 0 for greedy,
/// `top_k` 0 and `top_p` ≥ 1 for no cut.
#[cube(launch)]
// CubeCL translates arithmetic, not `div_ceil` calls.
#[allow(clippy::manual_div_ceil)]
fn take_rows(
    logits: &Tensor<f32>,
    picks: &Tensor<f32>,
    out: &mut Tensor<f32>,
    inv_temperature: f32,
    top_k: u32,
    top_p: f32,
    #[comptime] units: usize,
) {
    let vocab = logits.shape(1);
    let row = CUBE_POS;
    let unit = UNIT_POS as usize;
    let at = row * logits.stride(0);
    let step = logits.stride(1);
    let mut sums = Shared::<[f32]>::new_slice(units + 1);
    let mut counts = Shared::<[u32]>::new_slice(units);

    // 1. The maximum and the first index holding it (u32::MAX: none seen).
    let mut best_value = f32::MIN.runtime();
    let mut best_index = u32::MAX.runtime();
    let mut i = unit;
    while i < vocab {
        let v = logits[at + i * step];
        if best_index == u32::MAX || v > best_value {
            best_value = v;
            best_index = u32::cast_from(i);
        }
        i += units;
    }
    sums[unit] = best_value;
    counts[unit] = best_index;
    sync_cube();
    let mut half = units.runtime() / 2;
    while half > 0 {
        if unit < half {
            let value = sums[unit + half];
            let index = counts[unit + half];
            let own_value = sums[unit];
            let own_index = counts[unit];
            let better = value > own_value || (value == own_value && index < own_index);
            if index != u32::MAX && (own_index == u32::MAX || better) {
                sums[unit] = value;
                counts[unit] = index;
            }
        }
        sync_cube();
        half /= 2;
    }
    let max = sums[0];
    let best = counts[0];
    sync_cube();

    // 2. The statistics of p.
    let mut z = 0.0f32;
    let mut weighted = 0.0f32;
    let mut shifted = 0.0f32;
    let mut i = unit;
    while i < vocab {
        let s = logits[at + i * step] - max;
        let e = s.exp();
        z += e;
        weighted += e * s;
        shifted += s;
        i += units;
    }
    let z = cube_reduce::<f32>(&mut sums, z, false, units);
    let weighted = cube_reduce::<f32>(&mut sums, weighted, false, units);
    let shifted = cube_reduce::<f32>(&mut sums, shifted, false, units);
    let ln_z = z.ln();

    // 3. The cuts: keep the logits whose key reaches `cut`.
    let drawing = inv_temperature > 0.0;
    let top_key = order_key(max);
    let mut cut = 0u32;
    if drawing && top_k > 0 {
        // The largest key with at least k logits at or above it: the k-th largest.
        let mut low = 0u32;
        let mut high = top_key;
        for _ in 0..32u32 {
            let mid = low + (high - low + 1) / 2;
            let mut above = 0u32;
            let mut i = unit;
            while i < vocab {
                if order_key(logits[at + i * step]) >= mid {
                    above += 1;
                }
                i += units;
            }
            if cube_reduce::<u32>(&mut counts, above, false, units) >= top_k {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        cut = low;
    }
    if drawing && top_p < 1.0 {
        // The largest key whose logits at or above it hold mass p of those kept so far.
        let kept = kept_mass(logits, at, step, vocab, max, inv_temperature, cut, units);
        let need = cube_reduce::<f32>(&mut sums, kept, false, units) * top_p;
        let mut low = cut;
        let mut high = top_key;
        for _ in 0..32u32 {
            let mid = low + (high - low + 1) / 2;
            let mass = kept_mass(logits, at, step, vocab, max, inv_temperature, mid, units);
            if cube_reduce::<f32>(&mut sums, mass, false, units) >= need {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        cut = low;
    }

    // 4. The draw: the first token whose running kept weight passes u · total.
    let mut token = best;
    let mut total = 1.0f32;
    if drawing {
        let span = (vocab + units - 1) / units;
        let start = (unit * span).min(vocab);
        let end = (start + span).min(vocab);
        let mut own = 0.0f32;
        for j in start..end {
            own += kept_weight(logits[at + j * step], max, inv_temperature, cut);
        }
        sums[unit] = own;
        sync_cube();
        if unit == 0 {
            let mut running = 0.0f32;
            for j in 0..units {
                let span_sum = sums[j];
                sums[j] = running;
                running += span_sum;
            }
            sums[units] = running;
        }
        sync_cube();
        total = sums[units];
        let target = picks[row * picks.stride(0)] * total;
        let mut running = sums[unit];
        let mut found = u32::MAX.runtime();
        for j in start..end {
            let w = kept_weight(logits[at + j * step], max, inv_temperature, cut);
            running += w;
            if found == u32::MAX && w > 0.0 && running > target {
                found = u32::cast_from(j);
            }
        }
        let found = cube_reduce::<u32>(&mut counts, found, true, units);
        // Rounding can leave u · total past the last weight: the most likely token then.
        if found != u32::MAX {
            token = found;
        }
    }
    let forced = picks[row * picks.stride(0) + picks.stride(1)];
    if forced >= 0.0 {
        token = u32::cast_from(forced);
    }

    if unit == 0 {
        let logit = logits[at + token as usize * step];
        let mut log_q = 0.0f32;
        if drawing {
            if order_key(logit) >= cut {
                log_q = (logit - max) * inv_temperature - total.ln();
            } else {
                log_q = f32::MIN;
            }
        } else if token != best {
            log_q = f32::MIN;
        }
        let o = row * out.stride(0);
        let c = out.stride(1);
        out[o] = f32::cast_from(token);
        out[o + c] = logit - max - ln_z;
        out[o + 2 * c] = log_q;
        out[o + 3 * c] = ln_z - weighted / z;
        out[o + 4 * c] = shifted / f32::cast_from(vocab) - ln_z;
    }
}

/// A u32 in the order of the f32 `value` (−0 and +0 alike): unsigned comparison of keys is
/// comparison of values.
#[cube]
fn order_key(value: f32) -> u32 {
    let bits = u32::reinterpret(select(value == 0.0, 0.0f32, value));
    select(
        bits >= 0x8000_0000u32,
        u32::MAX - bits,
        bits + 0x8000_0000u32,
    )
}

/// exp((logit − max)/T) where the logit's key reaches `cut`, else 0.
#[cube]
fn kept_weight(logit: f32, max: f32, inv_temperature: f32, cut: u32) -> f32 {
    select(
        order_key(logit) >= cut,
        ((logit - max) * inv_temperature).exp(),
        0.0f32,
    )
}

/// This unit's share of the kept weight of the logits whose key reaches `cut`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn kept_mass(
    logits: &Tensor<f32>,
    at: usize,
    step: usize,
    vocab: usize,
    max: f32,
    inv_temperature: f32,
    cut: u32,
    #[comptime] units: usize,
) -> f32 {
    let mut mass = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < vocab {
        mass += kept_weight(logits[at + i * step], max, inv_temperature, cut);
        i += units;
    }
    mass
}

/// The sum of every unit's `value`, or with `least` the smallest, returned to all of them;
/// `scratch` holds ≥ `units` values.
#[cube]
fn cube_reduce<N: Numeric>(
    scratch: &mut Shared<[N]>,
    value: N,
    #[comptime] least: bool,
    #[comptime] units: usize,
) -> N {
    let unit = UNIT_POS as usize;
    scratch[unit] = value;
    sync_cube();
    let mut half = units.runtime() / 2;
    while half > 0 {
        if unit < half {
            let own = scratch[unit];
            let other = scratch[unit + half];
            if least {
                scratch[unit] = select(other < own, other, own);
            } else {
                scratch[unit] = own + other;
            }
        }
        sync_cube();
        half /= 2;
    }
    let reduced = scratch[0];
    sync_cube();
    reduced
}
