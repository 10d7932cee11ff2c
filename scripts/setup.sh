#!/usr/bin/env bash
# Create .venv (if missing) and install equipot with its dependencies.
# torch is installed first and pinned: on a CPU-only machine this takes the local CPU
# wheel; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${EQUIPOT_TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
pip install --quiet --disable-pip-version-check -e ".[test]"
