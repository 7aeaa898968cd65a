#!/usr/bin/env bash
# Runs every test of the project after installing what they need (scripts/setup.sh): the Rust
# workspace on the CPU and wgpu backends (wgpu on lavapipe where there is no GPU), and a check
# that the engine builds for wasm32.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo test (workspace)"
cargo test --workspace --all-targets

echo "== engine for wasm32-unknown-unknown"
cargo check -p ets-engine --target wasm32-unknown-unknown
