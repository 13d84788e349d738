#!/usr/bin/env bash
# One-time set-up of a source checkout: the ONNX Runtime library (from PyPI's
# onnxruntime==1.31.1 wheel) and a release build of both binaries. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust (https://rustup.rs) and run this again." >&2
  exit 1
fi
bash scripts/fetch-onnxruntime.sh
echo "building outpost (release; the first build takes about 6 minutes on 2 cores)..."
cargo build --release --locked --bins
# The agent looks for the runtime next to its binary, among other places.
cp -f .ort/libonnxruntime.so.1.31.1 target/release/
echo "ready: target/release/outpost and target/release/outpost-server"
