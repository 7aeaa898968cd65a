//! Training the bundled reference models with Burn's autodiff: a causal LM (next-token loss on
//! the response), a masked diffusion LM (LLaDA's objective), on the synthetic arithmetic task,
//! or an outcome reward model (a score head; logistic loss on responses labelled right or wrong,
//! [`reward_data`]), with AdamW, a warmup + cosine learning-rate schedule, checkpoints and exact
//! resumption.
//!
//! A run is a pure function of its [`TrainSpec`]: the initial weights, every batch and every
//! mask come from counter-based draws keyed by the seed and the step, so a resumed run takes
//! the same steps as an uninterrupted one.

pub mod data;
pub mod optimizer;
pub mod reward_data;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, log_softmax};
use serde::{Deserialize, Serialize};

use crate::backend::read_f32;
use crate::bundle::Model;
use crate::error::{Error, Result};
use crate::model::config::{Head, ModelConfig, Objective};
use crate::model::files::ModelFiles;
use crate::model::random::random_model_files;
use crate::model::safetensors::{Dtype, SafetensorsFile, serialize};
use crate::model::transformer::{LogitsFor, ParamMut, Transformer};
use crate::rng::CounterRng;
use crate::task::arith::{self, ArithConfig, Split};
use crate::task::bpe;
use crate::tokenize::TextTokenizer;
use data::{Batch, Example, causal_batch, masked_diffusion_batch, reward_batch};
use optimizer::{AdamW, AdamWConfig};
use reward_data::RewardSet;

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The model's `config.json` (its architecture decides the objective).
    pub model_config: serde_json::Value,
    /// The problems trained on (the train split of this generator).
    pub task: ArithConfig,
    pub steps: u64,
    pub batch_size: usize,
    /// Peak learning rate, reached after `warmup_steps` and decayed by a cosine to
    /// `learning_rate · final_lr_fraction` at the last step.
    pub learning_rate: f64,
    pub warmup_steps: u64,
    pub final_lr_fraction: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    /// Seeds the initial weights, the problems and the masks.
    pub seed: u64,
    /// Masked diffusion only: responses are padded with EOS to this many tokens, the length
    /// the sampler generates.
    pub response_len: usize,
    /// Masked diffusion only: 0 for LLaDA's objective over the whole response; else masks
    /// drawn block by block as the semi-autoregressive sampler with blocks of this many tokens
    /// sees them ([`data::masked_diffusion_batch`]).
    #[serde(default)]
    pub mask_block_len: usize,
    /// A reward model (a score-head config) only: the labelled responses it learns from, a
    /// JSONL file of [`reward_data::LabelledResponse`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_data: Option<PathBuf>,
    /// A reward model only: which positions of a response carry a label.
    #[serde(default)]
    pub reward_labels: reward_data::Labels,
    /// Start from this model directory's weights wherever a name and shape match (a reward
    /// model's body from its policy); the rest are drawn from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

impl TrainSpec {
    /// The learning rate at `step` (0-based): linear warmup, then cosine decay.
    pub fn learning_rate_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.final_lr_fraction;
        self.learning_rate
            * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
    }

    fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err(Error::Train("steps and batch size must be positive".into()));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::Train(format!(
                "learning rate {} must be positive",
                self.learning_rate
            )));
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            return Err(Error::Train("final_lr_fraction must lie in [0, 1]".into()));
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    /// 1-based index of the step just taken.
    pub step: u64,
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens run through the model (prompt and response, padding excluded).
    pub tokens: usize,
}

/// The checkpoint's bookkeeping file.
#[derive(Serialize, Deserialize)]
struct TrainState {
    spec: TrainSpec,
    step: u64,
    /// (step, mean loss since the previous entry), for the record.
    loss_history: Vec<(u64, f64)>,
}

/// A model being trained, with its optimizer and the run's spec.
pub struct Trainer {
    spec: TrainSpec,
    transformer: Transformer,
    tokenizer: TextTokenizer,
    optimizer: AdamW,
    /// A reward model's training set (None for language models).
    rewards: Option<RewardSet>,
    /// (step, mean loss) of each progress report, saved with the checkpoints.
    pub loss_history: Vec<(u64, f64)>,
}

const STATE_FILE: &str = "train_state.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Makes every weight of `transformer` a tracked leaf on the autodiff device.
fn track(transformer: &mut Transformer) {
    for p in transformer.parameters_mut() {
        match p.tensor {
            ParamMut::Vector(t) => *t = t.clone().autodiff().require_grad(),
            ParamMut::Matrix(t) => *t = t.clone().autodiff().require_grad(),
        }
    }
}

