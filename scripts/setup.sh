#!/usr/bin/env bash
# Create .venv and install the backend with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first: an unpinned requirement would pull a multi-GB CUDA build where a CPU one will do.
# On a CUDA machine set TORCH_SPEC (e.g. "torch==2.13.0 --index-url <your CUDA wheel index>").
python -c "import torch" 2>/dev/null || python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
python -m pip install -q -e ".[dev]"
# the Khronos glTF validator, for the tests of exported GLBs (a few hundred kB; skipped without npm)
if command -v npm >/dev/null 2>&1 && [ ! -d .tools/gltf-validator/node_modules/gltf-validator ]; then
  npm install --silent --no-audit --no-fund --prefix .tools/gltf-validator gltf-validator@2.0.0-dev.3.10
fi
