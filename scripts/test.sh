#!/usr/bin/env bash
# The test command: fetches what the tests need, checks formatting and lints, runs every
# test. Tests that read ../shared/data skip with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-onnxruntime.sh
# The review page is tested in a real headless Chromium (Debian's packages).
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver for the browser tests..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
  else
    echo "warning: chromium/chromedriver missing; the browser test will fail. Install: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
export OUTPOST_ORT_LIB="$PWD/.ort/libonnxruntime.so.1.31.1"
# PostgreSQL runs on the CI machine: its storage tests must run, not skip.
export OUTPOST_REQUIRE_POSTGRES="${OUTPOST_REQUIRE_POSTGRES:-1}"
# The S3 blob store is tested against moto's S3 server (PyPI, installed into .venv-moto/):
# it must be installable here, so its tests cannot silently skip.
bash scripts/fetch-moto.sh >/dev/null
export OUTPOST_REQUIRE_S3="${OUTPOST_REQUIRE_S3:-1}"
# The TUF conformance suite and python-tuf (PyPI, into .venv-tuf/) plus Debian's faketime:
# tests/tuf_interop.rs uses python-tuf, and the suite runs after the tests, below.
bash scripts/fetch-tuf-conformance.sh >/dev/null
export OUTPOST_REQUIRE_TUF="${OUTPOST_REQUIRE_TUF:-1}"
# The shared data (../shared/data next to this checkout, or next to the repository it was
# cloned from, as a CI clone in a temporary folder is): its tests must run, not skip.
# OUTPOST_REQUIRE_SHARED_DATA=0 lets a newcomer without it skip them, with a message.
if [ -z "${OUTPOST_SHARED_DATA:-}" ]; then
  origin="$(git config --get remote.origin.url 2>/dev/null || true)"
  for cand in "$PWD/../shared/data" "${origin%/}/../shared/data" /work/shared/data; do
    if [ -d "$cand" ]; then
      OUTPOST_SHARED_DATA="$(cd "$cand" && pwd)"
      export OUTPOST_SHARED_DATA
      break
    fi
  done
fi
export OUTPOST_REQUIRE_SHARED_DATA="${OUTPOST_REQUIRE_SHARED_DATA:-1}"
echo "shared data: ${OUTPOST_SHARED_DATA:-not found} (required: $OUTPOST_REQUIRE_SHARED_DATA)"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
# The public TUF conformance suite (theupdateframework/tuf-conformance) against the agent's
# TUF client, with only the expected failures of scripts/tuf-conformance/client.xfails.
bash scripts/tuf-conformance.sh
