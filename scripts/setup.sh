#!/usr/bin/env bash
# Installs what building and testing need, skipping what is present: lavapipe (Mesa's software
# Vulkan, so the wgpu backend runs without a GPU), Chromium (the browser tests), WebKitGTK and
# the rest of Tauri's build dependencies, Xvfb and WebKitWebDriver (the desktop app and its
# test), pip where python3 lacks it, the wasm32 Rust target, wasm-bindgen-cli at Cargo.lock's
# version, tauri-driver, the site's build tools (binaryen's wasm-opt) and the browser tests' npm
# packages, the real GGUF model the engine's tests read (scripts/fetch-model.sh: 98 MB into
# ~/.cache/ets/models, about 3 s), and llama.cpp's OpenAI-compatible server from PyPI, which the
# remote-model test runs (scripts/llama-server.sh: compiles llama.cpp once, about 7 minutes,
# into ~/.cache/ets/llama-server).
set -euo pipefail

packages=(mesa-vulkan-drivers libvulkan1 chromium
  libwebkit2gtk-4.1-dev build-essential libxdo-dev libssl-dev libayatana-appindicator3-dev
  librsvg2-dev xvfb xauth webkit2gtk-driver)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

rustup target list --installed | grep -q '^wasm32-unknown-unknown$' \
  || rustup target add wasm32-unknown-unknown

# wasm-bindgen's command line must match the library version in Cargo.lock (without its default
# features: TLS for the test runner's downloads, which the build never uses).
bindgen_version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[version =""]/, ""); print; exit }' Cargo.lock)"
if ! wasm-bindgen --version 2>/dev/null | grep -q " $bindgen_version\$"; then
  echo "== installing wasm-bindgen-cli $bindgen_version"
  cargo install wasm-bindgen-cli --version "$bindgen_version" --no-default-features
fi
if ! command -v tauri-driver >/dev/null; then
  echo "== installing tauri-driver"
  cargo install tauri-driver --locked
fi

if [ ! -x web/node_modules/.bin/wasm-opt ]; then
  echo "== installing the site's build tools (npm binaryen)"
  (cd web && npm ci --no-audit --no-fund)
fi

if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  echo "== installing the browser tests' npm packages"
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi

scripts/fetch-model.sh >/dev/null
scripts/llama-server.sh >/dev/null
