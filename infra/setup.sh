#!/usr/bin/env bash
# Create .venv with PyTorch and the project installed; a second run does nothing when nothing changed.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

stamp=.venv/.ladnn-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi

.venv/bin/python -m pip install --quiet --upgrade pip wheel
# torch first and pinned: an unpinned torch requested by another package pulls a CUDA build.
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$wanted" > "$stamp"
echo "installed ladnn into .venv"
