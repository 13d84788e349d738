#!/usr/bin/env bash
# Prepares the public TUF conformance suite (theupdateframework/tuf-conformance, MIT,
# vendored at ../shared/third_party/tuf-conformance) for scripts/test.sh: a venv in
# .venv-tuf/ with the suite's pinned PyPI dependencies (python-tuf and securesystemslib
# are also used by tests/tuf_interop.rs) and Debian's `faketime`. Idempotent. Prints the
# suite's folder on success.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.venv-tuf"
PINS=(securesystemslib[crypto]==1.4.0 tuf==7.0.0 pytest==9.1.1 pytest-json-report==1.5.0)
# The suite: next to this checkout, or next to the repository it was cloned from.
suite="${OUTPOST_TUF_CONFORMANCE:-}"
if [ -z "$suite" ]; then
  origin="$(git config --get remote.origin.url 2>/dev/null || true)"
  for cand in "$PWD/../shared/third_party/tuf-conformance" "${origin%/}/../shared/third_party/tuf-conformance" /work/shared/third_party/tuf-conformance; do
    if [ -f "$cand/tuf_conformance/conftest.py" ]; then suite="$(cd "$cand" && pwd)"; break; fi
  done
fi
if [ -z "$suite" ]; then
  echo "error: the TUF conformance suite was not found (looked in ../shared/third_party/tuf-conformance); set OUTPOST_TUF_CONFORMANCE" >&2
  exit 1
fi
if ! command -v faketime >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing faketime for the TUF conformance suite..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime) >/dev/null
  else
    echo "error: faketime missing; install it: sudo apt-get install faketime" >&2
    exit 1
  fi
fi
if ! "$VENV/bin/python" -c "import tuf, securesystemslib, pytest, pytest_jsonreport, sys; sys.exit(tuf.__version__ != '7.0.0')" 2>/dev/null; then
  echo "installing the TUF conformance suite's dependencies into .venv-tuf/ ..." >&2
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
fi
echo "$suite"
