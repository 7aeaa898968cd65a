//! Structure-aware mutation fuzzing on stable Rust, for every parser of untrusted bytes.
//!
//! A campaign ([`run`]) feeds a target mutants of valid inputs: byte edits ([`mutate_bytes`]:
//! flipped bits, extreme integers written over length and count fields, cuts, repeats) and,
//! for JSON, edits of the parsed tree that keep it well formed ([`mutate_json`]: numbers set to
//! extremes, values of the wrong type, keys dropped, deep nesting), so that the cases reach past
//! the syntax check. Each case runs on its own thread under a time limit; a panic, a case over
//! the limit, or (with [`CappedAlloc`] as the test binary's allocator) one allocation larger
//! than the cap is a finding, its input saved under `$TMPDIR/ets-fuzz/`. CI runs a bounded
//! number of cases; `ETS_FUZZ_CASES=N` runs more on demand, `ETS_FUZZ_SEED` another sequence.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Once, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// SplitMix64: a small seedable generator, so that a case is reproduced from its number.
pub struct Rng(u64);

impl Rng {
    /// The generator for case `case` of a campaign seeded with `seed`.
    pub fn for_case(seed: u64, case: u64) -> Self {
        Self(seed ^ case.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Integers that break length, count and offset fields.
pub const EXTREMES: [u64; 14] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// One to four byte-level edits of `seed`: a bit flipped, a byte set, an extreme integer
/// written as 4 or 8 little-endian bytes, a cut, a range deleted or repeated, random bytes
/// inserted.
pub fn mutate_bytes(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                bytes[at] = *rng.pick(&[0, 1, 0x7F, 0x80, 0xFF, b'"', b'{', b'\\']);
            }
            2 if len > 0 => {
                let value = rng.pick(&EXTREMES).to_le_bytes();
                let width = if rng.chance(0.5) { 4 } else { 8 };
                let at = rng.below(len);
                let end = (at + width).min(len);
                bytes[at..end].copy_from_slice(&value[..end - at]);
            }
            3 => bytes.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                bytes.drain(at..end);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let copy = bytes[at..end].to_vec();
                let to = rng.below(len + 1);
                bytes.splice(to..to, copy);
            }
            _ => {
                let to = rng.below(len + 1);
                let extra: Vec<u8> = (0..1 + rng.below(16))
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                bytes.splice(to..to, extra);
            }
        }
    }
    bytes
}

/// Numbers that break sizes, counts, ids and probabilities read from JSON.
const JSON_NUMBERS: [f64; 12] = [
    -1.0,
    0.0,
    0.5,
    1.0,
    3.0,
    65_537.0,
    1e9,
    4_294_967_296.0,
    9_007_199_254_740_993.0,
    1e19,
    1e300,
    -1e300,
];

