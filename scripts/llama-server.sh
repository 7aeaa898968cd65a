#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server from PyPI (llama-cpp-python[server], pinned;
# with the `gguf` package, which scripts/ref_ar_to_gguf.py writes GGUF files with) into a
# virtual environment in a cache outside the repository, and prints its Python:
#
#   scripts/llama-server.sh          # prints e.g. ~/.cache/ets/llama-server/venv/bin/python
#   "$(scripts/llama-server.sh)" -m llama_cpp.server --model FILE --host 127.0.0.1 --port 8000
#
# pip compiles llama.cpp from source (about 7 minutes on 2 cores; the multimodal tools are left
# out). The built wheel is kept in the cache, so a new environment installs in seconds; a second
# call finds the environment and only checks it. ETS_SERVER_CACHE moves the cache.
set -euo pipefail

version="0.3.36"
cache="${ETS_SERVER_CACHE:-$HOME/.cache/ets/llama-server}"
venv="$cache/venv"
wheels="$cache/wheels"
python="$venv/bin/python"

ready() { [ -x "$python" ] && "$python" -c "import gguf, llama_cpp, llama_cpp.server, uvicorn; assert llama_cpp.__version__ == '$version'" 2>/dev/null; }

if ready; then
  echo "$python"
  exit 0
fi
mkdir -p "$wheels"
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $version (compiles llama.cpp: about 7 minutes on 2 cores)…" >&2
  start=$SECONDS
  CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    -w "$wheels" "llama-cpp-python==$version" >&2
  echo "built in $((SECONDS - start)) s" >&2
fi
"$python" -m pip install --quiet --disable-pip-version-check --find-links "$wheels" \
  "llama-cpp-python[server]==$version" gguf==0.19.0 >&2
if ! ready; then
  echo "llama-cpp-python $version was installed but does not import: see the messages above" >&2
  exit 1
fi
echo "$python"
