#!/usr/bin/env bash
# Retrains the bundled reference models (two causal language models, the judge, and the diffusion
# model adapted from the judge) with the exact settings that made the committed ones
# (docs/reference-models.md), one after another, on the CPU. Checkpoints go to
# <out>.ckpt (models/*.ckpt is git-ignored); a run that is interrupted continues with the same command
# plus --resume.
set -euo pipefail
cd "$(dirname "$0")/.."
ets() { cargo run --quiet --bin ets -- "$@"; }

ets train --out models/ref-ar --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 700 --batch-size 32 --lr 3e-3 --warmup 100 --seed 1 --log-every 25 --checkpoint-every 100
ets train --out models/ref-ar-draft --hidden 64 --layers 3 --heads 2 --kv-heads 1 --intermediate 192 \
  --steps 1000 --batch-size 32 --lr 3e-3 --warmup 100 --seed 2 --log-every 25 --checkpoint-every 100
# The judge (models/ref-judge, read as `--reward lm:models/ref-judge`): ref-ar's shape trained
# longer on the train split; it scores a response by the lowest log-probability it gives any of
# its tokens. Its ranking is measured on 2,000 held-out responses of ref-ar and ref-ar-draft at
# T = 1 (test split, task seed 1), labelled by the verifier (cached outside the repository).
ets train --out models/ref-judge --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 2000 --batch-size 32 --lr 3e-3 --warmup 100 --seed 1 --log-every 50 --checkpoint-every 250
# The diffusion model (models/ref-dlm): the judge's weights adapted to masked diffusion with
# block masks of 8 tokens (the sampler's default blocks), in two runs: 2,000 steps at lr 2e-3,
# then 6,000 more at 1.5e-3 from the first run's weights (about 1.5 hours on two cores).
stage="${ETS_CACHE:-$HOME/.cache/ets}/train/dlm-b8"
ets train --objective masked-diffusion --init models/ref-judge --mask-block 8 --out "$stage" \
  --steps 2000 --batch-size 32 --lr 2e-3 --warmup 100 --seed 3 --response-len 64 --log-every 50 --checkpoint-every 250
ets train --objective masked-diffusion --init "$stage" --mask-block 8 --out models/ref-dlm \
  --steps 6000 --batch-size 32 --lr 1.5e-3 --warmup 100 --seed 4 --response-len 64 --log-every 50 --checkpoint-every 250
# ETS-IS's draft for ref-dlm (models/ref-dlm-draft): ref-ar-draft's weights adapted the same way,
# then 8,000 more steps at 1e-3 (about 2 hours on two cores in all; greedy 14.8% on the 500 test
# problems, 7.4% after the second run). The third run was stopped at step 3,100 and resumed
# from its step-3,000 checkpoint (`ets train --resume --out ...`: the same steps).
stage="${ETS_CACHE:-$HOME/.cache/ets}/train/dlm-draft-b8"
stage2="${ETS_CACHE:-$HOME/.cache/ets}/train/dlm-draft"
ets train --objective masked-diffusion --init models/ref-ar-draft --mask-block 8 --out "$stage" \
  --steps 2000 --batch-size 32 --lr 2e-3 --warmup 100 --seed 3 --response-len 64 --log-every 50 --checkpoint-every 250
ets train --objective masked-diffusion --init "$stage" --mask-block 8 --out "$stage2" \
  --steps 6000 --batch-size 32 --lr 1.5e-3 --warmup 100 --seed 4 --response-len 64 --log-every 50 --checkpoint-every 250
ets train --objective masked-diffusion --init "$stage2" --mask-block 8 --out models/ref-dlm-draft \
  --steps 8000 --batch-size 32 --lr 1e-3 --warmup 100 --seed 5 --response-len 64 --log-every 50 --checkpoint-every 250
data="${ETS_CACHE:-$HOME/.cache/ets}/orm"
mkdir -p "$data"
ets reward-data --policy models/ref-ar --policy models/ref-ar-draft --backend cpu --split test --seed 1 \
  --problems 500 --samples 2 --out "$data/heldout.jsonl"
ets reward-auc --model models/ref-judge --backend cpu --data "$data/heldout.jsonl"
# The score-head reward model models/ref-orm (`--reward model:models/ref-orm`; it ranks far
# worse than the judge, docs/results.md "Score-head reward models"): 20,000 responses to 5,000
# train problems, a score head on the judge's body trained on pairs of a right and a wrong
# response to one question, with per-token labels (about 16 minutes on two cores).
ets reward-data --policy models/ref-ar --policy models/ref-ar-draft --backend cpu --split train \
  --problems 5000 --samples 2 --out "$data/train.jsonl"
ets train --objective reward --per-token-labels --data "$data/train.jsonl" --init models/ref-judge \
  --out models/ref-orm --steps 800 --warmup 50 --lr 1e-3 --batch-size 32 --seed 4 --log-every 50 \
  --checkpoint-every 200
ets reward-auc --model models/ref-orm --backend cpu --data "$data/heldout.jsonl"
# A policy and a judge trained on worked solutions in any valid order (`--any-order`: each run of
# commuting steps shuffled; the same questions), to see whether samples that differ in their
# order give ETS more to choose from (docs/results.md, "Solutions in any order"; not bundled).
orders="${ETS_CACHE:-$HOME/.cache/ets}/train/any-order"
ets train --any-order --out "$orders/ar" --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 700 --batch-size 32 --lr 3e-3 --warmup 100 --seed 1 --log-every 25 --checkpoint-every 100
ets train --any-order --out "$orders/judge" --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 2000 --batch-size 32 --lr 3e-3 --warmup 100 --seed 1 --log-every 50 --checkpoint-every 250