/// A model directory in memory: `config_json`, the task tokenizer and `weights`.
fn in_memory_model(config_json: String, weights: Vec<u8>) -> ModelFiles {
    ModelFiles::from_memory([
        ("config.json".to_string(), config_json.into_bytes()),
        (
            "tokenizer.json".to_string(),
            bpe::tokenizer_json().into_bytes(),
        ),
        (WEIGHTS_FILE.to_string(), weights),
    ])
}

impl Trainer {
    /// Starts a run: random weights from the spec's seed, fresh optimizer state. `device` is a
    /// plain device; the trainer runs on its autodiff form.
    pub fn new(spec: TrainSpec, device: &Device) -> Result<Self> {
        spec.validate()?;
        let config_json = spec.model_config.to_string();
        let config = ModelConfig::from_json(&config_json)?;
        let weights = random_model_files(&config_json, &config, spec.seed)
            .take(WEIGHTS_FILE)
            .unwrap_or_default();
        let mut trainer = Self::with_weights(spec, weights, device)?;
        if let Some(dir) = trainer.spec.init.clone() {
            trainer.initialize_from(&dir, device)?;
        }
        Ok(trainer)
    }

    /// Takes every weight of the model in `dir` whose name and shape match one of ours.
    fn initialize_from(&mut self, dir: &Path, device: &Device) -> Result<()> {
        let mut init = Model::from_dir(dir, &device.clone().autodiff())?.transformer;
        let mut theirs: std::collections::HashMap<String, ParamMut<'_>> = init
            .parameters_mut()
            .into_iter()
            .map(|p| (p.name, p.tensor))
            .collect();
        let mut taken = 0;
        for p in self.transformer.parameters_mut() {
            match (p.tensor, theirs.remove(&p.name)) {
                (ParamMut::Vector(ours), Some(ParamMut::Vector(t))) if ours.dims() == t.dims() => {
                    *ours = t.clone();
                    taken += 1;
                }
                (ParamMut::Matrix(ours), Some(ParamMut::Matrix(t))) if ours.dims() == t.dims() => {
                    *ours = t.clone();
                    taken += 1;
                }
                _ => {}
            }
        }
        if taken == 0 {
            return Err(Error::Train(format!(
                "{} shares no weight (name and shape) with the model being trained",
                dir.display()
            )));
        }
        track(&mut self.transformer);
        Ok(())
    }

