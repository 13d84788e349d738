#!/usr/bin/env bash
# Rebuild one default model bundle:  models/recipes/build.sh <landcover|crisis-reports|crisis-reports-2> [recipe options]
# (crisis-reports-static: 1.1.0's backbone statically quantised so reports can be batched; writes the
#  bundle only with --out, and only if test F1 is not below 1.1.0's; see models/README.md)
# (field-labels-baseline: the scikit-learn recipe `cargo bench --bench field_labels` runs beside Outpost's training)
# (crisis-reports: the shipped English 1.1.0 recipe; crisis-reports-2: the multilingual 2.0 candidate, written to the
#  scratch folder, not to models/, until it meets the goals of issue 20; see models/README.md)
#
# Creates a venv (default: <repo>/../venv/recipes, override with OUTPOST_RECIPE_VENV) from
# requirements.txt if it does not exist yet, then runs the recipe. The data folder defaults to
# <repo>/../shared/data (override with --data-dir). Scratch files go to OUTPOST_RECIPE_WORK
# (default /tmp/outpost-recipes). Needs ~6 GB of disk for the venv (torch from PyPI is the CUDA build).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${OUTPOST_RECIPE_VENV:-$repo/../venv/recipes}"
python="${PYTHON:-python3}"

if [[ $# -lt 1 ]]; then
    echo "usage: $0 <landcover|crisis-reports|crisis-reports-2> [recipe options]" >&2
    exit 2
fi
bundle="$1"; shift
case "$bundle" in
    landcover) recipe="$here/landcover.py" ;;
    crisis-reports) recipe="$here/crisis_reports.py" ;;
    crisis-reports-2) recipe="$here/crisis_reports_ml.py" ;;
    crisis-reports-static) recipe="$here/crisis_reports_static.py" ;;
    field-labels-baseline) recipe="$here/field_labels_baseline.py" ;;
    *) echo "unknown bundle '$bundle' (expected landcover, crisis-reports, crisis-reports-2, crisis-reports-static or field-labels-baseline)" >&2; exit 2 ;;
esac

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating venv $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip >&2
    "$venv/bin/pip" install -r "$here/requirements.txt" >&2
fi

# Two cores are assumed; torch and ONNX Runtime are limited to 2 threads by the recipes.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
cd "$repo"
exec "$venv/bin/python" "$recipe" "$@"
