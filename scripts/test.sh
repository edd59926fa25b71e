#!/usr/bin/env bash
# Sets up (scripts/setup.sh), type-checks (mypy) and runs the whole test suite, doctests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Type check (config: [tool.mypy] in pyproject.toml; strict on the public API) before the tests.
echo "== mypy: type-checking compatindex and cli"
if ! .venv/bin/python -m mypy; then
  echo "FAILED: mypy found type errors (see above); fix them before the tests run" >&2
  exit 1
fi
.venv/bin/python -m pytest -q -p no:cacheprovider tests --doctest-modules compatindex bench/datasets.py "$@"
