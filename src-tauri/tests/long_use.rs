//! Long use of the desktop app's engine thread: 50 ETS runs in a row, as the UI sends them, hold
//! no more host memory than the first did (at most 10% more). Each run's `Finished` response
//! carries the process's resident memory (what the UI's run line shows); the test prints the
//! figures (docs/reliability.md quotes them). Its own test binary, so no other test shares the
//! process.

mod common;

use std::path::Path;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use ets_desktop::engine::{Desktop, Engine};
use ets_desktop::storage::ModelStore;
use ets_engine::backend::BackendKind;
use ets_engine::reward::RewardKind;
use ets_engine::strategy::EtsParams;
use ets_protocol::models::ModelSource;
use ets_protocol::{Request, Response};

const RUNS: u64 = 50;

/// The next response that `wanted` accepts (others are skipped); a failure is the test's.
fn next<T>(responses: &Receiver<Response>, mut wanted: impl FnMut(Response) -> Option<T>) -> T {
    loop {
        let response = responses
            .recv_timeout(Duration::from_secs(120))
            .expect("the engine answers within two minutes");
        if let Response::Failed { message, .. } = &response {
            panic!("the engine failed: {message}");
        }
        if let Some(found) = wanted(response) {
            return found;
        }
    }
}

/// Run `run`: ETS as the app runs it by default (K = 1, blocks of 16, rollouts recycled, T = 1,
/// the judge's reward) but with M = 4, seeded by the run's number.
fn solve(run: u64) -> Request {
    let params = EtsParams {
        m: 4,
        k: 1,
        block: 16,
        recycle: true,
        ..EtsParams::default()
    };
    let reward = RewardKind::Likelihood {
        name: "ref-judge".into(),
    };
    common::ets_run(run, params, reward)
}

#[test]
fn fifty_runs_in_a_row_hold_steady_memory() {
    let cache = tempfile::tempdir().unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let store = ModelStore::new(bundled, cache.path().to_path_buf());
    let (sender, responses) = channel();
    let engine = Engine::start(Desktop::new(store, Some(BackendKind::Cpu)), move |r| {
        let _ = sender.send(r);
    })
    .unwrap();
    engine
        .send(Request::Init {
            prefer_gpu: false,
            max_buffer_bytes: None,
        })
        .unwrap();
    next(&responses, |r| {
        matches!(r, Response::Ready(_)).then_some(())
    });
    for id in ["ref-ar", "ref-judge"] {
        let (id, source) = (id.to_string(), ModelSource::Bundled);
        engine.send(Request::Load { id, source }).unwrap();
        next(&responses, |r| {
            matches!(r, Response::Loaded(_)).then_some(())
        });
    }

    let started = Instant::now();
    let mut readings = Vec::new();
    let mut answered = 0;
    for run in 1..=RUNS {
        engine.send(solve(run)).unwrap();
        let (answer, memory) = next(&responses, |r| match r {
            Response::Finished {
                run: done,
                answer,
                memory,
            } if done == run => Some((answer, memory)),
            _ => None,
        });
        answered += usize::from(answer.is_some());
        readings.push(
            memory
                .host_bytes
                .expect("Linux reports the resident memory"),
        );
    }
    let (first, last) = (readings[0], readings[readings.len() - 1]);
    let (at, largest) = readings
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(_, bytes)| bytes)
        .unwrap();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let report = format!(
        "{RUNS} ETS runs (M = 4, the judge's reward) in {:.1} s, {answered} with an answer; host RSS \
         {:.1} MiB after the first, at most {:.1} MiB (after run {}), {:.1} MiB after the last, {:+.1}%",
        started.elapsed().as_secs_f64(),
        mib(first),
        mib(largest),
        at + 1,
        mib(last),
        100.0 * (largest as f64 / first as f64 - 1.0)
    );
    eprintln!("desktop engine thread: {report}");
    assert!(largest as f64 <= first as f64 * 1.10, "{report}");
}
