#!/usr/bin/env bash
# The whole learning loop, with the real binaries, on real Hurricane Harvey tiles:
#
#   1. a server starts on loopback with its embedded defaults (SQLite, keys, the default
#      land-cover model published); an agent enrolls;
#   2. the server goes away; the agent analyses tiles offline and a reviewer labels some of
#      them damage / no_damage (labels the default model does not know; scripted here from
#      the labelled folders in ../shared/data/damage); a sync is refused and nothing is lost;
#   3. the server returns; the agent syncs; the server retrains on its own, evaluates the
#      candidate against the current model, signs and publishes it;
#   4. the agent verifies, stages, checks and swaps the new model, and analyses again.
#
# It prints the accuracy before and after on tiles NOT used for feedback (other places:
# whole 0.01-degree cells are kept apart), and how long each step took.
#
#   bash scripts/loop-demo.sh                 # 150 feedback + 150 evaluation tiles per class
#   bash scripts/loop-demo.sh --tiles 30      # smaller (the integration test runs this)
#   bash scripts/loop-demo.sh --task          # damage / no_damage as a task of its own
#
# With --task the operator first defines a task, `damage` on the land-cover backbone
# (`outpost-server tasks define`); the same labels then train a model of its own, damage
# 1.0.0, which the agent installs beside landcover 1.0.0 (left untouched) and runs.
#
# Options: --tiles N (per class, 5..300), --work DIR (default: a fresh temporary folder,
# removed at the end unless --keep). Environment: OUTPOST_SHARED_DATA (default
# ../shared/data), OUTPOST_BIN_DIR (binaries to use; default: scripts/setup.sh builds
# target/release). Needs python3 (standard library only) to pick tiles and score results.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
TILES=150
WORK=""
KEEP=0
TASK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tiles) TILES="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --task) TASK=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$TILES" in ''|*[!0-9]*) echo "error: --tiles needs a number, got '$TILES'" >&2; exit 2 ;; esac
if [ "$TILES" -lt 5 ] || [ "$TILES" -gt 300 ]; then
  echo "error: --tiles must be between 5 and 300 (per class), got $TILES" >&2; exit 2
fi
DATA="${OUTPOST_SHARED_DATA:-$REPO/../shared/data}"
if [ ! -d "$DATA/damage/damage" ] || [ ! -d "$DATA/damage/no_damage" ]; then
  echo "error: the Harvey damage tiles were not found at $DATA/damage (damage/ and no_damage/)." >&2
  echo "Set OUTPOST_SHARED_DATA to the shared data folder and run this again." >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "error: python3 is needed to pick tiles and score results" >&2; exit 1; }

if [ -z "${OUTPOST_BIN_DIR:-}" ]; then
  bash scripts/setup.sh
  BIN="$REPO/target/release"
else
  BIN="$OUTPOST_BIN_DIR"
fi
for b in outpost outpost-server; do
  [ -x "$BIN/$b" ] || { echo "error: $BIN/$b not found (run scripts/setup.sh, or set OUTPOST_BIN_DIR)" >&2; exit 1; }
done
CREATED=0
if [ -z "$WORK" ]; then
  WORK="$(mktemp -d -t outpost-loop.XXXXXX)"
  CREATED=1
fi
mkdir -p "$WORK"
SERVER_DATA="$WORK/server"
AGENT_DATA="$WORK/agent"
SERVER_PID=""
cleanup_server() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi; }
trap 'cleanup_server; if [ "$CREATED" = 1 ] && [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi' EXIT

server() { "$BIN/outpost-server" --config "$WORK/server.toml" --data-dir "$SERVER_DATA" "$@"; }
# The agent uses the shipped models in models/ and the root of trust its operator handed
# over with the laptop (`update.root` in the config; /etc/outpost/root.json on an install).
agent() { OUTPOST__UPDATE__ROOT="$AGENT_DATA/root.json" "$BIN/outpost" --data-dir "$AGENT_DATA" --models-dir "$REPO/models" "$@"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

STEPS=()
T0=$(date +%s.%N)
step() { local t; t=$(date +%s.%N); STEPS+=("$(python3 -c "print(f'{$t - $T0:7.1f} s')")  $1"); T0=$t; echo "-- done: $1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_server() {
  # The binary itself in the background (not a shell function), so $! is the server.
  "$BIN/outpost-server" --config "$WORK/server.toml" --data-dir "$SERVER_DATA" \
    serve --listen "127.0.0.1:$PORT" >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 400); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server did not start: $(tail -5 "$WORK/server.log")"
    sleep 0.05
  done
  fail "the server did not answer on port $PORT"
}

echo "== 1. the server starts on loopback; an agent enrolls (work folder: $WORK)"
# Retrain on its own once all the labels of this run have arrived; publish to everyone.
cat > "$WORK/server.toml" <<EOF
[training]
auto_train_after = $((2 * TILES))
channel = "stable"
epochs = 20
EOF
server keys init --root-keys-dir "$WORK/root-keys" >/dev/null
server models publish "$REPO/models/landcover" --channel stable
if [ "$TASK" = 1 ]; then
  MODEL=damage; AFTER=1.0.0
  server tasks define damage --backbone landcover --labels damage,no_damage --channel stable
else
  MODEL=landcover; AFTER=1.1.0
