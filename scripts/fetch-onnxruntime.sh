#!/usr/bin/env bash
# Puts the ONNX Runtime shared library (from the onnxruntime==1.31.1 wheel on PyPI) at
# .ort/libonnxruntime.so.1.31.1 in this checkout. No Python is needed at run time: the
# wheel is only a carrier for the library. Re-running is cheap: the wheel is cached.
set -euo pipefail
ORT_VERSION=1.31.1
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/.ort"
lib="$dest/libonnxruntime.so.$ORT_VERSION"
if [ -s "$lib" ]; then
  echo "onnxruntime $ORT_VERSION: $lib (already there)"
  exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/outpost/wheels"
mkdir -p "$cache" "$dest"
wheel="$(ls "$cache"/onnxruntime-$ORT_VERSION-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  echo "downloading the onnxruntime==$ORT_VERSION wheel from PyPI (about 17 MB)..."
  if command -v pip >/dev/null 2>&1; then PIP=pip; else PIP="python3 -m pip"; fi
  $PIP download --quiet --no-deps --only-binary=:all: -d "$cache" "onnxruntime==$ORT_VERSION"
  wheel="$(ls "$cache"/onnxruntime-$ORT_VERSION-*.whl | head -n1)"
fi
python3 - "$wheel" "$lib" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("capi/libonnxruntime.so.1.31.1")]
    if not names:
        sys.exit(f"{wheel} has no capi/libonnxruntime.so.1.31.1")
    with z.open(names[0]) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$lib.part" "$lib"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest/libonnxruntime.so"
echo "onnxruntime $ORT_VERSION: $lib"
