#!/usr/bin/env bash
# Create .venv with vramplan and its measuring extra. A torch that is already
# importable (e.g. a CUDA build in the system site-packages) is kept; otherwise the
# CPU wheel torch==2.13.0 is installed first, so pip never pulls a CUDA build.
# Usage: bash scripts/setup.sh [extras]   (default extras: profile)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-profile}"
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[${extras}]"
# An editable install leaves the package's own bytecode unwritten, and where
# PYTHONDONTWRITEBYTECODE is set nothing ever writes it: every `vramplan` would then
# compile planner/ again (~40 ms of the main job's start-up). Compile it once here.
.venv/bin/python -m compileall -q planner
