//! Sampling on each backend against the host reference, [`SamplingParams::take`]: by tensor
//! ops everywhere and by the fused kernel on wgpu, the same tokens, drawn or forced, and the
//! same statistics within f32 rounding, for greedy, temperature, top-k, top-p and both cuts
//! together. `take` itself runs the kernel on wgpu and the host reference on the CPU backend
//! (the same answer exactly there).

mod common;

use burn::prelude::*;
use pollster::block_on;

use ets_engine::SamplingParams;
use ets_engine::backend::cpu_device;
use ets_engine::decode::device_sampling::DeviceLogits;
use ets_engine::decode::logits::{HostLogits, Logits};
use ets_engine::rng::CounterRng;
use ets_engine::sampling::{Picked, RowPick};

/// Rows of pseudo-random logits with a few exact ties, a peaked row and a row of nine levels
/// (ties at every cut).
fn rows(rows: usize, vocab: usize) -> Vec<f32> {
    let rng = CounterRng { seed: 11 };
    let mut v: Vec<f32> = (0..rows * vocab)
        .map(|i| (rng.uniform(0, i as u64) * 8.0 - 4.0) as f32)
        .collect();
    v[3] = v[5];
    v[vocab..2 * vocab].iter_mut().for_each(|x| *x *= 6.0);
    v[2 * vocab..3 * vocab]
        .iter_mut()
        .for_each(|x| *x = x.round());
    v
}

/// The device paths on `device` agree with the host reference row by row: the same tokens
/// (drawn and forced) and statistics within f32 rounding; a vocabulary smaller and one not a
/// multiple of the kernel's 256 units.
fn agrees_with_host(device: &Device) {
    for (n, vocab) in [(6, 1000), (4, 4099)] {
        agrees_on(device, n, vocab);
    }
}

fn agrees_on(device: &Device, n: usize, vocab: usize) {
    let values = rows(n, vocab);
    let host = HostLogits {
        values: values.clone(),
        vocab,
    };
    let on_device = DeviceLogits(Tensor::from_data(
        TensorData::new(values, [n, vocab]),
        device,
    ));
    let rng = CounterRng { seed: 3 };
    let settings = [
        SamplingParams::greedy(),
        SamplingParams::default(),
        SamplingParams {
            temperature: 0.7,
            top_k: Some(20),
            top_p: None,
        },
        SamplingParams {
            temperature: 1.3,
            top_k: None,
            top_p: Some(0.8),
        },
        SamplingParams {
            temperature: 0.9,
            top_k: Some(50),
            top_p: Some(0.5),
        },
    ];
    for (s, sampling) in settings.iter().enumerate() {
        for round in 0..4u64 {
            let picks: Vec<RowPick> = (0..n)
                .map(|r| match (r + round as usize) % 3 {
                    0 => RowPick::Forced(((r * 37 + s) % vocab) as u32),
                    _ => RowPick::Draw(rng.uniform(s as u64, round * 100 + r as u64)),
                })
                .collect();
            let expected = block_on(host.take(&picks, sampling)).unwrap();
            let by_ops = block_on(on_device.take_by_tensor_ops(&picks, sampling)).unwrap();
            let by_kernel = block_on(on_device.take_by_kernel(&picks, sampling)).unwrap();
            let taken = block_on(on_device.take(&picks, sampling)).unwrap();
            if on_device.0.device() == cpu_device() {
                assert!(by_kernel.is_none(), "no kernel on the CPU backend");
                assert_eq!(
                    taken, expected,
                    "{sampling:?}: the CPU backend takes on the host"
                );
            } else {
                let by_kernel = by_kernel.expect("the kernel runs on wgpu");
                assert_eq!(taken, by_kernel, "{sampling:?}: wgpu takes by the kernel");
                agree(&expected, &by_kernel, &picks, sampling);
            }
            agree(&expected, &by_ops, &picks, sampling);
        }
    }
    // The top tokens in order; among equal logits (the nine-level row) any order will do.
    let expected = block_on(host.top_log_probs(4)).unwrap();
    let got = block_on(on_device.top_log_probs(4)).unwrap();
    for (r, (e, g)) in expected.iter().zip(&got).enumerate() {
        for ((et, elp), (gt, glp)) in e.iter().zip(g) {
            let row = host.row(r);
            assert_eq!(
                row[*et as usize], row[*gt as usize],
                "row {r}: {e:?} vs {g:?}"
            );
            assert!((elp - glp).abs() < 1e-4);
        }
    }
}

/// `got` takes the tokens `expected` takes, with the same statistics within f32 rounding.
fn agree(expected: &[Picked], got: &[Picked], picks: &[RowPick], sampling: &SamplingParams) {
    assert_eq!(expected.len(), got.len());
    for (r, (e, g)) in expected.iter().zip(got).enumerate() {
        let at = format!("{sampling:?} row {r} {:?}", picks[r]);
        assert_eq!(e.token, g.token, "{at}");
        let close = |a: f64, b: f64| (a == b) || (a - b).abs() <= 2e-4 * (1.0 + a.abs());
        let (e, g) = (e.stats, g.stats);
        assert!(close(e.log_prob, g.log_prob), "{at}: {e:?} vs {g:?}");
        assert!(
            close(e.sampling_log_prob, g.sampling_log_prob),
            "{at}: {e:?} vs {g:?}"
        );
        assert!(close(e.entropy, g.entropy), "{at}: {e:?} vs {g:?}");
        assert!(
            close(e.self_certainty, g.self_certainty),
            "{at}: {e:?} vs {g:?}"
        );
    }
}

#[test]
fn device_sampling_cpu() {
    agrees_with_host(&common::cpu().device);
}

#[test]
fn device_sampling_wgpu() {
    if let Some(backend) = common::wgpu() {
        agrees_with_host(&backend.device);
    }
}