/// One to three edits of a JSON tree at random nodes, the result still well-formed JSON: a
/// number set to an extreme, a value replaced by one of another type, a key removed, an array
/// element dropped or repeated, a string emptied or lengthened, a value nested deeply.
pub fn mutate_json(rng: &mut Rng, seed: &Value) -> Value {
    let mut tree = seed.clone();
    for _ in 0..1 + rng.below(3) {
        let count = count_nodes(&tree);
        let target = rng.below(count);
        let mut seen = 0;
        edit_node(rng, &mut tree, target, &mut seen);
    }
    tree
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Edits the node numbered `target` in pre-order; returns true once it is done.
fn edit_node(rng: &mut Rng, value: &mut Value, target: usize, seen: &mut usize) -> bool {
    if *seen == target {
        *value = replacement(rng, value);
        return true;
    }
    *seen += 1;
    match value {
        Value::Array(items) => {
            if rng.chance(0.05) && !items.is_empty() {
                let at = rng.below(items.len());
                if rng.chance(0.5) {
                    items.remove(at);
                } else {
                    let copy = items[at].clone();
                    items.insert(at, copy);
                }
            }
            items
                .iter_mut()
                .any(|item| edit_node(rng, item, target, seen))
        }
        Value::Object(map) => {
            if rng.chance(0.05) && !map.is_empty() {
                let key = map.keys().nth(rng.below(map.len())).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            map.values_mut()
                .any(|item| edit_node(rng, item, target, seen))
        }
        _ => false,
    }
}

/// What a node becomes.
fn replacement(rng: &mut Rng, old: &Value) -> Value {
    match (old, rng.below(6)) {
        (Value::Number(_), 0..=2) => serde_json::Number::from_f64(*rng.pick(&JSON_NUMBERS))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        (Value::Number(n), 3) => match n.as_i64() {
            Some(i) => Value::from(i.wrapping_neg().wrapping_sub(1)),
            None => Value::from(u64::MAX),
        },
        (Value::String(s), 0 | 1) => Value::String(match rng.below(4) {
            0 => String::new(),
            1 => s.repeat(1 + rng.below(64)),
            2 => format!("{s}\u{0}\u{FEFF}\u{1F600}"),
            _ => "#### 1e999999".into(),
        }),
        (Value::Array(items), 0) => Value::Array(
            items
                .iter()
                .cycle()
                .take(items.len() * 8)
                .cloned()
                .collect(),
        ),
        (_, 4) => {
            let mut nested = old.clone();
            for _ in 0..rng.below(200) {
                nested = Value::Array(vec![nested]);
            }
            nested
        }
        _ => match rng.below(6) {
            0 => Value::Null,
            1 => Value::Bool(rng.chance(0.5)),
            2 => Value::from(-1),
            3 => Value::String("x".into()),
            4 => Value::Array(Vec::new()),
            _ => Value::Object(Map::new()),
        },
    }
}

/// JSON text that is a mutant of `seed`: mostly a tree edit re-serialized, sometimes byte edits
/// of its text (to reach the syntax errors too).
pub fn mutate_json_text(rng: &mut Rng, seed: &Value) -> Vec<u8> {
    if rng.chance(0.8) {
        serde_json::to_vec(&mutate_json(rng, seed)).unwrap_or_default()
    } else {
        mutate_bytes(rng, &serde_json::to_vec(seed).unwrap_or_default())
    }
}

/// How the target took a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Parsed (and, where the target goes on, used) without error.
    Accepted,
    /// Refused with a typed error.
    Refused,
}

/// A case that failed: a panic, a case over the time limit, or an oversized allocation.
#[derive(Debug)]
pub struct Finding {
    /// The case's number (the mutant is reproduced from it and the seed).
    pub case: u64,
    /// What happened.
    pub what: String,
    /// Where its input was saved.
    pub input: PathBuf,
}

/// What a campaign did.
#[derive(Debug)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// Cases run.
    pub cases: u64,
    /// Cases the target accepted.
    pub accepted: u64,
    /// Cases it refused with an error.
    pub refused: u64,
    /// The slowest case.
    pub slowest: Duration,
    /// The largest single allocation of any case, bytes (0 without [`CappedAlloc`]).
    pub largest_allocation: usize,
    /// The whole campaign's time.
    pub elapsed: Duration,
    /// Failed cases.
    pub findings: Vec<Finding>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fuzz {}: {} cases in {:.1} s ({} accepted, {} refused), slowest {:.1} ms, largest allocation {:.1} MiB, {} findings",
            self.target,
            self.cases,
            self.elapsed.as_secs_f64(),
            self.accepted,
            self.refused,
            self.slowest.as_secs_f64() * 1e3,
            self.largest_allocation as f64 / (1 << 20) as f64,
            self.findings.len()
        )?;
        for finding in &self.findings {
            write!(
                f,
                "\n  case {}: {} (input: {})",
                finding.case,
                finding.what,
                finding.input.display()
            )?;
        }
        Ok(())
    }
}

