#!/usr/bin/env bash
# Makes the offline installation bundle: one archive, outpost-<version>-linux-<arch>.tar.gz,
# with everything needed to install the agent or the server on a machine with no network at
# all: both binaries, the ONNX Runtime library, the default models, the installer scripts,
# the example configuration and a SHA256SUMS file that install.sh checks before anything.
#
#   bash installer/make-bundle.sh                 # release build, then target/dist/*.tar.gz
#   bash installer/make-bundle.sh --no-build      # package what target/release/ holds
#
# Run it in a source checkout (it may build and fetch ONNX Runtime, so it needs the network
# unless both are already there). See installer/README.md.
set -euo pipefail

# Keep in step with src/model/runtime.rs (tests/installer.rs checks it).
ORT_VERSION=1.31.1
ORT_LIB="libonnxruntime.so.$ORT_VERSION"

usage() {
  cat <<'EOF'
Usage: make-bundle.sh [options]

Options:
  --out DIR             where the archive goes (default: target/dist of the checkout)
  --no-build            do not run cargo build --release; package target/release/ as it is
  --from-binaries DIR   package the binaries in DIR (implies --no-build)
  --models-from DIR     package the model bundles in DIR (default: models/)
  --ort-lib FILE        package this ONNX Runtime library (default: .ort/, fetched if missing)
  --folder-only         leave the unpacked bundle folder in --out instead of an archive
  -h, --help            this help
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
top=$(cd -- "$here/.." && pwd)
out=$top/target/dist build=1 bins=$top/target/release models=$top/models lib="" folder_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out | --from-binaries | --models-from | --ort-lib)
      if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
      case "$1" in
        --out) out=$2 ;;
        --from-binaries)
          bins=$2
          build=0
          ;;
        --models-from) models=$2 ;;
        --ort-lib) lib=$2 ;;
      esac
      shift
      ;;
    --no-build) build=0 ;;
    --folder-only) folder_only=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n 1)
[ -n "$version" ] || die "no version in $top/Cargo.toml"
name="outpost-$version-linux-$(uname -m)"

if [ "$build" = 1 ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs), or pass --no-build"
  echo "building the release binaries (about 6 minutes on 2 cores the first time)..."
  (cd -- "$top" && cargo build --release --locked --bins)
fi
if [ -z "$lib" ]; then
  lib=$top/.ort/$ORT_LIB
  [ -s "$lib" ] || bash "$top/scripts/fetch-onnxruntime.sh"
fi
[ -s "$lib" ] || die "the ONNX Runtime library $lib is missing"
for b in outpost outpost-server; do
  [ -x "$bins/$b" ] || die "no $b binary in $bins: build it (cargo build --release) or pass --from-binaries DIR"
  v=$("$bins/$b" --version | sed -n 's/^[^ ]* //p')
  [ "$v" = "$version" ] || die "$bins/$b is version '$v' but Cargo.toml says $version: rebuild it"
done
bundles=()
for d in "$models"/*/; do
  if [ -f "$d/manifest.json" ]; then bundles+=("${d%/}"); fi
done
[ ${#bundles[@]} -gt 0 ] || die "no model bundles (folders with manifest.json) in $models; pass --models-from DIR"

mkdir -p -- "$out"
out=$(cd -- "$out" && pwd)
stage=$out/$name
rm -rf -- "$stage"
mkdir -p -- "$stage/bin" "$stage/lib" "$stage/models" "$stage/config"
install -m 0755 -- "$bins/outpost" "$bins/outpost-server" "$stage/bin/"
install -m 0644 -- "$lib" "$stage/lib/$ORT_LIB"
cp -RL -- "${bundles[@]}" "$stage/models/"
install -m 0644 -- "$top/config/agent.toml" "$top/config/server.toml" "$stage/config/"
install -m 0755 -- "$here/install.sh" "$here/uninstall.sh" "$stage/"
install -m 0644 -- "$here/README.md" "$here/outpost-agent.service" "$here/outpost-server.service" "$stage/"
chmod -R u=rwX,go=rX -- "$stage/models"
echo "$version" >"$stage/VERSION"
sums=$out/.SHA256SUMS.$$
(cd -- "$stage" && find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs -d '\n' sha256sum) >"$sums"
mv -f -- "$sums" "$stage/SHA256SUMS"

if [ "$folder_only" = 1 ]; then
  echo "bundle folder: $stage"
  exit 0
fi
archive=$out/$name.tar.gz
tar --owner=0 --group=0 --numeric-owner --sort=name -C "$out" -czf "$archive.partial" "$name"
mv -f -- "$archive.partial" "$archive"
(cd -- "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
rm -rf -- "$stage"
cat <<EOF
bundle: $archive ($(du -h "$archive" | cut -f1))
sha256: $(cut -d' ' -f1 "$archive.sha256") (also in $archive.sha256)
models: $(for b in "${bundles[@]}"; do basename -- "$b"; done | tr '\n' ' ')
On the target machine (no network needed):
  tar xzf $name.tar.gz && sudo bash $name/install.sh agent     # or: server
EOF
