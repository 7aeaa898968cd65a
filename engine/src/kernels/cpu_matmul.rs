//! Linear layers on the CPU backend: y = x · W for activations x [rows, k] and a weight W [k, n]
//! packed once at load into column panels, so the inner loop streams the weight, keeps a block
//! of rows' outputs in registers and splits the panels over every core. Decoding multiplies
//! few rows (one per sequence) by large weights, where a general GEMM repacks the weight on
//! every call and runs a single-row product on one core. Weights are stored in f32 or in f16
//! (half the bytes to stream; widened to f32 in registers), activations and sums are f32.

use half::f16;

use super::threads::for_each_chunk_mut;
use half::slice::HalfFloatSliceExt;

/// Columns per panel: two 512-bit vectors of f32.
const PANEL: usize = 32;

/// Rows of x one register block computes.
const ROW_BLOCK: usize = 8;

/// Rows of x multiplied by every panel before the next rows start: a chunk of x stays in a
/// core's cache while the weight streams past it.
const ROW_CHUNK: usize = 64;

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_FMAS: usize = 1 << 16;

/// How a packed matrix stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// Rounded to the nearest f16 (`Precision::F16`).
    F16,
}

/// A value a panel stores: f32 or f16.
trait PanelValue: Copy + Default + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
    /// `values` as f32 into `out` (of the same length).
    fn widen(values: &[Self], out: &mut [f32]);
}

impl PanelValue for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn widen(values: &[Self], out: &mut [f32]) {
        out.copy_from_slice(values);
    }
}

impl PanelValue for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn widen(values: &[Self], out: &mut [f32]) {
        // Vector conversions (F16C on x86) where the CPU has them.
        values.convert_to_f32_slice(out);
    }
}

/// The panels' values.
#[derive(Clone, PartialEq)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// A [k, n] matrix packed into ⌈n / 32⌉ panels of k × 32 values each, row-major within a
/// panel; the last panel's columns past n are zero.
#[derive(Clone, PartialEq)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    panels: Panels,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let storage = match self.panels {
            Panels::F32(_) => Storage::F32,
            Panels::F16(_) => Storage::F16,
        };
        write!(f, "PackedMatrix([{}, {}], {storage:?})", self.k, self.n)
    }
}

impl PackedMatrix {
    /// Packs the transpose of a row-major [n, k] matrix: a checkpoint's [out, in] linear
    /// weight gives W = weightᵀ, [in, out].
    pub fn from_transposed(values: &[f32], n: usize, k: usize, storage: Storage) -> Self {
        assert_eq!(values.len(), n * k, "a [{n}, {k}] matrix");
        Self::pack(k, n, storage, |row, col| values[col * k + row])
    }

    /// Packs a row-major [k, n] matrix.
    pub fn from_row_major(values: &[f32], k: usize, n: usize, storage: Storage) -> Self {
        assert_eq!(values.len(), k * n, "a [{k}, {n}] matrix");
        Self::pack(k, n, storage, |row, col| values[row * n + col])
    }

    fn pack(k: usize, n: usize, storage: Storage, at: impl Fn(usize, usize) -> f32) -> Self {
        fn packed<E: PanelValue>(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Vec<E> {
            let mut panels = vec![E::default(); n.div_ceil(PANEL) * k * PANEL];
            for (p, panel) in panels.chunks_exact_mut(k * PANEL).enumerate() {
                let cols = PANEL.min(n - p * PANEL);
                for (row, line) in panel.chunks_exact_mut(PANEL).enumerate() {
                    for (j, slot) in line[..cols].iter_mut().enumerate() {
                        *slot = E::from_f32(at(row, p * PANEL + j));
                    }
                }
            }
            panels
        }
        let panels = match storage {
            Storage::F32 => Panels::F32(packed(k, n, at)),
            Storage::F16 => Panels::F16(packed(k, n, at)),
        };
        Self { k, n, panels }
    }

    /// [k, n]: input features by output features.
    pub fn dims(&self) -> [usize; 2] {
        [self.k, self.n]
    }

    /// Bytes the panels take (columns padded to whole panels).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::F16(v) => v.len() * 2,
        }
    }

    /// The matrix unpacked, row-major [k, n], in f32.
    pub fn to_row_major(&self) -> Vec<f32> {
        fn unpacked<E: PanelValue>(panels: &[E], k: usize, n: usize) -> Vec<f32> {
            let mut values = vec![0.0f32; k * n];
            for (p, panel) in panels.chunks_exact(k * PANEL).enumerate() {
                let cols = PANEL.min(n - p * PANEL);
                for (row, line) in panel.chunks_exact(PANEL).enumerate() {
                    E::widen(&line[..cols], &mut values[row * n + p * PANEL..][..cols]);
                }
            }
            values
        }
        match &self.panels {
            Panels::F32(panels) => unpacked(panels, self.k, self.n),
            Panels::F16(panels) => unpacked(panels, self.k, self.n),
        }
    }

    /// y = x · W for row-major x [rows, k]: row-major [rows, n].
    pub fn left_mul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.left_mul_with(Kernel::best(), x, rows)
    }

    fn left_mul_with(&self, kernel: Kernel, x: &[f32], rows: usize) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert_eq!(x.len(), rows * k, "x is [{rows}, {k}]");
        let mut y = vec![0.0f32; rows * n];
        if n == 0 {
            return y;
        }
        // Each panel's outputs for a chunk of rows, [rows, 32] per panel.
        let mut by_panel = vec![0.0f32; n.div_ceil(PANEL) * rows.min(ROW_CHUNK) * PANEL];
        for (x, y) in x.chunks(ROW_CHUNK * k).zip(y.chunks_mut(ROW_CHUNK * n)) {
            let rows = x.len() / k;
            let by_panel = &mut by_panel[..n.div_ceil(PANEL) * rows * PANEL];
            match &self.panels {
                Panels::F32(panels) => panel_products(kernel, panels, k, x, rows, by_panel),
                Panels::F16(panels) => panel_products(kernel, panels, k, x, rows, by_panel),
            }
            for (p, out) in by_panel.chunks_exact(rows * PANEL).enumerate() {
                let cols = PANEL.min(n - p * PANEL);
                for (row, line) in out.chunks_exact(PANEL).enumerate() {
                    y[row * n + p * PANEL..][..cols].copy_from_slice(&line[..cols]);
                }
            }
        }
        y
    }
}

