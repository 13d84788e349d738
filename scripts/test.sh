#!/usr/bin/env bash
# The test command: fetches what the tests need, checks formatting and lints, runs every
# test. Tests that read ../shared/data skip with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-onnxruntime.sh
export OUTPOST_ORT_LIB="$PWD/.ort/libonnxruntime.so.1.31.1"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
