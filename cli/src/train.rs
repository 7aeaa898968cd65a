//! `ets train`: trains a reference model on the arithmetic task with Burn's autodiff, printing
//! progress, checkpointing, and writing an ordinary model directory at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use ets_engine::BackendKind;
use ets_engine::backend::select_device;
use ets_engine::model::safetensors::Dtype;
use ets_engine::train::reward_data::Labels;
use ets_engine::train::{
    ModelShape, TrainSpec, Trainer, masked_diffusion_config, reference_config, reward_config,
};

use crate::TaskKnobs;

#[derive(Args)]
pub struct TrainArgs {
    /// The model directory to write (config.json, model.safetensors, tokenizer.json,
    /// generation_config.json); replaced when it exists.
    #[arg(long)]
    out: PathBuf,
    /// Checkpoint directory, rewritten every --checkpoint-every steps [default: OUT.ckpt].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue the run saved in the checkpoint directory, with the settings it was started
    /// with (the model and training flags below are then ignored).
    #[arg(long)]
    resume: bool,
    /// causal (a Llama LM), masked-diffusion (the same body, LLaDA's objective) or reward (an
    /// outcome reward model: the body with a score head, learning --data's labels).
    #[arg(long, default_value = "causal")]
    objective: String,
    /// reward: the labelled responses to learn from (JSONL from `ets reward-data`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// reward: besides the outcome at the last token, label every response token by whether
    /// the response so far is a prefix of the reference solution (automatic process
    /// supervision).
    #[arg(long)]
    per_token_labels: bool,
    /// Start from this model directory's weights wherever a name and shape match; the model's
    /// shape is then its config's (the shape flags below are ignored). For a reward model, the
    /// policy whose responses it judges; for a masked diffusion model, a causal LM's weights
    /// are adapted to the diffusion objective (as Dream and DiffuLLaMA start from one).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Transformer layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads (head width = hidden / heads).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (grouped-query attention) [default: --heads].
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Width of the MLP [default: 3 × hidden].
    #[arg(long)]
    intermediate: Option<usize>,
    /// Longest sequence the model accepts (prompt and answer, in characters).
    #[arg(long, default_value_t = 512)]
    max_positions: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Problems per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Steps of linear warmup before the cosine decay.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// The learning rate decays to this fraction of the peak at the last step.
    #[arg(long, default_value_t = 0.1)]
    final_lr_fraction: f64,
    /// Decoupled weight decay of the matrices.
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Largest global gradient norm (larger gradients are scaled down).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Seed of the initial weights, the problems and the masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Masked diffusion: answers are padded with EOS to this many tokens (the sampler's
    /// --gen-length).
    #[arg(long, default_value_t = 64)]
    response_len: usize,
    /// Masked diffusion: draw the masks block by block as the sampler with --block-length
    /// this many tokens sees them (earlier blocks clean, later ones all masks); 0: LLaDA's
    /// masks over the whole response.
    #[arg(long, default_value_t = 0)]
    mask_block: usize,
    #[command(flatten)]
    knobs: TaskKnobs,
    /// Save a checkpoint every this many steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Print the mean loss every this many steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// How the written model stores its weights: f32, f16 or bf16.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

impl TrainArgs {
    /// The run these flags describe.
    fn spec(&self) -> Result<TrainSpec> {
        let (masked_diffusion, reward) = match self.objective.as_str() {
            "causal" => (false, false),
            "masked-diffusion" => (true, false),
            "reward" => (false, true),
            other => bail!("unknown objective {other:?}; use causal, masked-diffusion or reward"),
        };
        if reward != self.data.is_some() {
            bail!("--data goes with --objective reward, which needs it");
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            bail!(
                "--hidden ({}) must be a multiple of --heads ({})",
                self.hidden,
                self.heads
            );
        }
        let shape = ModelShape {
            hidden_size: self.hidden,
            num_layers: self.layers,
            num_heads: self.heads,
            num_kv_heads: self.kv_heads.unwrap_or(self.heads),
            intermediate_size: self.intermediate.unwrap_or(3 * self.hidden),
            max_position_embeddings: self.max_positions,
        };
        let mut model_config = match &self.init {
            Some(dir) => {
                let path = dir.join("config.json");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => reference_config(&shape, masked_diffusion),
        };
        if reward {
            model_config = reward_config(model_config)?;
        } else if masked_diffusion && self.init.is_some() && model_config["is_causal"] != false {
            // a diffusion model started from a causal LM's weights
            model_config = masked_diffusion_config(model_config)?;
        }
        Ok(TrainSpec {
            model_config,
            task: self.knobs.config()?,
            steps: self.steps,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            warmup_steps: self.warmup,
            final_lr_fraction: self.final_lr_fraction,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed: self.seed,
            response_len: self.response_len,
            mask_block_len: self.mask_block,
            reward_data: self.data.clone(),
            reward_labels: match self.per_token_labels {
                true => Labels::PerToken,
                false => Labels::Outcome,
            },
            init: self.init.clone(),
        })
    }
}

/// "1h02m", "3m05s" or "12s".
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "f32" => Dtype::F32,
        "f16" => Dtype::F16,
        "bf16" => Dtype::BF16,
        other => bail!("unknown dtype {other:?}; use f32, f16 or bf16"),
    };
    if args.checkpoint_every == 0 || args.log_every == 0 {
        bail!("--checkpoint-every and --log-every must be positive");
    }
    let checkpoint = match &args.checkpoint {
        Some(dir) => dir.clone(),
        None => {
            let mut name = args.out.as_os_str().to_owned();
            name.push(".ckpt");
            PathBuf::from(name)
        }
    };
    let (device, _, description) = select_device(Some(args.backend))?;
    eprintln!("backend: {description}");
    let mut trainer = if args.resume {
        let trainer = Trainer::resume(&checkpoint, &device)
            .with_context(|| format!("resuming from {}", checkpoint.display()))?;
        eprintln!(
            "resuming {} at step {} of {}",
            checkpoint.display(),
            trainer.steps_taken(),
            trainer.spec().steps
        );
        trainer
    } else {
        Trainer::new(args.spec()?, &device)?
    };
    let spec = trainer.spec().clone();
    eprintln!(
        "training {} ({:.2} M parameters) for {} steps of {} problems; checkpoints in {}",
        spec.model_config["architectures"][0]
            .as_str()
            .unwrap_or("?"),
        trainer.parameter_count() as f64 / 1e6,
        spec.steps,
        spec.batch_size,
        checkpoint.display()
    );
    train_loop(&mut trainer, args, &checkpoint)?;
    trainer
        .write_model(&args.out, dtype)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn train_loop(trainer: &mut Trainer, args: &TrainArgs, checkpoint: &Path) -> Result<()> {
    let steps = trainer.spec().steps;
    let start = Instant::now();
    let first = trainer.steps_taken();
    let (mut window_loss, mut window_steps, mut window_tokens) = (0.0, 0u64, 0usize);
    let mut window_start = Instant::now();
    while trainer.steps_taken() < steps {
        let report = trainer.step()?;
        window_loss += report.loss;
        window_steps += 1;
        window_tokens += report.tokens;
        let last = report.step == steps;
        if report.step % args.log_every == 0 || last {
            let mean = window_loss / window_steps as f64;
            let elapsed = start.elapsed().as_secs_f64();
            let per_step = elapsed / (report.step - first) as f64;
            eprintln!(
                "step {}/{} · loss {:.4} · lr {:.2e} · |grad| {:.2} · {:.0} tok/s · {} elapsed · ~{} left",
                report.step,
                steps,
                mean,
                report.learning_rate,
                report.grad_norm,
                window_tokens as f64 / window_start.elapsed().as_secs_f64(),
                duration(elapsed),
                duration(per_step * (steps - report.step) as f64),
            );
            trainer.loss_history.push((report.step, mean));
            (window_loss, window_steps, window_tokens) = (0.0, 0, 0);
            window_start = Instant::now();
        }
        if report.step % args.checkpoint_every == 0 || last {
            trainer
                .save_checkpoint(checkpoint)
                .with_context(|| format!("saving the checkpoint {}", checkpoint.display()))?;
        }
    }
    eprintln!(
        "trained {} steps in {}",
        steps - first,
        duration(start.elapsed().as_secs_f64())
    );
    Ok(())
}