/// Every panel's product with x [rows, k] into `by_panel`, [rows, 32] per panel; the panels
/// split over the cores when the work is large enough to pay for it.
fn panel_products<E: PanelValue>(
    kernel: Kernel,
    panels: &[E],
    k: usize,
    x: &[f32],
    rows: usize,
    by_panel: &mut [f32],
) {
    let panel_product = |p: usize, out: &mut [f32]| {
        let panel = &panels[p * k * PANEL..][..k * PANEL];
        for (block, out) in out.chunks_mut(ROW_BLOCK * PANEL).enumerate() {
            let x = &x[block * ROW_BLOCK * k..];
            kernel.block(out.len() / PANEL, Operands { x, k, panel, out });
        }
    };
    // Every panel holds k · 32 values, each multiplied into every row.
    let fmas = rows * panels.len();
    for_each_chunk_mut(
        by_panel,
        rows * PANEL,
        fmas >= PARALLEL_MIN_FMAS,
        panel_product,
    );
}

/// The register-block kernels this CPU can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX-512F: 8 rows × 2 vectors of 16 accumulators, fused multiply-adds (f16 widened by
    /// `vcvtph2ps`).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA: the portable loop compiled for them, fused multiply-adds.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain Rust the compiler vectorises for the build's target.
    Portable,
}

impl Kernel {
    /// The fastest kernel the running CPU supports.
    fn best() -> Self {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::available()[0])
    }

    /// Every kernel the running CPU supports, fastest first.
    // Off x86-64 (wasm32) nothing is pushed before the portable kernel.
    #[cfg_attr(not(target_arch = "x86_64"), allow(clippy::vec_init_then_push))]
    fn available() -> Vec<Self> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(Self::Avx2);
            }
        }
        kernels.push(Self::Portable);
        kernels
    }

    /// out[r, j] = Σ_kk x[r·k + kk] · panel[kk·32 + j] for r < rows ≤ 8, j < 32.
    fn block<E: PanelValue>(self, rows: usize, operands: Operands<E>) {
        match rows {
            1 => self.block_of::<1, E>(operands),
            2 => self.block_of::<2, E>(operands),
            3 => self.block_of::<3, E>(operands),
            4 => self.block_of::<4, E>(operands),
            5 => self.block_of::<5, E>(operands),
            6 => self.block_of::<6, E>(operands),
            7 => self.block_of::<7, E>(operands),
            8 => self.block_of::<8, E>(operands),
            _ => unreachable!("row blocks hold 1 to {ROW_BLOCK} rows"),
        }
    }

    fn block_of<const R: usize, E: PanelValue>(self, o: Operands<E>) {
        assert!(o.x.len() >= R * o.k && o.panel.len() >= o.k * PANEL && o.out.len() >= R * PANEL);
        match self {
            // SAFETY: the CPU has the features (`available`), the lengths were checked above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => unsafe { x86::block_avx512::<R, E>(o) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => unsafe { x86::block_avx2::<R, E>(o) },
            Self::Portable => block_portable::<R, false, E>(o),
        }
    }
}

/// What one register block reads and writes: R rows of x [R, k], a panel [k, 32] and the
/// block's outputs [R, 32].
struct Operands<'a, E> {
    x: &'a [f32],
    k: usize,
    panel: &'a [E],
    out: &'a mut [f32],
}

