#!/usr/bin/env bash
# Runs every test of the project after installing what they need (scripts/setup.sh): the Rust
# workspace on the CPU and wgpu backends (wgpu on lavapipe where there is no GPU), and a check
# that the engine builds for wasm32.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Mesa's Vulkan driver loads libwayland, which complains on stderr when this is unset (servers, CI).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
fi

echo "== cargo test (workspace)"
log="$(mktemp)"
cargo test --workspace --all-targets 2>&1 | tee "$log"

echo "== engine for wasm32-unknown-unknown"
cargo check -p ets-engine --target wasm32-unknown-unknown

# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
