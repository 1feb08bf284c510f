#!/usr/bin/env bash
# Set everything up, build the embedded demo when it is missing, and start the app.
#   ./run.sh                 # then open http://localhost:8501
#   PORT=8600 ./run.sh       # another port
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
VENV="${SKIN_CORE_VENV:-.venv}"
if [ ! -f models/demo/bundle.json ]; then
  echo "run: building the embedded demo (synthetic data, a small real study, the bundle;"
  echo "     a few minutes on 2 CPU cores, once): skin-core demo"
  "$VENV/bin/skin-core" demo
fi
# Bound beyond localhost, the app needs a login configured (README, Access): refuse to start
# without one instead of serving patient images to anyone who can reach the port.
"$VENV/bin/python" -m skin_core.access --server.port "${PORT:-8501}" "$@" || exit 2
exec "$VENV/bin/streamlit" run app.py --server.port "${PORT:-8501}" "$@"
