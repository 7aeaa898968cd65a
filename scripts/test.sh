#!/usr/bin/env bash
# Runs every test of the project after installing what they need (scripts/setup.sh): builds the
# Rust workspace's tests and CLI, builds the UI for wasm32 (the browser app, which the desktop app
# embeds) and runs the browser app's end-to-end tests in headless Chromium, runs the workspace's
# tests on the CPU and wgpu backends (wgpu on lavapipe where there is no GPU), then the desktop
# app's under Xvfb.
# Ends with the wall time of each phase.
set -euo pipefail
cd "$(dirname "$0")/.."

# Temporary files of this run, removed however it ends.
scratch="$(mktemp -d)"
log="$scratch/test.log"
touch "$log"

# The wall time of each phase, printed at the end whether the run passed or not.
phases=()
current=""
run_start=$SECONDS
phase() {
  local name="$1" start=$SECONDS
  shift
  current="$name"
  echo "== $name"
  "$@"
  current=""
  local took=$((SECONDS - start))
  phases+=("$(printf '%-50s %3d:%02d' "$name" $((took / 60)) $((took % 60)))")
}
finish() {
  local status=$?
  echo
  echo "== phase times (wall, min:s)"
  for p in "${phases[@]}"; do echo "   $p"; done
  local took=$((SECONDS - run_start))
  printf '   %-50s %3d:%02d%s\n' "all" $((took / 60)) $((took % 60)) "$([ $status -ne 0 ] && echo " (failed${current:+ in: $current})")"
  rm -rf "$scratch"
}
trap finish EXIT

phase "installs (scripts/setup.sh)" scripts/setup.sh

# Mesa's Vulkan driver loads libwayland, which complains on stderr when this is unset (servers, CI).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$scratch/runtime"
  mkdir -m 700 "$XDG_RUNTIME_DIR"
  export XDG_RUNTIME_DIR
fi

# The site the browser and desktop tests load: the one users get (profile `web`: size-optimised
# with LTO, then wasm-opt), so the tests check its size and measure its speed. ETS_WEB_PROFILE=
# web-test builds an unoptimised site in a fraction of the time (the size test then skips).
export ETS_WEB_PROFILE="${ETS_WEB_PROFILE:-web}"
phase "site build (wasm32, profile $ETS_WEB_PROFILE)" scripts/web.sh build

# The native build, after the site (the desktop app embeds it) and before the browser tests,
# which run its CLI (`ets random-gguf`, `ets solve`).
phase "native build (cargo test --no-run)" cargo test --workspace --all-targets --no-run

# The README's first command builds a subset of this build with the same features (the
# workspace-hack crate sees to it), so a newcomer's test run reuses what it compiled. Checked
# here after the test build: where nothing was built before it (CI), anything the first
# command would still compile is a crate the test build would compile a second time.
reuse_check() {
  local rebuilt
  rebuilt="$(cargo build --bin ets 2>&1 | grep -E '^ +Compiling ' || true)"
  if [ -n "$rebuilt" ]; then
    echo "the README's first command (cargo run --bin ets) would compile again after the test build:" >&2
    echo "$rebuilt" >&2
    echo "regenerate workspace-hack/Cargo.toml with scripts/workspace-hack.py" >&2
    return 1
  fi
  echo "cargo build --bin ets after the test build: nothing to compile"
}
phase "first-command reuse check" reuse_check

browser_tests() { (cd tests/e2e && npm test) 2>&1 | tee -a "$log"; }
phase "browser tests (Chromium, WebGPU on SwiftShader)" browser_tests

# The remote-model test against a real server (llama-cpp-python, which setup.sh installed).
rust_tests() { ETS_REMOTE_SERVER_TESTS=1 cargo test --workspace --all-targets 2>&1 | tee -a "$log"; }
phase "Rust tests" rust_tests

phase "desktop build" scripts/desktop.sh build
desktop_tests() { scripts/desktop.sh test 2>&1 | tee -a "$log"; }
phase "desktop tests (Tauri under Xvfb, WebKitWebDriver)" desktop_tests

# One closing line over every test binary and the browser and desktop tests.
awk '/^test result:/ { p += $4; f += $6 } /^ℹ pass / { p += $3 } /^ℹ fail / { f += $3 } END { printf "%d passed, %d failed\n", p, f }' "$log"
