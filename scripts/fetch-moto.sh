#!/usr/bin/env bash
# Installs moto's S3-compatible server (moto_server, from PyPI) into .venv-moto/ for the
# object-store test (tests/blob_s3.rs). Idempotent: does nothing when the pinned version is
# already there. Prints the path of moto_server on success.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_VERSION=5.2.5
VENV="$PWD/.venv-moto"
if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "$VENV/bin/moto_server"
  exit 0
fi
echo "installing moto[server]==$MOTO_VERSION into .venv-moto/ ..." >&2
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
"$VENV/bin/moto_server" --help >/dev/null
echo "$VENV/bin/moto_server"
