#!/usr/bin/env bash
# Creates the venv the analyze bench runs the Python pipeline in (`cargo bench --bench analyze`):
# onnxruntime, numpy, pillow and tokenizers from PyPI, pinned in scripts/bench-requirements.txt.
# Idempotent: an existing venv whose packages match the pins is left alone; otherwise it is
# (re)installed. Prints the venv's python path on stdout (the bench reads it).
#   scripts/fetch-bench-venv.sh [VENV_DIR]     default: $OUTPOST_BENCH_VENV or <repo>/../venv/bench
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${1:-${OUTPOST_BENCH_VENV:-$repo/../venv/bench}}"
reqs="$here/bench-requirements.txt"
python="${PYTHON:-python3}"

pins_ok() {
    [[ -x "$venv/bin/python" ]] || return 1
    local frozen
    frozen="$("$venv/bin/python" -m pip freeze 2>/dev/null)" || return 1
    while read -r line; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        grep -qix -- "$line" <<<"$frozen" || return 1
    done <"$reqs"
}

if ! pins_ok; then
    echo "setting up the bench venv in $venv (pinned: $reqs)" >&2
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" >&2
    pins_ok || { echo "the bench venv $venv does not match $reqs after installing" >&2; exit 1; }
fi
echo "$venv/bin/python"
