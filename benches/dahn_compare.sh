#!/usr/bin/env bash
# Times hopfield-rs DiffusedHopfield (dahn_timing) and PyTorch difflayers' DiffusedHopfield at the
# same shapes and prints ours/difflayers ratios (see benches/dahn_compare.py for the protocol).
# Needs the venv: python3 -m venv benches/.venv && benches/.venv/bin/pip install -r benches/requirements.txt
# Usage: benches/dahn_compare.sh [--cases s2048 self2048 b8x256 s100k] [--mem-gb 8] [--ours-exe PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release -p hopfield-benches --bin dahn_timing
exec benches/.venv/bin/python benches/dahn_compare.py "$@"
