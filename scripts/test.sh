#!/usr/bin/env bash
# Set up from nothing, run the tests, then the benchmarks' regression checks. Fails on either.
# Speed is gated only as ratios to a reference timed in the same run (benchmarks/speed.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh profile,test
.venv/bin/python -m pytest -q
.venv/bin/python benchmarks/run.py --check
.venv/bin/python benchmarks/bench_recommend.py --check
