#!/usr/bin/env bash
# The desktop app (Tauri 2, src-tauri/): the browser app's UI with the engine running natively.
#   scripts/desktop.sh build     builds the UI (scripts/web.sh build) and the app in the dev
#                                profile, as the tests do: $CARGO_TARGET_DIR/debug/ets-desktop
#   scripts/desktop.sh run       builds it and starts it (ETS_BACKEND=cpu|wgpu picks the device)
#   scripts/desktop.sh test      builds it and runs its end-to-end test under Xvfb
#   scripts/desktop.sh release   the release binary: cargo build --release --features
#                                tauri/custom-protocol ($CARGO_TARGET_DIR/release/ets-desktop)
#   scripts/desktop.sh bundle    .deb and .AppImage packages with the Tauri CLI (npm
#                                @tauri-apps/cli; the AppImage step downloads linuxdeploy)
# Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

build() {
  scripts/web.sh build
  # The whole workspace with every target, so shared dependencies keep the features `cargo
  # test --workspace --all-targets` built them with: without the test targets, features that
  # only dev-dependencies turn on (criterion's ciborium, tempfile's rustix) change, and Burn's
  # and CubeCL's crates would be built a second time.
  cargo build --workspace --all-targets
}

case "${1:-run}" in
  build) build ;;
  run)
    build
    exec "$target/debug/ets-desktop"
    ;;
  test)
    build
    # The app's data and cache folders, removed after Xvfb and the app's processes are gone.
    home="$(mktemp -d)"
    trap 'rm -rf "$home"' EXIT
    ETS_DESKTOP_HOME="$home" ETS_DESKTOP_BIN="$target/debug/ets-desktop" \
      xvfb-run -a -s "-screen 0 1280x1024x24" \
      node --test --test-concurrency=1 --test-reporter=spec tests/desktop/
    ;;
  release)
    scripts/web.sh build
    cargo build --release -p ets-desktop --features tauri/custom-protocol
    echo "built $target/release/ets-desktop"
    ;;
  bundle)
    scripts/web.sh build
    (cd src-tauri && npx --yes @tauri-apps/cli@2 build --bundles deb,appimage)
    ;;
  *)
    echo "usage: scripts/desktop.sh build | run | test | release | bundle" >&2
    exit 2
    ;;
esac