fi
PORT=$(free_port)
start_server
mkdir -p "$AGENT_DATA"
cp "$SERVER_DATA/repo/tuf/1.root.json" "$AGENT_DATA/root.json"
CODE=$(server devices add --name laptop-1 --group north | awk 'length($1) == 24 && gsub(/-/, "-", $1) == 4 {print $1}' | head -n1)
[ -n "$CODE" ] || fail "no enrollment code from 'outpost-server devices add'"
agent enroll "http://127.0.0.1:$PORT" "$CODE"
step "server up (keys, landcover 1.0.0 published), agent enrolled"

echo "== 2. the server goes away; the agent works offline"
cleanup_server
python3 - "$DATA/damage" "$AGENT_DATA/tiles" "$AGENT_DATA/labels.csv" "$TILES" <<'PY'
# Feedback tiles and evaluation tiles from different places: file names are
# <lon>_<lat>.jpeg, and whole 0.01-degree cells go to one side or the other.
import hashlib, math, os, shutil, sys
src, dst, labels_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def cell(name):
    stem = os.path.splitext(name)[0]
    lon, _, lat = stem.partition("_")
    f = lambda v: math.floor(float(v or 0) * 100)
    return f"{f(lon)}:{f(lat)}"
rows = ["source,label"]
for cls in ("damage", "no_damage"):
    files = sorted(os.listdir(os.path.join(src, cls)))
    step = 2 if n > 100 else 7
    fb = ev = 0
    for name in files[::step]:
        to_eval = hashlib.sha256(cell(name).encode()).hexdigest()[0] in "0123"
        if to_eval and ev < n:
            os.makedirs(os.path.join(dst, "eval"), exist_ok=True)
            shutil.copy(os.path.join(src, cls, name), os.path.join(dst, "eval", f"{cls}-{ev}.jpeg"))
            ev += 1
        elif not to_eval and fb < n:
            os.makedirs(os.path.join(dst, "feedback"), exist_ok=True)
            shutil.copy(os.path.join(src, cls, name), os.path.join(dst, "feedback", f"{cls}-{fb}.jpeg"))
            rows.append(f"{cls}-{fb}.jpeg,{cls}")
            fb += 1
    if fb < n or ev < n:
        sys.exit(f"only {fb} feedback and {ev} evaluation tiles of {cls}; use a smaller --tiles")
open(labels_path, "w").write("\n".join(rows) + "\n")
print(f"picked {n} feedback and {n} evaluation tiles per class")
PY
agent analyze "$AGENT_DATA/tiles" --no-progress
step "offline: analyse $((4 * TILES)) tiles with landcover 1.0.0"
agent feedback import --allow-new-labels "$AGENT_DATA/labels.csv"
if agent sync >"$WORK/sync-offline.log" 2>&1; then fail "sync succeeded while the server was away"; fi
echo "sync while the server is away: refused, as expected ($(tail -n1 "$WORK/sync-offline.log"))"
pending() { agent status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["waiting_to_sync"])'; }
[ "$(pending)" = "$((2 * TILES))" ] || fail "expected $((2 * TILES)) decisions waiting, found $(pending)"
echo "$((2 * TILES)) decisions wait in the outbox"
step "offline: $((2 * TILES)) labels given (damage / no_damage), sync refused, nothing lost"

echo "== 3. the server returns; the agent syncs; the server retrains by itself"
start_server
agent sync
[ "$(pending)" = 0 ] || fail "decisions still waiting after sync: $(pending)"
step "server back, sync"
status=""
for _ in $(seq 1 1200); do
  status=$(server runs "$MODEL" | awk '$6 != "running" {print $6; exit}')
  [ -n "$status" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server stopped: $(tail -5 "$WORK/server.log")"
  sleep 0.5
done
[ -n "$status" ] || fail "no training run finished in 10 minutes"
server runs "$MODEL"
[ "$status" = published ] || fail "the candidate was $status, not published (see 'outpost-server models eval')"
if [ "$TASK" = 1 ]; then
  step "server: train the task, gate against majority and prior, sign, publish damage 1.0.0"
else
  step "server: retrain, evaluate against 1.0.0, sign, publish 1.1.0"
fi

echo "== 4. the agent verifies, swaps and analyses again"
agent update
installed=$(agent models list)
echo "$installed" | grep -q "$MODEL.*$AFTER" || fail "$MODEL $AFTER is not installed on the agent: $installed"
if [ "$TASK" = 1 ]; then
  echo "$installed" | grep -q "landcover.*1\.1\.0" && fail "landcover changed although the labels answer a task: $installed"
fi
step "agent: download, verify signatures and hashes, golden check, swap"
agent analyze "$AGENT_DATA/tiles/eval" --no-progress
step "agent: re-analyse the evaluation tiles with $MODEL $AFTER"

agent export --all --format csv --out "$WORK/results.csv" >/dev/null
echo
echo "== result"
python3 - "$WORK/results.csv" "$MODEL" "$AFTER" <<'PY'
import csv, os, sys
model, after = sys.argv[2], sys.argv[3]
acc = {}
for r in csv.DictReader(open(sys.argv[1], newline="")):
    if "/eval/" not in r["source"]:
        continue
    name = os.path.basename(r["source"])
    key = (r["model"], r["model_version"])
    right, n = acc.get(key, (0, 0))
    acc[key] = (right + name.startswith(r["top_label"] + "-"), n + 1)
b, a = acc.get(("landcover", "1.0.0"), (0, 0)), acc.get((model, after), (0, 0))
print(f"accuracy on {a[1]} tiles not used for feedback: before {b[0] / max(b[1], 1):.3f} "
      f"(landcover 1.0.0 does not know damage / no_damage), after {a[0] / max(a[1], 1):.3f} ({model} {after})")
PY
echo "time per step:"
for s in "${STEPS[@]}"; do echo "  $s"; done