    /// Starts from `weights` (a model.safetensors for the spec's config).
    fn with_weights(spec: TrainSpec, weights: Vec<u8>, device: &Device) -> Result<Self> {
        let config_json = spec.model_config.to_string();
        let config = ModelConfig::from_json(&config_json)?;
        if config.tie_word_embeddings {
            return Err(Error::Train(
                "training needs untied embeddings (set tie_word_embeddings to false)".into(),
            ));
        }
        if config.vocab_size != bpe::vocab_size() {
            return Err(Error::Train(format!(
                "vocab_size is {}; the task tokenizer has {}",
                config.vocab_size,
                bpe::vocab_size()
            )));
        }
        let model = Model::from_files(
            in_memory_model(config_json, weights),
            &device.clone().autodiff(),
        )?;
        let tokenizer = model.tokenizer()?.clone();
        let mut transformer = model.transformer;
        track(&mut transformer);
        let rewards = match (config.head, &spec.reward_data) {
            (Head::LanguageModel, _) => None,
            (Head::Score, None) => {
                return Err(Error::Train(
                    "a reward model trains on labelled responses: give their JSONL file".into(),
                ));
            }
            (Head::Score, Some(path)) => Some(RewardSet::new(
                &tokenizer,
                &reward_data::read_jsonl(path)?,
                spec.reward_labels,
                config.max_position_embeddings,
            )?),
        };
        let optimizer = AdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: spec.weight_decay,
            grad_clip: spec.grad_clip,
        });
        Ok(Self {
            spec,
            transformer,
            tokenizer,
            optimizer,
            rewards,
            loss_history: Vec::new(),
        })
    }

    /// Continues the run saved in `checkpoint_dir` by [`save_checkpoint`](Self::save_checkpoint).
    pub fn resume(checkpoint_dir: &Path, device: &Device) -> Result<Self> {
        let read = |name: &str| {
            let path = checkpoint_dir.join(name);
            std::fs::read(&path).map_err(|source| Error::Io { path, source })
        };
        let state: TrainState =
            serde_json::from_slice(&read(STATE_FILE)?).map_err(|e| Error::Json {
                file: STATE_FILE.into(),
                reason: e.to_string(),
            })?;
        let mut trainer = Self::with_weights(state.spec, read(WEIGHTS_FILE)?, device)?;
        let moments = SafetensorsFile::parse(OPTIMIZER_FILE, read(OPTIMIZER_FILE)?)?;
        trainer
            .optimizer
            .restore(&mut trainer.transformer, state.step, |name| {
                moments.read_f32(name).map(|(values, _)| values)
            })?;
        trainer.loss_history = state.loss_history;
        Ok(trainer)
    }

    /// The run's spec.
    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.optimizer.steps_taken()
    }

    /// Parameters of the model being trained.
    pub fn parameter_count(&self) -> usize {
        self.transformer.config().parameter_count()
    }

    /// The examples of step `step` (0-based): a fresh draw of train problems. A masked
    /// diffusion model skips problems whose response exceeds its response length.
    fn examples(&self, step: u64) -> Result<Vec<Example>> {
        let seed = CounterRng::child_stream(self.spec.seed, step);
        let eos = *self
            .transformer
            .config()
            .eos_token_ids
            .first()
            .ok_or_else(|| Error::Config("the model needs an eos_token_id".into()))?;
        let limit = match self.transformer.config().objective {
            Objective::Causal => usize::MAX,
            Objective::MaskedDiffusion { .. } => self.spec.response_len,
        };
        let want = self.spec.batch_size;
        let mut examples = Vec::with_capacity(want);
        for problem in arith::generate(&self.spec.task, Split::Train, seed, 2 * want) {
            let example = Example::new(&self.tokenizer, &problem, eos)?;
            if example.response.len() <= limit {
                examples.push(example);
                if examples.len() == want {
                    return Ok(examples);
                }
            }
        }
        Err(Error::Train(format!(
            "fewer than half of the problems fit the response length {limit}; raise it"
        )))
    }

    /// The batch of step `step`, shaped for the model's objective.
    fn batch(&self, step: u64) -> Result<Batch> {
        if let Some(set) = &self.rewards {
            let rng = CounterRng {
                seed: self.spec.seed,
            };
            return reward_batch(&set.draw(
                self.spec.batch_size,
                rng,
                CounterRng::child_stream(self.spec.seed, step),
            ));
        }
        let examples = self.examples(step)?;
        match self.transformer.config().objective {
            Objective::Causal => causal_batch(&examples),
            Objective::MaskedDiffusion { mask_token_id } => masked_diffusion_batch(
                &examples,
                self.spec.response_len,
                self.spec.mask_block_len,
                mask_token_id,
                self.transformer.config().eos_token_ids[0],
                CounterRng {
                    seed: self.spec.seed,
                },
                CounterRng::child_stream(!self.spec.seed, step),
            ),
        }
    }

    /// The training loss of `batch` under `transformer`'s weights: [1].
    fn loss(transformer: &Transformer, batch: &Batch) -> Result<Tensor<1>> {
        let chunks: Vec<&[u32]> = batch.chunks.iter().map(Vec::as_slice).collect();
        let mut cache = transformer.new_cache(chunks.len());
        // Logits (a language model) or scores (a reward model) of every position.
        let outputs = transformer.forward(&chunks, &mut cache, LogitsFor::All)?;
        Ok(match transformer.config().head {
            Head::LanguageModel => weighted_nll(outputs, batch),
            Head::Score => {
                let [b, s, _] = outputs.dims();
                logistic_loss(outputs.reshape([b * s]), &batch.labels, &batch.weights)
            }
        })
    }

    /// Runs one optimizer step.
    pub fn step(&mut self) -> Result<StepReport> {
        let step = self.optimizer.steps_taken();
        let batch = self.batch(step)?;
        let loss = Self::loss(&self.transformer, &batch)?;
        let loss_value = read_f32(loss.clone().without_autodiff())?[0] as f64;
        if !loss_value.is_finite() {
            return Err(Error::Train(format!(
                "the loss is {loss_value} at step {}: training diverged (lower the learning rate)",
                step + 1
            )));
        }
        let grads = loss.backward();
        let learning_rate = self.spec.learning_rate_at(step);
        let grad_norm = self
            .optimizer
            .step(&mut self.transformer, &grads, learning_rate)?;
        Ok(StepReport {
            step: step + 1,
            loss: loss_value,
            learning_rate,
            grad_norm,
            tokens: batch.tokens(),
        })
    }

    /// The gradient of step `step`'s loss with respect to the weight `name`, flattened in the
    /// stored layout (for checking autodiff against finite differences).
    pub fn gradient(&self, step: u64, name: &str) -> Result<Vec<f32>> {
        let mut transformer = self.transformer.clone();
        track(&mut transformer);
        let grads = Self::loss(&transformer, &self.batch(step)?)?.backward();
        let param = transformer
            .parameters_mut()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let grad = match param.tensor {
            ParamMut::Vector(t) => t.grad(&grads).map(read_f32),
            ParamMut::Matrix(t) => t.grad(&grads).map(read_f32),
        };
        grad.ok_or_else(|| Error::Train(format!("no gradient reached `{name}`")))?
    }

    /// Step `step`'s loss with element `index` of the weight `name` (stored layout) moved by
    /// `delta`.
    pub fn loss_with_shift(&self, step: u64, name: &str, index: usize, delta: f32) -> Result<f64> {
        let mut transformer = self.model().transformer;
        let param = transformer
            .parameters_mut()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        fn shifted<const D: usize>(t: &Tensor<D>, index: usize, delta: f32) -> Result<Tensor<D>> {
            let mut values = read_f32(t.clone())?;
            let n = values.len();
            *values.get_mut(index).ok_or_else(|| {
                Error::Train(format!("index {index} is outside a tensor of {n}"))
            })? += delta;
            Ok(Tensor::from_data(
                TensorData::new(values, t.shape()),
                &t.device(),
            ))
        }
        match param.tensor {
            ParamMut::Vector(t) => *t = shifted(t, index, delta)?,
            ParamMut::Matrix(t) => *t = shifted(t, index, delta)?,
        }
        let loss = Self::loss(&transformer, &self.batch(step)?)?;
        Ok(read_f32(loss)?[0] as f64)
    }

    /// Writes the model directory (weights in f32, so the checkpoint can be evaluated like any
    /// model), the optimizer moments and the run's state to `dir`, replacing an earlier
    /// checkpoint there only once every file is written.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let moments = self.optimizer.state_tensors()?;
        let shapes: Vec<[usize; 1]> = moments.iter().map(|(_, v)| [v.len()]).collect();
        let views: Vec<(&str, &[usize], &[f32])> = moments
            .iter()
            .zip(&shapes)
            .map(|((n, v), s)| (n.as_str(), s.as_slice(), v.as_slice()))
            .collect();
        let state = TrainState {
            spec: self.spec.clone(),
            step: self.steps_taken(),
            loss_history: self.loss_history.clone(),
        };
        let state = serde_json::to_vec_pretty(&state).map_err(|e| Error::Train(e.to_string()))?;
        let mut files = self.model_files(Dtype::F32)?;
        files.push((OPTIMIZER_FILE, serialize(&views, Dtype::F32)));
        files.push((STATE_FILE, state));
        write_files(dir, &files)
    }

    /// Writes the trained model as an ordinary model directory: `config.json`,
    /// `model.safetensors` (as `dtype`), `tokenizer.json`, `generation_config.json`.
    pub fn write_model(&self, dir: &Path, dtype: Dtype) -> Result<()> {
        write_files(dir, &self.model_files(dtype)?)
    }

    /// The files of a model directory holding the current weights as `dtype`.
    fn model_files(&self, dtype: Dtype) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let json = |value: &serde_json::Value| {
            serde_json::to_vec_pretty(value).map_err(|e| Error::Train(e.to_string()))
        };
        let generation = serde_json::json!({
            "bos_token_id": self.transformer.config().bos_token_id,
            "eos_token_id": self.transformer.config().eos_token_ids,
            "pad_token_id": bpe::PAD_ID,
        });
        Ok(vec![
            ("config.json", json(&self.spec.model_config)?),
            (WEIGHTS_FILE, self.transformer.to_safetensors(dtype)?),
            ("tokenizer.json", bpe::tokenizer_json().into_bytes()),
            ("generation_config.json", json(&generation)?),
        ])
    }

    /// The model as it stands, untracked, for evaluation.
    pub fn model(&self) -> Model {
        let mut transformer = self.transformer.clone();
        for p in transformer.parameters_mut() {
            match p.tensor {
                ParamMut::Vector(t) => *t = t.clone().without_autodiff(),
                ParamMut::Matrix(t) => *t = t.clone().without_autodiff(),
            }
        }
        Model {
            transformer,
            tokenizer: Some(self.tokenizer.clone()),
        }
    }
}

