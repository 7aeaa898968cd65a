#!/usr/bin/env bash
# Retrains the bundled reference models (three language models and the judge) from scratch with the exact settings that made the committed ones (docs/reference-models.md), one
# after another, on the CPU. Checkpoints go to
# models/<name>.ckpt (git-ignored); a run that is interrupted continues with the same command
# plus --resume.
set -euo pipefail
cd "$(dirname "$0")/.."
ets() { cargo run --quiet --bin ets -- "$@"; }

ets train --out models/ref-ar --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 700 --batch-size 32 --lr 3e-3 --warmup 100 --seed 1 --log-every 25 --checkpoint-every 100
ets train --out models/ref-ar-draft --hidden 64 --layers 3 --heads 2 --kv-heads 1 --intermediate 192 \
  --steps 1000 --batch-size 32 --lr 3e-3 --warmup 100 --seed 2 --log-every 25 --checkpoint-every 100
ets train --objective masked-diffusion --out models/ref-dlm --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 2500 --batch-size 32 --lr 3e-3 --warmup 100 --seed 3 --response-len 64 --log-every 25 --checkpoint-every 250
# The judge (models/ref-judge, read as `--reward lm:models/ref-judge`): ref-ar's shape trained
# longer on the train split; it scores a response by the lowest log-probability it gives any of
# its tokens. Its ranking is measured on 2,000 held-out responses of ref-ar and ref-ar-draft at
# T = 1 (test split, task seed 1), labelled by the verifier (cached outside the repository).
ets train --out models/ref-judge --hidden 128 --layers 4 --heads 4 --kv-heads 2 \
  --steps 2000 --batch-size 32 --lr 3e-3 --warmup 100 --seed 1 --log-every 50 --checkpoint-every 250
data="${ETS_CACHE:-$HOME/.cache/ets}/orm"
mkdir -p "$data"
ets reward-data --policy models/ref-ar --policy models/ref-ar-draft --backend cpu --split test --seed 1 \
  --problems 500 --samples 2 --out "$data/heldout.jsonl"
ets reward-auc --model models/ref-judge --backend cpu --data "$data/heldout.jsonl"
# A score-head reward model on the same body (not bundled: it ranks far worse, docs/results.md
# "A learned reward model"): 20,000 responses to 5,000 train problems, a score head trained on
# pairs of a right and a wrong response to one question, with per-token labels.
ets reward-data --policy models/ref-ar --policy models/ref-ar-draft --backend cpu --split train \
  --problems 5000 --samples 2 --out "$data/train.jsonl"
ets train --objective reward --per-token-labels --data "$data/train.jsonl" --init models/ref-judge \
  --out "$data/ref-orm" --steps 800 --warmup 50 --lr 1e-3 --batch-size 32 --seed 4 --log-every 50 \
  --checkpoint-every 200
ets reward-auc --model "$data/ref-orm" --backend cpu --data "$data/heldout.jsonl"
