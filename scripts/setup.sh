#!/usr/bin/env bash
# Create .venv with galray and its test tools.  torch is pinned first so pip takes the CPU build
# (any other spec pulls a multi-GB CUDA build); on a GPU machine install your CUDA torch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev,images]"
echo "galray installed in $(pwd)/.venv ($(.venv/bin/galray --version))"
