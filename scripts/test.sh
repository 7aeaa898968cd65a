#!/usr/bin/env bash
# Runs every test of the project after installing what they need (scripts/setup.sh): builds the
# UI for wasm32 (the browser app, which the desktop app embeds), runs the Rust workspace's tests
# on the CPU and wgpu backends (wgpu on lavapipe where there is no GPU), then the browser app's
# end-to-end tests in headless Chromium and the desktop app's under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Temporary files of this run, removed however it ends.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Mesa's Vulkan driver loads libwayland, which complains on stderr when this is unset (servers, CI).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$scratch/runtime"
  mkdir -m 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi

echo "== the UI (trunk build --release)"
scripts/web.sh build

echo "== cargo test (workspace)"
log="$scratch/test.log"
cargo test --workspace --all-targets 2>&1 | tee "$log"

echo "== browser end-to-end tests (Chromium, WebGPU on SwiftShader)"
(cd tests/e2e && npm test) 2>&1 | tee -a "$log"

echo "== desktop end-to-end tests (Tauri under Xvfb, WebKitWebDriver)"
scripts/desktop.sh test 2>&1 | tee -a "$log"

# One closing line over every test binary and the browser tests.
awk '/^test result:/ { p += $4; f += $6 } /^ℹ pass / { p += $3 } /^ℹ fail / { f += $3 } END { printf "%d passed, %d failed\n", p, f }' "$log"
