#!/bin/sh
# The CUDA kernels of entmax (kernels/entmax.cu) run on the host, one OS thread per CUDA thread,
# and checked against the `entmax` package: a check of the kernel logic where no GPU is present
# (docs/sparse-hopfield.md). Needs g++ (C++20) and a Python with torch and entmax (PYTHON, by
# default the benches' venv that benches/export_entmax.py uses).
set -e
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
g++ -std=c++20 -O1 -pthread -I. -w sim.cpp -o "$out/sim"
"${PYTHON:-../../../../benches/.venv/bin/python}" check.py "$out/sim"
