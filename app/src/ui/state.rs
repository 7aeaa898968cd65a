//! The UI's state: the user's settings (kept in localStorage), the engine's backend and models,
//! and the runs on screen, each rebuilt from its stream of trace events.

use ets_spec::answer::Extraction;
use ets_spec::diffusion::DiffusionSchedule;
use ets_spec::reward::RewardKind;
use ets_spec::sampling::SamplingParams;
use ets_spec::strategy::{EtsParams, SolveSpec, Strategy, ValidSpec};
use ets_spec::trace::{DraftTrace, StepTrace, TraceEvent};
use gloo_storage::Storage;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use ets_protocol::models::{CachedModel, ModelCheck, bundled_context};
use ets_protocol::{BackendInfo, MemoryReading, ModelInfo, SolveRequest};

/// The reward the app starts with: the bundled judge (docs/results.md, "ref-ar guided by a
/// judge").
pub const JUDGE_REWARD: &str = "lm:ref-judge";

/// The rewards the UI suggests (any reward `--reward` takes can be typed, e.g. `format:REGEX`).
pub const REWARDS: [(&str, &str); 6] = [
    (
        JUDGE_REWARD,
        "the bundled judge (ref-judge, knows the arithmetic task only): the lowest log-probability it gives any token of the response",
    ),
    (
        "self-consistency",
        "1 when the answer agrees with the majority of answers seen so far",
    ),
    (
        "self-certainty",
        "the model's confidence: mean KL(uniform ‖ p) per token",
    ),
    ("neg-entropy", "minus the mean entropy per token"),
    ("mean-log-prob", "the mean log-probability per token"),
    (
        "format:#### \\d+",
        "1 when the text matches the regular expression after `format:`",
    ),
];

/// What the user chose, kept across visits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: String,
    /// The ETS-IS draft model.
    pub draft: String,
    pub strategy: String,
    pub m: usize,
    pub k: usize,
    pub block: usize,
    pub lambda: f64,
    pub temperature: f32,
    /// Sample among the k most likely tokens only; 0: all.
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to p only; 1: all.
    pub top_p: f32,
    /// ETS: reuse the chosen candidate's rollouts as the next step's candidates.
    pub recycle: bool,
    /// ETS-IS: clip log p_ref/q to [−clip, clip]; 0: no clipping.
    pub clip: f64,
    pub reward: String,
    /// How answers are read: strict or flexible.
    pub extraction: String,
    pub seed: u64,
    pub max_tokens: usize,
    /// Masked diffusion models: the sampler's schedule (answer tokens, block, steps, remasking).
    pub gen_length: usize,
    pub block_length: usize,
    pub diffusion_steps: usize,
    pub remasking: String,
    /// Run plain sampling beside the chosen strategy.
    pub compare: bool,
    pub question: String,
    /// The system message for models with a chat template; empty: none (the template's own
    /// default, if it has one).
    pub system: String,
    /// Where the browser app is published: the desktop app's share links point there.
    pub web_app_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        let ets = EtsParams::default();
        let schedule = DiffusionSchedule::default();
        Self {
            model: "ref-ar".into(),
            draft: "ref-ar-draft".into(),
            strategy: "ets".into(),
            // The best configuration found for ref-ar with the judge (docs/results.md): as
            // accurate on the validation problems as K = 3 and blocks of 4, at a ninth of the
            // tokens.
            m: ets.m,
            k: 1,
            block: 16,
            lambda: ets.lambda,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            recycle: true,
            clip: ets.log_weight_clip.unwrap_or(0.0),
            // The bundled judge: the best reward found for the bundled model
            // (docs/results.md, "A judge for ref-ar").
            reward: JUDGE_REWARD.into(),
            extraction: Extraction::Strict.name().into(),
            seed: 0,
            max_tokens: 160,
            gen_length: schedule.gen_length,
            block_length: schedule.block_length,
            diffusion_steps: schedule.steps,
            remasking: schedule.remasking.name().into(),
            compare: false,
            system: String::new(),
            question: "Mia has 14 shells. She finds 9 more shells. Then she gives away 5 shells. How many shells does Mia have now?".into(),
            web_app_url: WEB_APP_URL.into(),
        }
    }
}