/// Σ weight · (−log softmax(logits)[target]) over every position: logits [batch, seq, vocab],
/// targets and weights laid out as in [`Batch`]. Returns [1].
pub fn weighted_nll(logits: Tensor<3>, batch: &Batch) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let log_probs = log_softmax(logits.reshape([b * s, v]), 1);
    let targets =
        Tensor::<2, Int>::from_data(TensorData::new(batch.targets.clone(), [b * s, 1]), &device);
    let weights = Tensor::<1>::from_data(TensorData::new(batch.weights.clone(), [b * s]), &device);
    let picked = log_probs.gather(1, targets).reshape([b * s]);
    (picked * weights).sum().neg()
}

/// Σ weight · (−log σ(±s)), the logistic loss of scores `s` for labels 1 (right: +) and 0
/// (wrong: −); scores, labels and weights laid out alike (weight 0: no label). Returns [1].
pub fn logistic_loss(scores: Tensor<1>, labels: &[f32], weights: &[f32]) -> Tensor<1> {
    let device = scores.device();
    let signs: Vec<f32> = labels.iter().map(|&y| 2.0 * y - 1.0).collect();
    let signs = Tensor::<1>::from_data(TensorData::new(signs, [labels.len()]), &device);
    let weights =
        Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [weights.len()]), &device);
    (log_sigmoid(scores * signs) * weights).sum().neg()
}

