#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh: the virtual environment, MiniLM, Debian's chromium),
# then runs the whole test suite on 2 cores. Arguments go to pytest (e.g. tests/core/test_metrics.py).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
polyseg_venv
polyseg_chromium
chromium --version
exec "$VENV_PYTHON" -m pytest -n 2 -q "$@"