const SETTINGS_KEY: &str = "ets.settings";

/// The browser app's address that the desktop app's share links use unless the user sets
/// another: `ETS_WEB_APP_URL` at build time, else where `scripts/web.sh serve` serves it.
const WEB_APP_URL: &str = match option_env!("ETS_WEB_APP_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:8080/",
};

impl Settings {
    /// Selects model `id`. The bundled judge knows only the bundled models' task and reads at
    /// most 512 tokens, so a reward by it falls back to self-consistency for any other model.
    /// A bundled draft (ETS-IS) follows the kind of a bundled model: ref-dlm-draft for the
    /// diffusion model, ref-ar-draft for the causal ones.
    pub fn select_model(&mut self, id: String) {
        if self.reward == JUDGE_REWARD && bundled_context(&id).is_none() {
            self.reward = "self-consistency".into();
        }
        if let Some((diffusion, _)) = bundled_context(&id) {
            let drafts = [("ref-ar-draft", false), ("ref-dlm-draft", true)];
            if drafts.iter().any(|(d, _)| *d == self.draft) {
                if let Some((d, _)) = drafts.iter().find(|(_, kind)| *kind == diffusion) {
                    self.draft = d.to_string();
                }
            }
        }
        self.model = id;
    }

    /// The stored settings, or the defaults.
    pub fn load() -> Self {
        gloo_storage::LocalStorage::get(SETTINGS_KEY).unwrap_or_default()
    }

    /// Stores the settings (silently skipped where storage is unavailable).
    pub fn save(&self) {
        let _ = gloo_storage::LocalStorage::set(SETTINGS_KEY, self);
    }

    /// The system message a run sends: none when the field is blank.
    pub fn system_message(&self) -> Option<String> {
        Some(self.system.clone()).filter(|s| !s.trim().is_empty())
    }

    /// The solve spec for `strategy` with these parameters, on a masked diffusion model when
    /// `diffusion`. Recycling is left out where rollouts cannot be recycled: a diffusion
    /// model's, and ETS-IS's (they come from the draft, not the target).
    pub fn spec(&self, strategy: &str, diffusion: bool) -> Result<ValidSpec, String> {
        let ets = EtsParams {
            m: self.m,
            k: self.k,
            block: self.block,
            lambda: self.lambda,
            recycle: self.recycle && !diffusion && strategy != "ets-is",
            log_weight_clip: (self.clip > 0.0).then_some(self.clip),
        };
        let strategy = strategy
            .parse::<Strategy>()
            .map_err(|e| e.to_string())?
            .with_ets(ets)
            .with_budget(self.m);
        SolveSpec {
            strategy,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: (self.top_k > 0).then_some(self.top_k),
                top_p: (self.top_p < 1.0).then_some(self.top_p),
            },
            max_tokens: self.max_tokens,
            diffusion: DiffusionSchedule {
                gen_length: self.gen_length,
                block_length: self.block_length,
                steps: self.diffusion_steps,
                remasking: self.remasking.parse().map_err(|e| format!("{e}"))?,
            },
            reward: self
                .reward
                .parse::<RewardKind>()
                .map_err(|e| e.to_string())?,
            extraction: self.extraction.parse().map_err(|e| format!("{e}"))?,
            seed: self.seed,
        }
        .validate()
        .map_err(|e| e.to_string())
    }

    /// Settings that reproduce `spec` on `model` (a shared run), its system message included
    /// (none: an empty one).
    pub fn from_run(
        &self,
        model: &str,
        draft: Option<&str>,
        question: &str,
        system: Option<&str>,
        spec: &SolveSpec,
    ) -> Self {
        let d = &spec.diffusion;
        let mut s = Self {
            model: model.to_string(),
            draft: draft.unwrap_or(&self.draft).to_string(),
            strategy: spec.strategy.name().to_string(),
            temperature: spec.sampling.temperature,
            top_k: spec.sampling.top_k.unwrap_or(0),
            top_p: spec.sampling.top_p.unwrap_or(1.0),
            extraction: spec.extraction.name().into(),
            seed: spec.seed,
            max_tokens: spec.max_tokens,
            gen_length: d.gen_length,
            block_length: d.block_length,
            diffusion_steps: d.steps,
            remasking: d.remasking.name().into(),
            question: question.to_string(),
            system: system.unwrap_or_default().to_string(),
            compare: false,
            ..self.clone()
        };
        match &spec.strategy {
            Strategy::Ets(p) | Strategy::EtsIs(p) | Strategy::ParticleFilter(p) => {
                (s.m, s.k, s.block, s.lambda) = (p.m, p.k, p.block, p.lambda);
                s.recycle = p.recycle;
                s.clip = p.log_weight_clip.unwrap_or(0.0);
            }
            Strategy::Majority { n } | Strategy::BestOfN { n } => s.m = *n,
            Strategy::Beam { width } => s.m = *width,
            Strategy::Sample | Strategy::Greedy => {}
        }
        s.reward = spec.reward.name();
        s
    }
}

