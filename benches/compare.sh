#!/usr/bin/env bash
# Times hopfield-rs and PyTorch hflayers at the same shapes and prints ours/PyTorch ratios.
# Needs the venv: python3 -m venv benches/.venv && benches/.venv/bin/pip install -r benches/requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hopfield-benches --bin hopfield_timing
exec benches/.venv/bin/python benches/hflayers_compare.py "$@"
