//! A GPU lost during a run, natively: the desktop engine thread runs ETS on wgpu (lavapipe in
//! CI), the test destroys the wgpu device mid-run (as a driver reset or a removed GPU would), and
//! the run ends with a message saying so; the engine moves to the CPU (a second `Ready`, with a
//! notice), reloads the model, and the next run answers. Its own test binary: the device it
//! destroys is the process's.

mod common;

use std::path::Path;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use ets_desktop::engine::{Desktop, Engine};
use ets_desktop::storage::ModelStore;
use ets_engine::backend::{BackendKind, lose_device, wgpu_device};
use ets_engine::reward::RewardKind;
use ets_engine::strategy::EtsParams;
use ets_protocol::models::ModelSource;
use ets_protocol::{Request, Response};

/// The next response (two minutes at most).
fn next(responses: &Receiver<Response>) -> Response {
    responses
        .recv_timeout(Duration::from_secs(120))
        .expect("the engine answers within two minutes")
}

/// Run `run` of ref-ar: ETS with `m` candidates, K = 2, blocks of 16, self-consistency.
fn solve(run: u64, m: usize) -> Request {
    let params = EtsParams {
        m,
        k: 2,
        block: 16,
        ..EtsParams::default()
    };
    common::ets_run(run, params, RewardKind::SelfConsistency)
}

#[test]
fn a_gpu_lost_mid_run_ends_the_run_and_the_engine_goes_on_on_the_cpu() {
    let Ok((gpu, adapter)) = wgpu_device() else {
        // CI installs lavapipe (scripts/setup.sh), so this only skips on a machine without it.
        eprintln!("skipped: no wgpu adapter here");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let store = ModelStore::new(bundled, cache.path().to_path_buf());
    let (sender, responses) = channel();
    let engine = Engine::start(Desktop::new(store, Some(BackendKind::Wgpu)), move |r| {
        let _ = sender.send(r);
    })
    .unwrap();
    engine
        .send(Request::Init {
            prefer_gpu: true,
            max_buffer_bytes: None,
        })
        .unwrap();
    match next(&responses) {
        Response::Ready(info) => assert_eq!(info.kind, "wgpu", "{info:?}"),
        other => panic!("expected Ready, got {other:?}"),
    }
    let load = Request::Load {
        id: "ref-ar".into(),
        source: ModelSource::Bundled,
    };
    engine.send(load).unwrap();
    loop {
        match next(&responses) {
            Response::Loaded(_) => break,
            Response::Failed { message, .. } => panic!("loading ref-ar failed: {message}"),
            _ => {}
        }
    }

    // A run long enough to be lost in the middle: the device goes once its first step is traced.
    engine.send(solve(1, 16)).unwrap();
    let lost_at = loop {
        match next(&responses) {
            Response::Trace { run: 1, .. } => {
                assert!(lose_device(&gpu), "the engine's device is {adapter}'s");
                break Instant::now();
            }
            Response::Finished { .. } => panic!("the run ended before its first trace event"),
            Response::Failed { message, .. } => panic!("the run failed early: {message}"),
            _ => {}
        }
    };
    let message = loop {
        match next(&responses) {
            Response::Failed {
                run: Some(1),
                message,
            } => break message,
            Response::Finished { run: 1, .. } => panic!("the run finished on a lost GPU"),
            Response::Trace { .. } => {}
            other => panic!("expected the run to fail, got {other:?}"),
        }
    };
    let failed_after = lost_at.elapsed();
    assert!(message.contains("GPU was lost"), "{message}");

    // The engine moved to the CPU and reloads the model.
    match next(&responses) {
        Response::Ready(info) => {
            assert_eq!(info.kind, "cpu", "{info:?}");
            let notice = info.notice.unwrap_or_default();
            assert!(notice.contains("GPU was lost"), "{notice}");
        }
        other => panic!("expected Ready on the CPU, got {other:?}"),
    }
    loop {
        match next(&responses) {
            Response::Loaded(info) => {
                assert_eq!(info.id, "ref-ar");
                break;
            }
            Response::Progress { .. } => {}
            other => panic!("expected ref-ar to reload, got {other:?}"),
        }
    }
    let reloaded_after = lost_at.elapsed();

    // The next run answers, on the CPU.
    engine.send(solve(2, 2)).unwrap();
    let (answer, memory) = loop {
        match next(&responses) {
            Response::Finished {
                run: 2,
                answer,
                memory,
            } => break (answer, memory),
            Response::Failed { message, .. } => panic!("the run after the loss failed: {message}"),
            _ => {}
        }
    };
    assert!(answer.is_some(), "the run on the CPU gave no answer");
    assert_eq!(memory.device_bytes, None, "the run used no GPU");
    eprintln!(
        "GPU lost mid-run: the run failed {:.0} ms after the loss (\"{message}\"), the model was \
         reloaded on the CPU {:.0} ms after it, and the next run answered {:?}",
        failed_after.as_secs_f64() * 1e3,
        reloaded_after.as_secs_f64() * 1e3,
        answer.unwrap_or_default(),
    );
}
