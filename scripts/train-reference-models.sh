#!/usr/bin/env bash
# Retrains the three bundled reference models from scratch with the exact settings that made the
# committed ones (docs/reference-models.md), one after another, on the CPU. Checkpoints go to
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