/// Cases to run: `ETS_FUZZ_CASES` when set (longer runs on demand), else `default`.
pub fn cases(default: u64) -> u64 {
    std::env::var("ETS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The campaign's seed: `ETS_FUZZ_SEED` when set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("ETS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Time a case may take before it counts as a hang.
pub const CASE_LIMIT: Duration = Duration::from_secs(20);

const CASE_THREAD: &str = "ets-fuzz-case";

/// Keeps the panics of case threads off stderr (they are reported as findings); every other
/// thread's panic goes to the hook that was there before.
fn quiet_case_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(CASE_THREAD) {
                previous(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `cases` cases of `target`: case `i` is `make(rng for i)`, given to `check` on its own
/// thread. A case that panics, outlives [`CASE_LIMIT`] or makes an allocation larger than
/// `allocation_cap` bytes is a finding; its input is saved. Before each case the input is also
/// written to `<target>-last.bin`, so that a case that aborts the process is not lost.
pub fn run(
    target: &str,
    cases: u64,
    seed: u64,
    allocation_cap: usize,
    mut make: impl FnMut(&mut Rng) -> Vec<u8>,
    check: impl Fn(&[u8]) -> Outcome + Send + Sync + 'static,
) -> Report {
    quiet_case_panics();
    let dir = std::env::temp_dir().join("ets-fuzz");
    let _ = std::fs::create_dir_all(&dir);
    let last = dir.join(format!("{target}-last.bin"));
    let check = Arc::new(check);
    let started = Instant::now();
    let mut report = Report {
        target: target.to_string(),
        cases: 0,
        accepted: 0,
        refused: 0,
        slowest: Duration::ZERO,
        largest_allocation: 0,
        elapsed: Duration::ZERO,
        findings: Vec::new(),
    };
    for case in 0..cases {
        let input = make(&mut Rng::for_case(seed, case));
        let _ = std::fs::write(&last, &input);
        let (tx, rx) = mpsc::channel();
        let check = Arc::clone(&check);
        let shared = Arc::new(input);
        let mine = Arc::clone(&shared);
        let begun = Instant::now();
        let spawned = std::thread::Builder::new()
            .name(CASE_THREAD.into())
            .spawn(move || {
                LARGEST.with(|l| l.set(0));
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mine)));
                let largest = LARGEST.with(Cell::get);
                let _ = tx.send((outcome.map_err(|p| panic_message(&*p)), largest));
            });
        if let Err(e) = spawned {
            report.findings.push(finding(
                &dir,
                target,
                case,
                format!("no thread for the case: {e}"),
                &shared,
            ));
            break;
        }
        report.cases += 1;
        let failure = match rx.recv_timeout(CASE_LIMIT) {
            Ok((result, largest)) => {
                report.largest_allocation = report.largest_allocation.max(largest);
                match result {
                    Ok(Outcome::Accepted) => report.accepted += 1,
                    Ok(Outcome::Refused) => report.refused += 1,
                    Err(_) => {}
                }
                match result {
                    Err(message) => Some(format!("panicked: {message}")),
                    Ok(_) if largest > allocation_cap => Some(format!(
                        "allocated {largest} bytes at once for a {}-byte input",
                        shared.len()
                    )),
                    Ok(_) => None,
                }
            }
            Err(_) => Some(format!("still running after {} s", CASE_LIMIT.as_secs())),
        };
        report.slowest = report.slowest.max(begun.elapsed());
        if let Some(what) = failure {
            let hung = what.starts_with("still running");
            report
                .findings
                .push(finding(&dir, target, case, what, &shared));
            if hung {
                break; // its thread cannot be stopped; the campaign ends here
            }
        }
    }
    let _ = std::fs::remove_file(&last);
    report.elapsed = started.elapsed();
    report
}

fn finding(dir: &std::path::Path, target: &str, case: u64, what: String, input: &[u8]) -> Finding {
    let path = dir.join(format!("{target}-case-{case}.bin"));
    let _ = std::fs::write(&path, input);
    Finding {
        case,
        what,
        input: path,
    }
}

thread_local! {
    /// The largest single allocation this thread made since its case began, bytes.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Requests above this fail at once (the process aborts with Rust's allocation-failure message
/// and the case's input stays in `<target>-last.bin`) instead of taking the machine's memory.
pub const HARD_ALLOCATION_LIMIT: usize = 4 << 30;

/// The system allocator, recording each thread's largest single allocation (read by [`run`])
/// and refusing any above [`HARD_ALLOCATION_LIMIT`]. Install it in a fuzz test binary:
/// `#[global_allocator] static ALLOC: ets_fuzz::CappedAlloc = ets_fuzz::CappedAlloc;`.
pub struct CappedAlloc;

impl CappedAlloc {
    fn note(size: usize) -> bool {
        let _ = LARGEST.try_with(|l| {
            if size > l.get() {
                l.set(size);
            }
        });
        size <= HARD_ALLOCATION_LIMIT
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or answered with null (an allocation
// failure, which `GlobalAlloc` allows) for a request above the hard limit.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `alloc` holds unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::note(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::note(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract for `realloc` holds unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_reproducible_and_differ_from_the_seed() {
        let seed = serde_json::json!({"a": [1, 2, {"b": "text"}], "c": 3.5});
        let one = mutate_json(&mut Rng::for_case(7, 3), &seed);
        let again = mutate_json(&mut Rng::for_case(7, 3), &seed);
        assert_eq!(one, again);
        let changed = (0..50)
            .filter(|&c| mutate_json(&mut Rng::for_case(7, c), &seed) != seed)
            .count();
        assert!(changed > 40, "{changed} of 50 mutants changed");
        let bytes = b"0123456789abcdef".to_vec();
        let changed = (0..50)
            .filter(|&c| mutate_bytes(&mut Rng::for_case(1, c), &bytes) != bytes)
            .count();
        assert!(changed > 40, "{changed} of 50 mutants changed");
    }

    #[test]
    fn a_panicking_target_is_a_finding_and_the_others_are_counted() {
        let report = run(
            "selftest",
            20,
            1,
            usize::MAX,
            |rng| vec![rng.below(4) as u8],
            |input| match input[0] {
                0 => panic!("zero"),
                1 => Outcome::Refused,
                _ => Outcome::Accepted,
            },
        );
        assert_eq!(report.cases, 20);
        let panics = report.findings.len() as u64;
        assert!(
            panics > 0 && report.accepted > 0 && report.refused > 0,
            "{report}"
        );
        assert_eq!(panics + report.accepted + report.refused, 20, "{report}");
        assert!(report.findings[0].what.contains("zero"), "{report}");
        assert!(report.findings[0].input.exists());
    }
}
