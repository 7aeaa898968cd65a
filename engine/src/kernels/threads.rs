//! The CPU kernels' worker threads. Decoding one token calls a matrix product about two hundred
//! times, each a few hundred microseconds of work; handing each to a thread pool whose workers
//! sleep between calls costs a wake-up (a futex call and a context switch, tens of
//! microseconds) every time, which made batch-1 decoding spend a fifth of its time in the
//! scheduler. These workers spin for a short while after each product instead, so the next one
//! starts at once, and only then park. The calling thread takes pieces too; one product runs
//! at a time (a second caller meanwhile, or a product inside a product, runs on its own thread).
//! The number of threads follows Rayon's (`RAYON_NUM_THREADS`), as the rest of the CPU backend.

/// out's pieces of `chunk` values (the last one shorter), each given to `task` with its index,
/// over every kernel thread when there are several pieces and `parallel` is true.
pub(crate) fn for_each_chunk_mut(
    out: &mut [f32],
    chunk: usize,
    parallel: bool,
    task: impl Fn(usize, &mut [f32]) + Sync,
) {
    let chunk = chunk.max(1);
    #[cfg(not(target_family = "wasm"))]
    if parallel && out.len() > chunk {
        let (len, base) = (out.len(), SharedOut(out.as_mut_ptr()));
        let piece = |i: usize| {
            let start = i * chunk;
            let end = (start + chunk).min(len);
            // SAFETY: each index is handed out once (`pool::run`), so the pieces are disjoint
            // ranges of `out`, which outlives the run.
            let slice = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
            task(i, slice);
        };
        pool::run(len.div_ceil(chunk), &piece);
        return;
    }
    // One thread in the browser's wasm build.
    #[cfg(target_family = "wasm")]
    let _ = parallel;
    for (i, slice) in out.chunks_mut(chunk).enumerate() {
        task(i, slice);
    }
}

/// The columns one piece of [`for_each_column_block`] writes: `count` values from column
/// `first` of every row of a row-major output.
pub(crate) struct Columns<'a> {
    base: *mut f32,
    row_len: usize,
    rows: usize,
    first: usize,
    count: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl Columns<'_> {
    /// The piece's values in row `r`.
    pub(crate) fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        // SAFETY: r < rows and first + count ≤ row_len, so the range is inside the output;
        // the pieces' column ranges are disjoint and `&mut self` keeps this one's rows unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.add(r * self.row_len + self.first), self.count)
        }
    }
}

/// The columns of `out` (rows of `row_len` values) in blocks of `block` columns (the last one
/// narrower), each given to `task` with its index: a product whose pieces are output features
/// writes each row's share in place. Over every kernel thread when `parallel` is true.
pub(crate) fn for_each_column_block(
    out: &mut [f32],
    row_len: usize,
    block: usize,
    parallel: bool,
    task: impl Fn(usize, Columns<'_>) + Sync,
) {
    let block = block.max(1);
    if row_len == 0 {
        return;
    }
    assert!(
        out.len().is_multiple_of(row_len),
        "rows of {row_len} values"
    );
    let (rows, pieces) = (out.len() / row_len, row_len.div_ceil(block));
    let base = SharedOut(out.as_mut_ptr());
    let piece = |i: usize| {
        let first = i * block;
        task(
            i,
            Columns {
                base: base.at(0),
                row_len,
                rows,
                first,
                count: block.min(row_len - first),
                _out: std::marker::PhantomData,
            },
        );
    };
    #[cfg(not(target_family = "wasm"))]
    if parallel && pieces > 1 {
        pool::run(pieces, &piece);
        return;
    }
    // One thread in the browser's wasm build.
    #[cfg(target_family = "wasm")]
    let _ = parallel;
    (0..pieces).for_each(piece);
}

/// A pointer into the output that the pieces' tasks share (each writes its own range).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the tasks write disjoint ranges (see `for_each_chunk_mut`, `for_each_column_block`).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY (for the caller): offset is inside the output.
        self.0.wrapping_add(offset)
    }
}

#[cfg(not(target_family = "wasm"))]
mod pool {
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Condvar, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    /// How long a worker spins for the next product before it parks.
    const SPIN: Duration = Duration::from_micros(300);

