#!/usr/bin/env bash
# Runs the public TUF conformance suite (tuf-conformance, ../shared/third_party) against the
# agent's TUF client: builds outpost-tuf-client, prepares the suite's venv and faketime
# (scripts/fetch-tuf-conformance.sh), then runs every test. Expected failures: only those in
# scripts/tuf-conformance/client.xfails (reasons in the README's update section).
# Extra arguments go to pytest (e.g. -k test_root_rotation -rA). OUTPOST_TUF_COMPARE=1 also
# runs the suite's reference client (python-tuf's ngclient, clients/python-tuf) in the same
# run, for a side-by-side count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
suite="$(bash scripts/fetch-tuf-conformance.sh)"
cargo build --locked --bin outpost-tuf-client
entry="$PWD/scripts/tuf-conformance/client"
cd "$suite"
# The suite's folder is shared and read-only to us: no caches or bytecode written into it.
venv="$OLDPWD/.venv-tuf"
run() {
  local start=$SECONDS
  PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest tuf_conformance \
    -p no:cacheprovider -q --entrypoint "$1" "${@:2}"
  echo "conformance run with $1 took $((SECONDS - start)) s"
}
if [ "${OUTPOST_TUF_COMPARE:-0}" = 1 ]; then
  # The reference client is a Python script: it needs the venv's python-tuf on its PATH.
  PATH="$venv/bin:$PATH" run "$suite/clients/python-tuf/python_tuf.py" "$@" || true
fi
run "$entry" "$@"
