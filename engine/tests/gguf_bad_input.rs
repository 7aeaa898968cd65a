//! Damaged GGUF files: thousands of mutations of a valid file (random byte flips in the header,
//! metadata and tensor infos; every field position set to extreme lengths and counts;
//! truncation at every byte) each either load or fail with a GGUF error — never a panic, an
//! abort (a huge allocation) or a hang.

use std::time::Instant;

use ets_engine::Error;
use ets_engine::model::gguf::{Array, GgufFile, Value, write};
use ets_engine::quant::{SUPPORTED, TensorType, dequantize};
use ets_engine::rng::CounterRng;
use ets_fuzz::{CappedAlloc, Outcome, cases, mutate_bytes, run, seed};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// A file shaped like a real model's: tokenizer arrays, hyperparameters, a chat template, and
/// a tensor of every supported type.
fn valid_file() -> Vec<u8> {
    let tokens: Vec<String> = (0..40).map(|i| format!("tok{i}")).collect();
    let merges: Vec<String> = (0..20).map(|i| format!("t ok{i}")).collect();
    let data: Vec<(String, Vec<usize>, TensorType, Vec<u8>)> = SUPPORTED
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let dims = vec![t.block_len().max(4), 2];
            let bytes = t.bytes_of(dims[0] * dims[1]).unwrap();
            let data = (0..bytes).map(|b| (b * 7 + i) as u8).collect();
            (format!("blk.{i}.w"), dims, *t, data)
        })
        .collect();
    let tensors: Vec<(&str, &[usize], TensorType, &[u8])> = data
        .iter()
        .map(|(n, d, t, b)| (n.as_str(), d.as_slice(), *t, b.as_slice()))
        .collect();
    write(
        &[
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(2)),
            ("llama.rope.freq_base", Value::F32(100_000.0)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
            ("tokenizer.ggml.merges", Value::Array(Array::String(merges))),
            (
                "tokenizer.ggml.token_type",
                Value::Array(Array::I32(vec![1; 40])),
            ),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            (
                "tokenizer.chat_template",
                Value::String("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
            ),
        ],
        &tensors,
        32,
    )
}

/// Parses `bytes`; a file that loads must also dequantize every tensor.
fn load_or_refuse(bytes: &[u8]) -> bool {
    match GgufFile::parse("mutant.gguf", bytes) {
        Ok(file) => {
            for t in &file.tensors {
                let mut out = vec![0.0; t.elements()];
                dequantize(t.tensor_type, &bytes[t.range.clone()], &mut out).unwrap();
            }
            true
        }
        Err(Error::Gguf { file, problem }) => {
            assert_eq!(file, "mutant.gguf");
            assert!(!problem.to_string().is_empty());
            false
        }
        Err(other) => panic!("not a GGUF error: {other}"),
    }
}

/// Where the tensor data begins (everything before it is header, metadata and tensor infos).
fn data_start(bytes: &[u8]) -> usize {
    let file = GgufFile::parse("valid.gguf", bytes).unwrap();
    file.tensors.iter().map(|t| t.range.start).min().unwrap()
}

#[test]
fn the_valid_file_loads() {
    assert!(load_or_refuse(&valid_file()));
}

#[test]
fn truncation_at_every_byte_is_refused() {
    let bytes = valid_file();
    for len in 0..bytes.len() {
        assert!(!load_or_refuse(&bytes[..len]), "cut at {len} loaded");
    }
    eprintln!("{} truncations", bytes.len());
}

#[test]
fn random_byte_flips_load_or_fail_cleanly() {
    let bytes = valid_file();
    let header = data_start(&bytes);
    let rng = CounterRng { seed: 18 };
    let start = Instant::now();
    let (mut loaded, mut refused) = (0, 0);
    for case in 0..4000u64 {
        let mut mutant = bytes.clone();
        let flips = 1 + (rng.uniform(case, 0) * 4.0) as u64;
        for f in 0..flips {
            let at = (rng.uniform(case, 1 + 2 * f) * header as f64) as usize;
            let bit = (rng.uniform(case, 2 + 2 * f) * 8.0) as u32;
            mutant[at] ^= 1 << bit;
        }
        if load_or_refuse(&mutant) {
            loaded += 1;
        } else {
            refused += 1;
        }
    }
    // Both outcomes occur (flips inside string contents still load).
    assert!(
        loaded > 0 && refused > 0,
        "{loaded} loaded, {refused} refused"
    );
    assert!(
        start.elapsed().as_secs() < 60,
        "too slow: {:?}",
        start.elapsed()
    );
}

#[test]
fn extreme_lengths_and_counts_anywhere_in_the_header_fail_cleanly() {
    let bytes = valid_file();
    let header = data_start(&bytes);
    let len = bytes.len() as u64;
    let extremes = [
        0,
        1,
        0xFF,
        u64::from(u32::MAX),
        1 << 62,
        u64::MAX,
        len,
        len + 1,
    ];
    let mut cases = 0;
    for at in 0..header {
        for v in extremes {
            let mut wide = bytes.clone();
            let end = (at + 8).min(header);
            wide[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            load_or_refuse(&wide);
            let mut narrow = bytes.clone();
            let end = (at + 4).min(header);
            narrow[at..end].copy_from_slice(&(v as u32).to_le_bytes()[..end - at]);
            load_or_refuse(&narrow);
            cases += 2;
        }
    }
    eprintln!("{cases} files with extreme fields over {header} header bytes");
    assert!(cases > 10_000, "{cases} cases");
}

/// The fuzzer's byte edits (extreme integers over any field, cuts, repeats, insertions) of
/// the valid file: each loads (and dequantizes) or fails with a GGUF error; no case panics,
/// hangs or allocates more than 64 MiB at once (the file is 4 kB). `ETS_FUZZ_CASES=N` runs more.
#[test]
fn fuzzed_files_load_or_fail_cleanly() {
    let bytes = valid_file();
    let report = run(
        "gguf",
        cases(5000),
        seed(7),
        64 << 20,
        |rng| mutate_bytes(rng, &bytes),
        |mutant| match load_or_refuse(mutant) {
            true => Outcome::Accepted,
            false => Outcome::Refused,
        },
    );
    eprintln!("{report}");
    assert!(report.findings.is_empty(), "{report}");
    assert!(report.accepted > 0 && report.refused > 0, "{report}");
}
