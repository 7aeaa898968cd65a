//! Version 2 of the link format: the run's settings as the command line names them (strategy,
//! budget, ETS's parameters, sampling, the token budget, the diffusion schedule, reward,
//! extraction, seed), not the engine's spec struct, so the engine's types can change while
//! links keep their meaning; the trace is the engine's documented event stream.

use ets_spec::answer::Extraction;
use ets_spec::diffusion::{DiffusionSchedule, Remasking};
use ets_spec::reward::RewardKind;
use ets_spec::sampling::SamplingParams;
use ets_spec::strategy::{EtsParams, SolveSpec, Strategy};
use ets_spec::trace::TraceEvent;
use serde::{Deserialize, Serialize};

use super::{ShareError, SharedRun, refuse_invalid};

/// A link's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub version: u32,
    pub model: String,
    pub draft: Option<String>,
    pub question: String,
    /// The system message (version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub spec: LinkSpec,
    pub trace: Vec<TraceEvent>,
}

/// A run's settings, by the command line's names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// sample, greedy, best-of-n, majority, beam, ets or ets-is.
    pub strategy: String,
    /// M (ets, ets-is), N (best-of-n, majority) or beams (beam); absent for sample and greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<usize>,
    /// ETS's other parameters (ets, ets-is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ets: Option<LinkEts>,
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub max_tokens: usize,
    pub diffusion: LinkDiffusion,
    /// As `--reward` takes it (`format:REGEX` for a format check).
    pub reward: String,
    /// strict or flexible.
    pub extraction: String,
    pub seed: u64,
}

/// ETS's parameters besides M.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkEts {
    pub k: usize,
    pub block: usize,
    pub lambda: f64,
    pub recycle: bool,
    /// ETS-IS's log-weight clip; absent: none.
    pub clip: Option<f64>,
}

/// The masked-diffusion schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkDiffusion {
    pub gen_length: usize,
    pub block_length: usize,
    pub steps: usize,
    /// low-confidence or random.
    pub remasking: String,
}

impl Link {
    /// `run` in this format, labelled `version`.
    pub fn of(run: &SharedRun, version: u32) -> Self {
        Self {
            version,
            model: run.model.clone(),
            draft: run.draft.clone(),
            question: run.question.clone(),
            system: run.system.clone(),
            spec: LinkSpec::of(&run.spec),
            trace: run.trace.clone(),
        }
    }

    /// The run it holds; damaged where a field is not a run's setting, refused where a setting
    /// is out of range.
    pub fn into_run(self) -> Result<SharedRun, ShareError> {
        Ok(SharedRun {
            spec: refuse_invalid(self.spec.to_spec().map_err(ShareError::Damaged)?)?,
            model: self.model,
            draft: self.draft,
            question: self.question,
            system: self.system,
            trace: self.trace,
        })
    }
}

impl LinkSpec {
    /// `spec` by the command line's names.
    pub fn of(spec: &SolveSpec) -> Self {
        let s = &spec.sampling;
        let d = &spec.diffusion;
        Self {
            strategy: spec.strategy.name().into(),
            budget: spec.strategy.budget(),
            ets: spec.strategy.ets().map(|p| LinkEts {
                k: p.k,
                block: p.block,
                lambda: p.lambda,
                recycle: p.recycle,
                clip: p.log_weight_clip,
            }),
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            max_tokens: spec.max_tokens,
            diffusion: LinkDiffusion {
                gen_length: d.gen_length,
                block_length: d.block_length,
                steps: d.steps,
                remasking: d.remasking.name().into(),
            },
            reward: spec.reward.name(),
            extraction: spec.extraction.name().into(),
            seed: spec.seed,
        }
    }

    /// The engine's spec, or which name is unknown or which parameter missing (ranges are
    /// checked by the caller).
    pub fn to_spec(&self) -> Result<SolveSpec, String> {
        let named: Strategy = self.strategy.parse().map_err(|e| format!("{e}"))?;
        let strategy = match (named.budget(), self.budget) {
            (Some(_), Some(budget)) => named.with_budget(budget),
            (Some(_), None) => return Err(format!("{} without its budget", self.strategy)),
            (None, _) => named,
        };
        let strategy = match (strategy.ets().copied(), self.ets) {
            (Some(p), Some(ets)) => strategy.with_ets(EtsParams {
                m: p.m,
                k: ets.k,
                block: ets.block,
                lambda: ets.lambda,
                recycle: ets.recycle,
                log_weight_clip: ets.clip,
            }),
            (Some(_), None) => {
                return Err(format!(
                    "{} without its parameters (k, block, λ)",
                    self.strategy
                ));
            }
            (None, _) => strategy,
        };
        let remasking: Remasking = self
            .diffusion
            .remasking
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(SolveSpec {
            strategy,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            max_tokens: self.max_tokens,
            diffusion: DiffusionSchedule {
                gen_length: self.diffusion.gen_length,
                block_length: self.diffusion.block_length,
                steps: self.diffusion.steps,
                remasking,
            },
            reward: self
                .reward
                .parse::<RewardKind>()
                .map_err(|e| format!("{e}"))?,
            extraction: self
                .extraction
                .parse::<Extraction>()
                .map_err(|e| format!("{e}"))?,
            seed: self.seed,
        })
    }
}
