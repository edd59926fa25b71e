#!/usr/bin/env bash
# Sets up everything compatindex needs on a fresh machine: a venv in .venv with the CPU build of
# torch, faiss-cpu and the dev tools, plus the Debian data packages the demo and tests read.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch (or one pulled by another package) is a multi-GB CUDA build.
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[cpu,train,io,qdrant,dev]"
# Real data from Debian packages (no download at run time): Fashion-MNIST images and WordNet, read
# by the demo, the benchmarks and the tests marked `data` (bench/README.md, "What it installs").
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