/// Writes `files` as the whole content of `dir`, through a sibling staging directory swapped
/// in at the end, so an interrupted write leaves the previous content (or the new one) whole.
fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Train(format!("{} is not a directory name", dir.display())))?
        .to_string_lossy()
        .into_owned();
    let staging = dir.with_file_name(format!(".{name}.partial"));
    let previous = dir.with_file_name(format!(".{name}.previous"));
    for stale in [&staging, &previous] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(io(stale))?;
        }
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (file, bytes) in files {
        let path = staging.join(file);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &previous).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))?;
    if previous.exists() {
        std::fs::remove_dir_all(&previous).map_err(io(&previous))?;
    }
    Ok(())
}

/// The size of a reference model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
}

/// The `config.json` of a reference model over the character tokenizer: a Llama causal LM, or
/// with `masked_diffusion` the same body as a masked diffusion LM (mask token `<|mask|>`).
pub fn reference_config(shape: &ModelShape, masked_diffusion: bool) -> serde_json::Value {
    let mut config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": bpe::vocab_size(),
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": shape.max_position_embeddings,
        "tie_word_embeddings": false,
        "bos_token_id": bpe::BOS_ID,
        "eos_token_id": bpe::EOS_ID,
        "pad_token_id": bpe::PAD_ID,
    });
    if masked_diffusion {
        make_masked_diffusion(&mut config);
    }
    config
}

/// The `config.json` of a masked diffusion LM with the body of Llama causal config `base`
/// (bidirectional attention, mask token `<|mask|>`): how a diffusion model starts from an
/// autoregressive one's weights (AR-to-diffusion adaptation, as Dream and DiffuLLaMA do).
pub fn masked_diffusion_config(mut base: serde_json::Value) -> Result<serde_json::Value> {
    if base["architectures"][0].as_str() != Some("LlamaForCausalLM") {
        return Err(Error::Train(
            "a masked diffusion model's body comes from a Llama causal LM's config".into(),
        ));
    }
    make_masked_diffusion(&mut base);
    Ok(base)
}

/// Turns a Llama causal config into its masked diffusion twin.
fn make_masked_diffusion(config: &mut serde_json::Value) {
    config["architectures"] = serde_json::json!(["LlamaForMaskedDiffusion"]);
    config["model_type"] = serde_json::json!("llama_masked_diffusion");
    config["mask_token_id"] = serde_json::json!(bpe::MASK_ID);
    config["is_causal"] = serde_json::json!(false);
}

/// The `config.json` of an outcome reward model with the body of causal config `base`: the
/// same family as `…ForSequenceClassification` with one label (its `score` head replaces
/// `lm_head`).
pub fn reward_config(mut base: serde_json::Value) -> Result<serde_json::Value> {
    let name = base["architectures"][0]
        .as_str()
        .and_then(|n| n.strip_suffix("ForCausalLM"))
        .ok_or_else(|| {
            Error::Train("a reward model's body comes from a causal LM's config".into())
        })?
        .to_string();
    base["architectures"] = serde_json::json!([format!("{name}ForSequenceClassification")]);
    base["id2label"] = serde_json::json!({"0": "LABEL_0"});
    base["label2id"] = serde_json::json!({"LABEL_0": 0});
    Ok(base)
}