/// Where a run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    Running,
    /// Ended with its answer; `memory` is what the engine host held then (nothing for a
    /// recorded run).
    Done {
        answer: Option<String>,
        memory: MemoryReading,
    },
    Failed(String),
}

/// A run on screen: what was asked and every event so far.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    pub request: SolveRequest,
    pub events: Vec<TraceEvent>,
    pub status: RunStatus,
    /// Whether it was replayed from a share link rather than computed here.
    pub recorded: bool,
    /// The texts being decoded now, until the next step or the finish (never recorded).
    pub drafts: Option<DraftTrace>,
}

impl RunView {
    /// The guidance steps so far.
    pub fn steps(&self) -> impl Iterator<Item = &StepTrace> {
        self.events.iter().filter_map(|e| match e {
            TraceEvent::Step(s) => Some(s),
            _ => None,
        })
    }

    /// Takes one trace event of the run in: drafts replace the last ones (they are not kept),
    /// any other event is recorded and ends the drafts.
    pub fn record(&mut self, event: TraceEvent) {
        match event {
            TraceEvent::Drafting(drafts) => self.drafts = Some(drafts),
            event => {
                self.drafts = None;
                self.events.push(event);
            }
        }
    }

    /// The response so far: the finish event's text; while a run goes on, ETS's chosen blocks,
    /// and the text being decoded of a strategy that decodes one sequence.
    pub fn text(&self) -> String {
        for e in &self.events {
            if let TraceEvent::Finish(f) = e {
                return f.text.clone();
            }
        }
        let mut text: String = self
            .steps()
            .filter_map(|s| s.candidates.get(s.chosen))
            .map(|c| c.text.as_str())
            .collect();
        if let Some([one]) = self.drafts.as_ref().map(|d| d.texts.as_slice())
            && self.request.spec.strategy.name() != "beam"
        {
            text.push_str(one);
        }
        text
    }

    /// The texts being decoded side by side (a step's candidates, the samples, the beams), while
    /// there are several; None otherwise.
    pub fn drafting(&self) -> Option<&DraftTrace> {
        self.drafts
            .as_ref()
            .filter(|d| d.texts.len() > 1 || self.request.spec.strategy.name() == "beam")
    }

    /// (forward tokens, elapsed ms) so far.
    pub fn progress(&self) -> (u64, f64) {
        if let Some(d) = &self.drafts {
            return (d.tokens, d.elapsed_ms);
        }
        self.events
            .iter()
            .rev()
            .find_map(|e| match e {
                TraceEvent::Step(s) => Some((s.tokens, s.elapsed_ms)),
                TraceEvent::Finish(f) => Some((f.tokens + f.draft_tokens, f.wall_ms)),
                TraceEvent::Drafting(d) => Some((d.tokens, d.elapsed_ms)),
                TraceEvent::Start { .. } => None,
            })
            .unwrap_or((0, 0.0))
    }
}

