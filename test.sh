#!/usr/bin/env bash
# Set everything up (runtime + dev requirements) and run the whole test suite: lint, unit,
# slow, real-data (when ../shared/data is beside the checkout) and browser tests.
#   ./test.sh                # everything
#   ./test.sh -m "not slow"  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh --dev
VENV="${SKIN_CORE_VENV:-.venv}"

# Real data for real-data tests, when it sits beside the checkout (never copied into the repo).
if [ -z "${SKIN_CORE_HAM10000_DIR:-}" ] && [ -d ../shared/data/ham10000 ]; then
  export SKIN_CORE_HAM10000_DIR="$(cd ../shared/data/ham10000 && pwd)"
fi
if [ -z "${SKIN_CORE_ISIC2019_CSV_DIR:-}" ] && [ -d ../shared/data/isic2019 ]; then
  export SKIN_CORE_ISIC2019_CSV_DIR="$(cd ../shared/data/isic2019 && pwd)"
fi
if [ -z "${SKIN_CORE_HAM10000_OOF:-}" ] && [ -f ../shared/data/ham10000-oof/oof.csv ]; then
  export SKIN_CORE_HAM10000_OOF="$(cd ../shared/data/ham10000-oof && pwd)/oof.csv"
fi
# Browser tests drive Debian's Chromium (Playwright cannot download browsers here).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "test: installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif [ "${CI:-}" = "true" ]; then
    echo "test: chromium is missing and cannot be installed (need root and apt-get)" >&2
    exit 2
  else
    echo "test: chromium not found; browser tests will be skipped (apt-get install chromium)"
  fi
fi
# Test caches and artefacts stay out of the source tree's tracked files.
export SKIN_CORE_CACHE_DIR="${SKIN_CORE_CACHE_DIR:-$PWD/.cache/test-images}"
mkdir -p artifacts

echo "test: ruff"
"$VENV/bin/ruff" check .
echo "test: pytest"
exec "$VENV/bin/python" -m pytest -n 2 --dist loadgroup "$@"
