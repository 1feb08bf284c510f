#!/usr/bin/env bash
# Set everything up, build the embedded demo when it is missing, and start the app.
#   ./run.sh                 # then open http://localhost:8501
#   PORT=8600 ./run.sh       # another port
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
VENV="${SKIN_CORE_VENV:-.venv}"
if [ ! -f data/demo/ISIC_2019_Training_GroundTruth.csv ]; then
  echo "run: building the embedded demo dataset in data/demo (about a minute)"
  "$VENV/bin/skin-core" demo-data --out data/demo --n 2000 --seed 0
fi
exec "$VENV/bin/streamlit" run app.py --server.port "${PORT:-8501}" "$@"
