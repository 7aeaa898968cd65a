#!/usr/bin/env bash
# The browser app. `scripts/web.sh build` builds the static site into web/dist and
# web/dist-desktop (the same UI without the worker, the service worker and the models, which the
# desktop app embeds); `scripts/web.sh serve [PORT]` builds it and serves it on
# http://127.0.0.1:PORT (8080). Installs what it needs first (scripts/setup.sh).
#
# The site: web/index.html, style.css, sw.js and the worker's loader as they are; the page's wasm
# (bin ets-web: the UI, no engine) and the worker's (bin ets-engine-worker: the engine host),
# built for wasm32 with Cargo profile $ETS_WEB_PROFILE (default `web`: size-optimised, LTO) and
# bound with wasm-bindgen (`web` target for the page, `no-modules` for the worker), then shrunk
# by binaryen's wasm-opt -Oz (npm binaryen@132 from web/package.json; ETS_WASM_OPT=0 skips it,
# as the `web-test` profile does); the bundled models.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
profile="${ETS_WEB_PROFILE:-web}"
wasm_opt="${ETS_WASM_OPT:-$([ "$profile" = web ] && echo 1 || echo 0)}"

# wasm-bindgen's output for one bin (shrunk by wasm-opt when asked), redone only when the wasm
# is newer.
bind() {
  local bin="$1" kind="$2" wasm="$3" out="$4"
  if [ ! -f "$out/${bin}_bg.wasm" ] || [ "$wasm" -nt "$out/${bin}_bg.wasm" ]; then
    wasm-bindgen --target "$kind" --no-typescript --out-dir "$out" --out-name "$bin" "$wasm"
    if [ "$wasm_opt" = 1 ]; then
      local before took start=$SECONDS
      before="$(stat -c %s "$out/${bin}_bg.wasm")"
      # The features rustc's wasm32 target enables (wasm-bindgen's output no longer lists them),
      # and SIMD (.cargo/config.toml).
      web/node_modules/.bin/wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
        --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
        --enable-simd \
        "$out/${bin}_bg.wasm" -o "$out/${bin}_bg.opt.wasm"
      mv "$out/${bin}_bg.opt.wasm" "$out/${bin}_bg.wasm"
      took=$((SECONDS - start))
      echo "wasm-opt -Oz ${bin}_bg.wasm: $before -> $(stat -c %s "$out/${bin}_bg.wasm") bytes (${took} s)"
    fi
  fi
}

build() {
  scripts/setup.sh
  echo "== the browser app's wasm (cargo build --target wasm32-unknown-unknown --profile $profile)"
  cargo build --target wasm32-unknown-unknown --profile "$profile" -p ets-web --bins
  local dir="$profile"
  [ "$profile" = dev ] && dir=debug
  local wasm="$target/wasm32-unknown-unknown/$dir" out="$target/wasm-bindgen/$dir"
  mkdir -p "$out"
  bind ets-web web "$wasm/ets-web.wasm" "$out"
  bind ets-engine-worker no-modules "$wasm/ets-engine-worker.wasm" "$out"

  # Assembled beside web/dist, then swapped in, so a failed build leaves the last site whole.
  local stage
  stage="$(mktemp -d web/.dist-XXXXXX)"
  cp web/index.html web/boot.js web/style.css web/sw.js web/ets-engine-worker_loader.js "$stage/"
  cp "$out"/ets-web.js "$out"/ets-web_bg.wasm "$out"/ets-engine-worker.js "$out"/ets-engine-worker_bg.wasm "$stage/"
  printf '{ "profile": "%s", "wasm_opt": %s }\n' "$profile" "$([ "$wasm_opt" = 1 ] && echo true || echo false)" > "$stage/build.json"
  mkdir -p "$stage/models"
  for model in ref-ar ref-ar-draft ref-dlm ref-dlm-draft ref-judge; do
    cp -r "models/$model" "$stage/models/"
  done
  rm -rf web/dist && mv "$stage" web/dist
  chmod 755 web/dist

  # The desktop app embeds this folder, and Cargo rebuilds it whenever a file there is newer:
  # an unchanged UI keeps its files (and their times).
  stage="$(mktemp -d web/.dist-desktop-XXXXXX)"
  cp -r web/dist/. "$stage/"
  rm -rf "$stage/models" "$stage/sw.js" "$stage"/ets-engine-worker*
  # Tauri sets the window's policy itself (tauri.conf.json), with hashes for what it injects.
  sed -i '/http-equiv="Content-Security-Policy"/d' "$stage/index.html"
  if [ -d web/dist-desktop ] && diff -rq web/dist-desktop "$stage" >/dev/null; then
    rm -rf "$stage"
  else
    rm -rf web/dist-desktop && mv "$stage" web/dist-desktop
    chmod 755 web/dist-desktop
  fi
  echo "built web/dist ($(du -sh web/dist | cut -f1)); wasm: $(stat -c %s web/dist/ets-web_bg.wasm) bytes (page) + $(stat -c %s web/dist/ets-engine-worker_bg.wasm) bytes (engine worker)"
}

case "${1:-serve}" in
  build) build ;;
  serve)
    build
    exec node tests/e2e/serve.mjs web/dist "${2:-8080}"
    ;;
  *)
    echo "usage: scripts/web.sh build | serve [PORT]" >&2
    exit 2
    ;;
esac
