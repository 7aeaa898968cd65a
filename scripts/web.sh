#!/usr/bin/env bash
# The browser app. `scripts/web.sh build` builds the static site into web/dist (Trunk, release),
# and web/dist-desktop, the same UI without the worker, the service worker and the models, which
# the desktop app embeds; `scripts/web.sh serve [PORT]` builds it and serves it on
# http://127.0.0.1:PORT (8080). Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
  scripts/setup.sh
  (cd web && trunk build --release)
  rm -rf web/dist-desktop
  cp -r web/dist web/dist-desktop
  rm -rf web/dist-desktop/models web/dist-desktop/sw.js web/dist-desktop/ets-engine-worker*
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
