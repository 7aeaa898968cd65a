//! What the desktop engine's integration tests share: the question they ask and the run request
//! the UI would send for it.

use ets_engine::SamplingParams;
use ets_engine::decode::diffusion::DiffusionSchedule;
use ets_engine::reward::RewardKind;
use ets_engine::strategy::{EtsParams, SolveSpec, Strategy};
use ets_engine::task::answer::Extraction;
use ets_protocol::{Request, SolveRequest};

/// A question of the bundled task (its answer is 18).
pub const QUESTION: &str = "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?";

/// Run `run` of ref-ar on [`QUESTION`]: ETS with `params`, scored by `reward`, at T = 1 (no
/// top-k/top-p), 160 tokens at most, seeded by the run's number.
pub fn ets_run(run: u64, params: EtsParams, reward: RewardKind) -> Request {
    let spec = SolveSpec {
        strategy: Strategy::Ets(params),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        },
        max_tokens: 160,
        diffusion: DiffusionSchedule::default(),
        reward,
        extraction: Extraction::Strict,
        seed: run,
    };
    Request::Solve(Box::new(SolveRequest {
        run,
        model: "ref-ar".into(),
        draft: None,
        question: QUESTION.into(),
        system: None,
        spec: spec.validate().unwrap(),
    }))
}
