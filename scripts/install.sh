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
EXTRAS="test"
# PIRECON_LIBERO=1 adds the LIBERO simulator (the `libero` extra, ~650 MB, about a minute) and the
# OSMesa library it renders with (Debian's libosmesa6, installed here when running as root).
if [ "${PIRECON_LIBERO:-0}" = 1 ]; then
    EXTRAS="test,libero"
    if ! .venv/bin/python -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('OSMesa') is None)"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null
        else
            echo "install.sh: LIBERO needs OSMesa: run 'sudo apt-get install libosmesa6'" >&2
        fi
    fi
fi
# PIRECON_TORCHCODEC=1 adds the torchcodec video backend (`--dataset.video_backend=torchcodec`) and,
# as root, the FFmpeg libraries it loads (Debian 12's); where they cannot be installed, the backend's
# tests skip and say why.
if [ "${PIRECON_TORCHCODEC:-0}" = 1 ]; then
    EXTRAS="$EXTRAS,torchcodec"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q libavcodec; then
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libavcodec59 libavformat59 \
            libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8 >/dev/null \
            || echo "install.sh: could not install FFmpeg's libraries; torchcodec will not load" >&2
    fi
fi
.venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
