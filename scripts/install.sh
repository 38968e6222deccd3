#!/usr/bin/env bash
# Create .venv in the repo root (if missing) and install pirecon with its test extras into it.
# torch is installed first and pinned, so pip keeps the CPU wheel instead of pulling a CUDA build;
# on a GPU machine, install your own torch build (>= 2.2) into .venv before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==${PIRECON_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