/// Everything the components share (signals are Copy).
#[derive(Clone, Copy)]
pub struct AppState {
    pub settings: RwSignal<Settings>,
    pub backend: RwSignal<Option<BackendInfo>>,
    pub loaded: RwSignal<Vec<ModelInfo>>,
    pub cache: RwSignal<Vec<CachedModel>>,
    /// The current slow task: (what, done, total).
    pub progress: RwSignal<Option<(String, u64, Option<u64>)>>,
    /// The message of the last failure outside a run.
    pub error: RwSignal<Option<String>>,
    pub runs: RwSignal<Vec<RunView>>,
    /// The link of the last shared run.
    pub share_url: RwSignal<Option<String>>,
    /// What the last check of a model before its download found, and whether one is running.
    pub check: RwSignal<Option<ModelCheck>>,
    pub checking: RwSignal<bool>,
}

impl AppState {
    pub fn new() -> Self {
        Self {
            settings: RwSignal::new(Settings::load()),
            backend: RwSignal::new(None),
            loaded: RwSignal::new(Vec::new()),
            cache: RwSignal::new(Vec::new()),
            progress: RwSignal::new(None),
            error: RwSignal::new(None),
            runs: RwSignal::new(Vec::new()),
            share_url: RwSignal::new(None),
            check: RwSignal::new(None),
            checking: RwSignal::new(false),
        }
    }

    /// Whether model `id` is loaded.
    pub fn is_loaded(&self, id: &str) -> bool {
        self.loaded.with(|l| l.iter().any(|m| m.id == id))
    }

    /// Whether model `id` is a masked diffusion model, and its context in tokens: known once it
    /// is loaded, and for the bundled models from the start.
    pub fn context_of(&self, id: &str) -> Option<(bool, usize)> {
        self.loaded
            .with(|l| {
                l.iter()
                    .find(|m| m.id == id)
                    .map(|m| (m.diffusion, m.context))
            })
            .or_else(|| bundled_context(id))
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_ets_runs_on_a_diffusion_model_and_ets_is_without_recycling() {
        let settings = Settings::default();
        let ets = |spec: ValidSpec| match &spec.strategy {
            Strategy::Ets(p) => *p,
            other => panic!("{other:?}"),
        };
        assert!(ets(settings.spec("ets", false).unwrap()).recycle);
        let on_dlm = ets(settings.spec("ets", true).unwrap());
        assert!(!on_dlm.recycle, "a diffusion rollout has no next block");
        assert_eq!((on_dlm.m, on_dlm.k, on_dlm.block), (settings.m, 1, 16));
        // ETS-IS's rollouts come from the draft: none to recycle (the engine refuses it).
        match &settings.spec("ets-is", false).unwrap().strategy {
            Strategy::EtsIs(p) => assert!(!p.recycle),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bundled_draft_follows_the_kind_of_the_bundled_model() {
        let mut settings = Settings::default();
        assert_eq!(settings.draft, "ref-ar-draft");
        settings.select_model("ref-dlm".into());
        assert_eq!(settings.draft, "ref-dlm-draft");
        settings.select_model("ref-ar".into());
        assert_eq!(settings.draft, "ref-ar-draft");
        // A draft the user named stays.
        settings.draft = "my-draft".into();
        settings.select_model("ref-dlm".into());
        assert_eq!(settings.draft, "my-draft");
    }

    #[test]
    fn the_judge_is_the_default_reward_for_the_bundled_models_only() {
        let mut settings = Settings::default();
        assert_eq!(settings.reward, JUDGE_REWARD);
        assert!(matches!(
            settings.spec("ets", false).unwrap().reward,
            RewardKind::Likelihood { .. }
        ));
        settings.select_model("ref-dlm".into());
        assert_eq!(settings.reward, JUDGE_REWARD);
        settings.select_model("smollm2-135m-instruct-q4_1".into());
        assert_eq!(
            (settings.model.as_str(), settings.reward.as_str()),
            ("smollm2-135m-instruct-q4_1", "self-consistency")
        );
        // A reward the user chose stays.
        settings.reward = "self-certainty".into();
        settings.select_model("ref-ar".into());
        assert_eq!(settings.reward, "self-certainty");
    }
}
