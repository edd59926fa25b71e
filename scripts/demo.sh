#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: the Fashion-MNIST upgrade demo, embedded index.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m bench.demo "$@"
