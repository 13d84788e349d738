#!/usr/bin/env bash
# The main job on the defaults: set up, then analyze a sample of real Sentinel-2 tiles,
# a real GeoTIFF scene and real crisis messages from ../shared/data with the default
# models in models/, offline. Results go to demo-output/ (a database, GeoJSON for QGIS, CSV).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${OUTPOST_SHARED_DATA:-../shared/data}"
if [ ! -d "$DATA/eurosat" ] || [ ! -f "$DATA/crisis_text/messages.csv" ]; then
  echo "error: the shared data folder was not found at $DATA (expected eurosat/ and crisis_text/messages.csv)." >&2
  echo "Set OUTPOST_SHARED_DATA to its path and run this again." >&2
  exit 1
fi
bash scripts/setup.sh
OUT=demo-output
rm -rf "$OUT" && mkdir -p "$OUT"

# 25 tiles of each EuroSAT class (the first by name: deterministic), one Landsat scene
# in UTM with a nodata border, and 400 crisis messages.
tiles=()
for class_dir in "$DATA"/eurosat/*/; do
  while IFS= read -r f; do tiles+=("$f"); done < <(ls "$class_dir"*.jpg | sort | head -n 25)
done
python3 - "$DATA/crisis_text/messages.csv" "$OUT/reports-sample.csv" <<'PY'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as src, open(sys.argv[2], "w", newline="", encoding="utf-8") as dst:
    r = csv.DictReader(src)
    w = csv.writer(dst)
    w.writerow(["id", "message"])
    for i, row in enumerate(r):
        if i >= 400:
            break
        w.writerow([row["id"], row["message"]])
PY

echo
echo "== outpost analyze (offline: no network is used) =="
set +e
target/release/outpost --data-dir "$OUT/data" analyze \
  "${tiles[@]}" "$DATA/geotiff/RGB.byte.tif" "$OUT/reports-sample.csv" \
  --out "$OUT/results.geojson"
status=$?
set -e
target/release/outpost --data-dir "$OUT/data" export --format csv --out "$OUT/results.csv"
echo
echo "Database:       $OUT/data/agent.db"
echo "Map layer:      $OUT/results.geojson (open in QGIS: Layer > Add Layer > Add Vector Layer)"
echo "Table:          $OUT/results.csv"
if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then exit "$status"; fi
