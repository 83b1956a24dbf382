#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh), then runs the main job: by default DiffAct on the
# embedded synthetic dataset into runs/diffact. Flags go to `python -m polyseg.main`; a --config or
# --workdir of them replaces the default one:
#   bash run.sh --config=configs/hopadiff.py --workdir=runs/hopadiff --config.data.root=DATA
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
polyseg_venv
defaults=()
[[ " $* " == *" --config="* ]] || defaults+=(--config=configs/diffact.py)
[[ " $* " == *" --workdir="* ]] || defaults+=(--workdir=runs/diffact)
exec "$VENV_PYTHON" -m polyseg.main "${defaults[@]}" "$@"