    /// One product: `pieces` indices handed out one at a time.
    struct Job<'a> {
        task: &'a (dyn Fn(usize) + Sync),
        pieces: usize,
        next: AtomicUsize,
        done: AtomicUsize,
        panicked: AtomicBool,
    }

    impl Job<'_> {
        /// Runs pieces until none is left.
        fn work(&self) {
            loop {
                let i = self.next.fetch_add(1, SeqCst);
                if i >= self.pieces {
                    return;
                }
                if catch_unwind(AssertUnwindSafe(|| (self.task)(i))).is_err() {
                    self.panicked.store(true, SeqCst);
                }
                self.done.fetch_add(1, SeqCst);
            }
        }
    }

    struct Pool {
        /// One caller at a time.
        submit: Mutex<()>,
        /// The current job (null between jobs); its lifetime is the caller's `run`.
        job: AtomicPtr<Job<'static>>,
        /// Bumped for every job, so that spinning and parked workers see a new one.
        generation: AtomicUsize,
        /// Workers that have loaded (or may be about to load) `job`.
        active: AtomicUsize,
        /// Workers parked on `wake`.
        parked: AtomicUsize,
        sleep: Mutex<()>,
        wake: Condvar,
    }

    /// The pool, started on first use with one worker fewer than Rayon's thread count (the
    /// caller is the other); None on a single thread.
    fn pool() -> Option<&'static Pool> {
        static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
        *POOL.get_or_init(|| {
            let workers = rayon::current_num_threads().saturating_sub(1);
            if workers == 0 {
                return None;
            }
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                submit: Mutex::new(()),
                job: AtomicPtr::new(std::ptr::null_mut()),
                generation: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                parked: AtomicUsize::new(0),
                sleep: Mutex::new(()),
                wake: Condvar::new(),
            }));
            for i in 0..workers {
                let spawned = std::thread::Builder::new()
                    .name(format!("ets-kernel-{i}"))
                    .spawn(move || pool.worker());
                if spawned.is_err() {
                    // No worker could start: products run on their callers' threads.
                    return (i > 0).then_some(pool);
                }
            }
            Some(pool)
        })
    }

    /// Runs `task(i)` for every i < pieces on the caller's thread and the workers; returns when
    /// all have run. A task's panic is raised again here.
    pub(super) fn run(pieces: usize, task: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            task,
            pieces,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        // Busy (another caller, or a product inside a product) or no workers: run here.
        let guard = pool().and_then(|p| p.submit.try_lock().ok().map(|g| (p, g)));
        let Some((pool, _guard)) = guard else {
            job.work();
            return finish(&job);
        };
        // The workers see the job through a pointer whose lifetime is erased; it is cleared,
        // and every worker that could have loaded it has left, before `job` goes out of scope.
        pool.job
            .store((&job as *const Job<'_>).cast_mut().cast(), SeqCst);
        pool.generation.fetch_add(1, SeqCst);
        if pool.parked.load(SeqCst) > 0 {
            let _sleep = pool.sleep.lock().unwrap_or_else(|e| e.into_inner());
            pool.wake.notify_all();
        }
        job.work();
        while job.done.load(SeqCst) < pieces {
            std::hint::spin_loop();
        }
        pool.job.store(std::ptr::null_mut(), SeqCst);
        while pool.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        finish(&job);
    }

    fn finish(job: &Job<'_>) {
        if job.panicked.load(SeqCst) {
            resume_unwind(Box::new("a kernel task panicked"));
        }
    }

    impl Pool {
        fn worker(&self) {
            let mut seen = self.generation.load(SeqCst);
            loop {
                seen = self.next_generation(seen);
                self.active.fetch_add(1, SeqCst);
                let job = self.job.load(SeqCst);
                if !job.is_null() {
                    // SAFETY: a non-null job stays alive until `active` is back to zero (the
                    // caller clears `job`, then waits for `active`), and we counted ourselves
                    // in before loading it.
                    unsafe { (*job).work() };
                }
                self.active.fetch_sub(1, SeqCst);
            }
        }

        /// Waits for a generation after `seen`: spinning for [`SPIN`], then parked.
        fn next_generation(&self, seen: usize) -> usize {
            let start = Instant::now();
            let mut spins = 0u32;
            loop {
                let g = self.generation.load(SeqCst);
                if g != seen {
                    return g;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(256) {
                    if start.elapsed() > SPIN {
                        break;
                    }
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
            }
            let mut sleep = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.parked.fetch_add(1, SeqCst);
            let g = loop {
                let g = self.generation.load(SeqCst);
                if g != seen {
                    break g;
                }
                sleep = self.wake.wait(sleep).unwrap_or_else(|e| e.into_inner());
            };
            self.parked.fetch_sub(1, SeqCst);
            g
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_runs_once_with_its_own_range() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (1000, 7), (64, 64)] {
            for parallel in [false, true] {
                let mut out = vec![0.0f32; len];
                for_each_chunk_mut(&mut out, chunk, parallel, |i, piece| {
                    for (j, v) in piece.iter_mut().enumerate() {
                        *v += (i * chunk + j) as f32;
                    }
                });
                let want: Vec<f32> = (0..len).map(|i| i as f32).collect();
                assert_eq!(out, want, "len {len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn every_column_block_writes_its_own_columns_of_every_row() {
        for (rows, row_len, block) in [(3, 10, 4), (1, 7, 7), (5, 12, 1), (2, 5, 9)] {
            for parallel in [false, true] {
                let mut out = vec![-1.0f32; rows * row_len];
                for_each_column_block(&mut out, row_len, block, parallel, |piece, mut cols| {
                    for r in 0..rows {
                        for (c, v) in cols.row(r).iter_mut().enumerate() {
                            assert_eq!(*v, -1.0, "written twice");
                            *v = (r * row_len + piece * block + c) as f32;
                        }
                    }
                });
                let want: Vec<f32> = (0..rows * row_len).map(|i| i as f32).collect();
                assert_eq!(out, want, "{rows} x {row_len} in blocks of {block}");
            }
        }
    }

    #[test]
    fn concurrent_and_nested_callers_all_finish() {
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for _ in 0..200 {
                        let mut out = vec![0.0f32; 96];
                        for_each_chunk_mut(&mut out, 8, true, |i, piece| {
                            let mut inner = vec![0.0f32; 16];
                            for_each_chunk_mut(&mut inner, 4, true, |_, p| p.fill(1.0));
                            piece.fill(inner.iter().sum::<f32>() + i as f32 + t as f32);
                        });
                        for (i, v) in out.iter().enumerate() {
                            assert_eq!(*v, 16.0 + (i / 8) as f32 + t as f32);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_task_is_raised_on_the_caller() {
        let result = std::panic::catch_unwind(|| {
            let mut out = vec![0.0f32; 64];
            for_each_chunk_mut(&mut out, 4, true, |i, _| assert!(i != 5, "piece 5"));
        });
        assert!(result.is_err());
        // The pool still works afterwards.
        let mut out = vec![0.0f32; 64];
        for_each_chunk_mut(&mut out, 4, true, |_, p| p.fill(2.0));
        assert!(out.iter().all(|v| *v == 2.0));
    }
}
