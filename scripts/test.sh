#!/usr/bin/env bash
# Set up from nothing, run the tests, then the benchmarks' checks. Fails on either.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh profile,test
.venv/bin/python -m pytest -q
.venv/bin/python benchmarks/bench_profile.py --check