/// The register block in plain Rust: with `FUSED`, `mul_add` (one instruction where the
/// target has FMA, a slow library call where it has not).
#[inline(always)]
fn block_portable<const R: usize, const FUSED: bool, E: PanelValue>(o: Operands<E>) {
    let mut acc = [[0.0f32; PANEL]; R];
    for (kk, w) in o.panel[..o.k * PANEL].chunks_exact(PANEL).enumerate() {
        let mut widened = [0.0f32; PANEL];
        E::widen(w, &mut widened);
        let w = widened;
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = o.x[r * o.k + kk];
            for (a, &w) in acc.iter_mut().zip(&w) {
                *a = if FUSED {
                    xv.mul_add(w, *a)
                } else {
                    *a + xv * w
                };
            }
        }
    }
    for (acc, out) in acc.iter().zip(o.out.chunks_exact_mut(PANEL)) {
        out.copy_from_slice(acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Operands, PANEL, PanelValue};

    /// 16 panel values from `p` as f32: a plain load, or 16 f16 widened.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; p points at 16 readable values.
    #[inline(always)]
    unsafe fn load16<E: PanelValue>(p: *const E) -> __m512 {
        // SAFETY: as the caller promised.
        unsafe {
            // Two bytes: an f16 panel (decided at compile time for each E).
            if size_of::<E>() == 2 {
                _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
            } else {
                _mm512_loadu_ps(p as *const f32)
            }
        }
    }

    /// The register block with AVX-512F: R rows × 32 columns in 2·R zmm accumulators.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; x holds R·k values, panel k·32, out R·32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512<const R: usize, E: PanelValue>(o: Operands<E>) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (x, w) = (o.x.as_ptr(), o.panel.as_ptr());
        for kk in 0..o.k {
            // SAFETY: kk·32 + 32 ≤ k·32 ≤ panel's length; r·k + kk < R·k ≤ x's length.
            unsafe {
                let w0 = load16(w.add(kk * PANEL));
                let w1 = load16(w.add(kk * PANEL + 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(r * o.k + kk));
                    acc[0] = _mm512_fmadd_ps(xv, w0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(xv, w1, acc[1]);
                }
            }
        }
        let out = o.out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: r·32 + 32 ≤ R·32 ≤ out's length.
            unsafe {
                _mm512_storeu_ps(out.add(r * PANEL), acc[0]);
                _mm512_storeu_ps(out.add(r * PANEL + 16), acc[1]);
            }
        }
    }

    /// The portable register block compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2<const R: usize, E: PanelValue>(o: Operands<E>) {
        super::block_portable::<R, true, E>(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let h = (i ^ seed.rotate_left(17))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(29);
                (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// y = x · W in f64, the plain triple loop.
    fn reference(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for kk in 0..k {
                for j in 0..n {
                    y[r * n + j] += x[r * k + kk] as f64 * w[kk * n + j] as f64;
                }
            }
        }
        y
    }

    #[test]
    fn packing_round_trips_both_layouts() {
        let (k, n) = (7, 45);
        let w = values(k * n, 1);
        let packed = PackedMatrix::from_row_major(&w, k, n, Storage::F32);
        assert_eq!(packed.dims(), [k, n]);
        assert_eq!(packed.to_row_major(), w);
        let halves = PackedMatrix::from_row_major(&w, k, n, Storage::F16).to_row_major();
        for (h, v) in halves.iter().zip(&w) {
            assert_eq!(*h, f16::from_f32(*v).to_f32());
        }
        let mut transposed = vec![0.0; k * n];
        for row in 0..k {
            for col in 0..n {
                transposed[col * k + row] = w[row * n + col];
            }
        }
        assert_eq!(
            PackedMatrix::from_transposed(&transposed, n, k, Storage::F32),
            packed
        );
    }

    #[test]
    fn every_kernel_matches_the_reference_product() {
        // Row counts around the register block, widths around the panel, one size large
        // enough to run on several threads.
        let shapes = [
            (1, 3, 1),
            (1, 64, 100),
            (3, 17, 32),
            (8, 9, 31),
            (9, 33, 65),
            (24, 40, 96),
            (64, 96, 160),
            (150, 20, 40),
            (10, 300, 70),
        ];
        for kernel in Kernel::available() {
            for storage in [Storage::F32, Storage::F16] {
                for &(rows, k, n) in &shapes {
                    let x = values(rows * k, 2);
                    let packed = PackedMatrix::from_row_major(&values(k * n, 3), k, n, storage);
                    // The reference multiplies the values the matrix stores (f16-rounded).
                    let want = reference(&x, &packed.to_row_major(), rows, k, n);
                    let got = packed.left_mul_with(kernel, &x, rows);
                    assert_eq!(got.len(), want.len());
                    for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()) * (k as f64).sqrt(),
                            "{kernel:?} {storage:?} [{rows}, {k}]·[{k}, {n}] at {i}: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_products() {
        let packed = PackedMatrix::from_row_major(&values(12, 4), 3, 4, Storage::F32);
        assert!(packed.left_mul(&[], 0).is_empty());
        let none = PackedMatrix::from_row_major(&[], 3, 0, Storage::F16);
        assert!(none.left_mul(&values(6, 5), 2).is_empty());
    }
}
