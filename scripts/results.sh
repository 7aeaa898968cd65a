#!/usr/bin/env bash
# Reruns every evaluation behind docs/results.md on the CPU (about 2.5 hours on a 2-core machine
# when the first two sweeps run side by side). Tables and plots land in docs/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin ets
ets=target/debug/ets
mkdir -p docs/results

# Every strategy on ref-ar over 500 test problems (ETS blocks of 4 tokens, K = 3, λ = 0.1, T = 1).
$ets eval --model models/ref-ar --backend cpu --sweep --n 500 --budgets 4,8,16,32 --ets-budgets 2,4,8 \
  --block 4 --draft models/ref-ar-draft --out docs/results/ref-ar --json > docs/results/ref-ar.json &
wait
# ref-dlm guided by the judge (500 test problems; the default schedule: 64 tokens in blocks of
# 8, 64 denoising steps): particle filtering every 16 revealed tokens, ETS with self-consistency
# (K = 2), then the other strategies with ETS guiding every 32 revealed tokens (K = 1, λ = 0.1),
# ETS-IS with the same settings and its rollouts on models/ref-dlm-draft, and greedy decoding
# and beam search (4 beams) joining them all in one table and plot (blocks chosen on 100
# validation problems, docs/results.md; about 95 minutes on two cores).
dlm() { $ets eval --model models/ref-dlm --backend cpu --n 500 --lambda 0.1 "$@"; }
dlm --sweep --ets-budgets 4 --k 1 --block 16 --reward lm:models/ref-judge \
  --strategies particle-filter --out /tmp/ref-dlm-pf --json > /tmp/ref-dlm-pf.json
dlm --strategy ets --m 4 --k 2 --block 32 --json > /tmp/ref-dlm-ets-sc.json
dlm --sweep --budgets 4 --ets-budgets 4 --k 1 --block 32 --reward lm:models/ref-judge \
  --strategies sample,majority,best-of-n,ets --out /tmp/ref-dlm-main --json > /tmp/ref-dlm-main.json
dlm --sweep --budgets 4 --ets-budgets 4 --k 1 --block 32 --reward lm:models/ref-judge --draft models/ref-dlm-draft \
  --strategies ets-is --out /tmp/ref-dlm-is --json > /tmp/ref-dlm-is.json
dlm --sweep --budgets 4 --reward lm:models/ref-judge --strategies greedy,beam --join /tmp/ref-dlm-main.json \
  --join /tmp/ref-dlm-pf.json --join /tmp/ref-dlm-ets-sc.json --join /tmp/ref-dlm-is.json \
  --out docs/results/ref-dlm-judge --json > docs/results/ref-dlm-judge.json

# Every strategy on ref-ar guided by the bundled judge (500 test problems; K = 1, blocks of 16,
# λ = 0.1, ETS's rollouts recycled; about 15 minutes alone), then ETS-IS (which cannot recycle);
# docs/results/ref-ar-judge.{md,json} join the two.
$ets eval --model models/ref-ar --backend cpu --sweep --n 500 --budgets 4,8,16,32,64 --ets-budgets 4,8,16 \
  --k 1 --block 16 --lambda 0.1 --recycle --reward lm:models/ref-judge \
  --strategies greedy,sample,majority,best-of-n,beam,particle-filter,ets \
  --out docs/results/ref-ar-judge --json > docs/results/ref-ar-judge.json
$ets eval --model models/ref-ar --backend cpu --sweep --n 500 --ets-budgets 4,8,16 --k 1 --block 16 \
  --lambda 0.1 --reward lm:models/ref-judge --draft models/ref-ar-draft --strategies ets-is \
  --out /tmp/ref-ar-judge-is --json > /tmp/ref-ar-judge-is.json
$ets eval --model models/ref-judge --backend cpu --n 500 --strategy greedy   # the judge alone

# The same settings guided by the bundled score-head ORM (budgets 8 and 16), then ETS-IS; the
# two JSON arrays joined make docs/results/ref-ar-orm.{md,json}.
$ets eval --model models/ref-ar --backend cpu --sweep --n 500 --budgets 8,16 --ets-budgets 8,16 \
  --k 1 --block 16 --lambda 0.1 --recycle --reward model:models/ref-orm \
  --strategies best-of-n,particle-filter,ets --out /tmp/ref-ar-orm --json > /tmp/ref-ar-orm.json
$ets eval --model models/ref-ar --backend cpu --sweep --n 500 --ets-budgets 8,16 --k 1 --block 16 \
  --lambda 0.1 --reward model:models/ref-orm --draft models/ref-ar-draft --strategies ets-is \
  --out /tmp/ref-ar-orm-is --json > /tmp/ref-ar-orm-is.json

# Variations on ref-ar, one at a time (500 problems unless noted).
one() { $ets eval --model models/ref-ar --backend cpu --block 4 "$@"; }
one --n 200 --strategy ets --m 8                                       # wall time, alone
one --n 200 --strategy ets-is --m 8 --draft models/ref-ar-draft        # wall time, alone
one --n 500 --strategy ets --m 8 --recycle
one --n 500 --strategy ets --m 8 --reward verifier                     # oracle reward
one --n 500 --strategy best-of-n --m 16 --reward mean-log-prob
one --n 500 --strategy sample --temperature 0.5
one --n 500 --strategy majority --m 16 --temperature 0.5
one --n 500 --strategy ets --m 8 --temperature 0.5

# The policy and judge trained on solutions in any order (scripts/train-reference-models.sh
# makes them), with the settings of the ref-ar judge sweep (9 minutes).
orders="${ETS_CACHE:-$HOME/.cache/ets}/train/any-order"
$ets eval --model "$orders/judge" --backend cpu --n 500 --temperature 0
$ets eval --model "$orders/ar" --backend cpu --n 500 --samples 8 --temperature 1
$ets eval --model "$orders/ar" --backend cpu --sweep --n 500 --budgets 4,8,16,32 --ets-budgets 4,8,16 \
  --k 1 --block 16 --lambda 0.1 --recycle --reward "lm:$orders/judge" \
  --strategies greedy,sample,majority,best-of-n,particle-filter,ets \
  --out docs/results/ref-ar-any-order --json > docs/results/ref-ar-any-order.json
# Temperature, on 200 validation problems (the canonical ref-ar and judge).
for t in 0.7 1.3; do
  $ets eval --model models/ref-ar --backend cpu --split test --task-seed 2 --n 200 --sweep --budgets 8,16 \
    --ets-budgets 8 --k 1 --block 16 --lambda 0.1 --recycle --reward lm:models/ref-judge --temperature $t \
    --strategies best-of-n,particle-filter,ets --out /tmp/ref-ar-judge-t$t --json > /tmp/ref-ar-judge-t$t.json
done
