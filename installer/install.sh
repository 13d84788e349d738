#!/usr/bin/env bash
# Installs the Outpost field agent or central server on this Linux machine, or upgrades an
# installation in place (data and configuration are kept). Works with no network at all.
#
#   sudo bash install.sh agent            # system-wide: /usr/local, /etc/outpost, /var/lib, systemd
#   sudo bash install.sh server
#   bash install.sh agent --prefix DIR    # everything under DIR; no system user, no systemctl
#
# Run it from an unpacked bundle (made by installer/make-bundle.sh; its SHA256SUMS is checked
# first) or from a source checkout after `bash scripts/setup.sh`. See installer/README.md.
set -euo pipefail

# Keep in step with src/model/runtime.rs (tests/installer.rs checks it).
ORT_VERSION=1.31.1
ORT_LIB="libonnxruntime.so.$ORT_VERSION"

usage() {
  cat <<'EOF'
Usage: install.sh agent|server [options]

Installs (or upgrades in place) the Outpost agent or server.

Options:
  --prefix DIR          install everything under DIR (DIR/usr/local/bin, DIR/etc/outpost,
                        DIR/var/lib/...); no system user is created and systemctl is not called
  --systemd             with --prefix: still create the system user and enable the service
  --from-binaries DIR   take the outpost/outpost-server binaries from DIR
                        (default: the bundle's bin/, or target/release/ of a source checkout)
  --models-from DIR     take the model bundles from DIR (default: the bundle's or checkout's models/)
  --ort-lib FILE        take the ONNX Runtime library from FILE
                        (default: the bundle's lib/, or .ort/ of a source checkout)
  --encrypt             agent, unattended boxes: encrypt the data folder with a key sealed
                        by systemd-creds (TPM2 where there is one, else the host key; needs
                        root), and hand it to the service with LoadCredentialEncrypted=.
                        Laptops use `outpost encrypt --passphrase` instead (README)
  -h, --help            this help
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

role="" prefix="" force_systemd=0 from_binaries="" models_from="" ort_lib="" encrypt=0
while [ $# -gt 0 ]; do
  case "$1" in
    agent | server)
      [ -z "$role" ] || die "give one role: agent or server"
      role=$1
      ;;
    --prefix | --from-binaries | --models-from | --ort-lib)
      if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
      case "$1" in
        --prefix) prefix=$2 ;;
        --from-binaries) from_binaries=$2 ;;
        --models-from) models_from=$2 ;;
        --ort-lib) ort_lib=$2 ;;
      esac
      shift
      ;;
    --systemd) force_systemd=1 ;;
    --encrypt) encrypt=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
if [ -z "$role" ]; then
  usage >&2
  exit 2
fi
if [ "$encrypt" = 1 ]; then
  [ "$role" = agent ] || die "--encrypt is for the agent (the server's data lives at headquarters)"
  [ "$(id -u)" = 0 ] || die "--encrypt seals the key with systemd-creds, which needs root: run it with sudo"
  command -v systemd-creds >/dev/null 2>&1 || die "--encrypt needs systemd-creds (systemd 250 or newer); on a laptop use \`outpost encrypt --passphrase\` after installing"
fi

# --- Where things go ------------------------------------------------------------------
# With --prefix DIR the same tree is mirrored below DIR, and every path written into the
# configuration and the service unit points inside DIR, so the installation runs from there.
check_prefix() {
  case "$1" in
    *[!A-Za-z0-9._/+-]*) die "the prefix $1 may only contain letters, digits and . _ / + - (it is written into the config and the service unit)" ;;
  esac
}
root=""
if [ -n "$prefix" ]; then
  check_prefix "$prefix"
  mkdir -p -- "$prefix"
  root=$(cd -- "$prefix" && pwd)
  root=${root%/}
  check_prefix "$root"
fi
BIN_DIR=$root/usr/local/bin
LIB_DIR=$root/usr/local/lib/outpost
SHARE_DIR=$root/usr/local/share/outpost
MODELS_DIR=$SHARE_DIR/models
CONF_DIR=$root/etc/outpost
UNIT_DIR=$root/etc/systemd/system
if [ "$role" = agent ]; then
  BIN=outpost SVC_USER=outpost DATA_DIR=$root/var/lib/outpost
  CONF=agent.toml UNIT=outpost-agent.service DATA_MODE=2770
else
  BIN=outpost-server SVC_USER=outpost-server DATA_DIR=$root/var/lib/outpost-server
  CONF=server.toml UNIT=outpost-server.service DATA_MODE=0750
fi

# System mode: a system user owns the data and systemd runs the service.
system=0
if [ -z "$prefix" ] || [ "$force_systemd" = 1 ]; then system=1; fi
if [ "$system" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "installing system-wide needs root: run it with sudo, or install under a folder with --prefix DIR"
fi
for tool in sha256sum install cmp sed; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (it is part of coreutils/sed); install it and run this again"
done

# --- Where things come from -----------------------------------------------------------
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
if [ -f "$here/SHA256SUMS" ] || [ -d "$here/bin" ]; then
  # An unpacked bundle: refuse it if anything differs from what was packed.
  [ -f "$here/SHA256SUMS" ] || die "this bundle has no SHA256SUMS file, so it cannot be checked; unpack the archive again"
  if ! mismatch=$(cd -- "$here" && sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
    {
      echo "error: this bundle does not match its SHA256SUMS: files were damaged in transfer or changed:"
      printf '%s\n' "$mismatch" | sed 's/^/  /'
      echo "Nothing was installed. Copy the archive again (compare it with its .sha256 file) and unpack it afresh."
    } >&2
    exit 1
  fi
  src_bin=$here/bin src_lib=$here/lib/$ORT_LIB src_models=$here/models src_conf=$here/config
  from="the bundle $here"
else
  top=$(cd -- "$here/.." && pwd)
  src_bin=$top/target/release src_lib=$top/.ort/$ORT_LIB src_models=$top/models src_conf=$top/config
  from="the source checkout $top"
fi
src_bin=${from_binaries:-$src_bin}
src_lib=${ort_lib:-$src_lib}
src_models=${models_from:-$src_models}

[ -x "$src_bin/$BIN" ] || die "no $BIN binary in $src_bin. In a source checkout build it first (bash scripts/setup.sh), or pass --from-binaries DIR"
version=$("$src_bin/$BIN" --version 2>/dev/null | sed -n 's/^[^ ]* //p') ||
  die "$src_bin/$BIN does not run on this machine (another CPU architecture or C library?)"
[ -n "$version" ] || die "$src_bin/$BIN --version printed no version; is it an Outpost binary?"
[ -s "$src_lib" ] || die "the ONNX Runtime library $src_lib is missing. In a source checkout run bash scripts/fetch-onnxruntime.sh, or pass --ort-lib FILE ($ORT_LIB from the onnxruntime==$ORT_VERSION wheel)"
[ -f "$src_conf/$CONF" ] || die "the example configuration $src_conf/$CONF is missing"
for f in "$UNIT" uninstall.sh README.md; do
  [ -f "$here/$f" ] || die "$here/$f is missing; unpack the bundle (or check out the source) again"
done
bundles=()
for d in "$src_models"/*/; do
  if [ -f "$d/manifest.json" ]; then bundles+=("${d%/}"); fi
done
if [ ${#bundles[@]} = 0 ]; then
  [ "$role" = server ] || die "no model bundles (folders with manifest.json) in $src_models; pass --models-from DIR"
  echo "note: no model bundles in $src_models; the installed models (if any) are left as they are"
fi

upgrade=0
if [ -e "$BIN_DIR/$BIN" ]; then upgrade=1; fi
if [ "$upgrade" = 1 ]; then
  echo "Upgrading the Outpost $role in place to $version from $from (data and configuration are kept)"
else
  echo "Installing the Outpost $role $version from $from"
fi

# --- Helpers --------------------------------------------------------------------------
# Copies a file next to its destination, then renames it over: a running agent keeps the
# old file it has open, and nobody ever sees half a file.
put_file() { # src dest mode
  local tmp
  tmp="$(dirname -- "$2")/.$(basename -- "$2").new.$$"
  install -m "$3" -- "$1" "$tmp"
  mv -f -- "$tmp" "$2"
}

# Fills the @...@ placeholders of a unit template.
render_unit() { # template
  sed -e "s|@BIN_DIR@|$BIN_DIR|g" -e "s|@CONF_DIR@|$CONF_DIR|g" -e "s|@DATA_DIR@|$DATA_DIR|g" \
    -e "s|@SHARE_DIR@|$SHARE_DIR|g" -e "s|@USER@|$SVC_USER|g" "$1"
}

# The example configuration with this installation's paths written explicitly.
render_config() {
  local body
  body=$(sed -E -e "s|^#? ?data_dir = .*|data_dir = \"$DATA_DIR\"|" \
    -e "s|^#? ?models_dir = .*|models_dir = \"$MODELS_DIR\"|" \
    -e "s|^#? ?library = .*|# library = \"$LIB_DIR/$ORT_LIB\"  (found there without this line)|" \
    "$src_conf/$CONF")
  echo "# Installed by Outpost's install.sh. Upgrades never overwrite this file: they write the"
  echo "# new default next to it as $CONF.new. The comments below explain every key."
  echo
  # Should the example ever lose its data_dir/models_dir lines, set them here (before any table).
  grep -q '^data_dir = ' <<<"$body" || echo "data_dir = \"$DATA_DIR\""
  if [ "$role" = agent ]; then
    grep -q '^models_dir = ' <<<"$body" || echo "models_dir = \"$MODELS_DIR\""
  fi
  printf '%s\n' "$body"
}

# --- Install --------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

if [ "$system" = 1 ] && ! getent passwd "$SVC_USER" >/dev/null; then
  command -v useradd >/dev/null 2>&1 || die "useradd is missing (package passwd); cannot create the system user $SVC_USER"
  nologin=/usr/sbin/nologin
  [ -x "$nologin" ] || nologin=/sbin/nologin
  [ -x "$nologin" ] || nologin=/bin/false
  useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home \
    --shell "$nologin" --comment "Outpost $role" "$SVC_USER"
  echo "created the system user $SVC_USER"
fi

install -d -m 0755 "$BIN_DIR" "$LIB_DIR" "$SHARE_DIR" "$CONF_DIR" "$UNIT_DIR"
put_file "$src_bin/$BIN" "$BIN_DIR/$BIN" 0755
put_file "$src_lib" "$LIB_DIR/$ORT_LIB" 0644
put_file "$here/uninstall.sh" "$SHARE_DIR/uninstall.sh" 0755
put_file "$here/README.md" "$SHARE_DIR/README.md" 0644

# Models: the whole folder is replaced (staged next to it, then swapped).
if [ ${#bundles[@]} -gt 0 ]; then
  stage="$SHARE_DIR/.models.new.$$" old="$SHARE_DIR/.models.old.$$"
  rm -rf -- "$stage"
  mkdir -p -- "$stage"
  cp -RL -- "${bundles[@]}" "$stage/"
  chmod -R u=rwX,go=rX -- "$stage"
  if [ -d "$MODELS_DIR" ]; then mv -- "$MODELS_DIR" "$old"; fi
  mv -- "$stage" "$MODELS_DIR"
  rm -rf -- "$old"
fi

# Configuration: written once, never overwritten.
render_config >"$work/$CONF"
conf_note=""
if [ ! -e "$CONF_DIR/$CONF" ]; then
  put_file "$work/$CONF" "$CONF_DIR/$CONF" 0644
  conf_note="written"
elif cmp -s "$work/$CONF" "$CONF_DIR/$CONF"; then
  conf_note="kept (already the default)"
else
  put_file "$work/$CONF" "$CONF_DIR/$CONF.new" 0644
  conf_note="kept as it is; the new default is $CONF_DIR/$CONF.new (compare: diff -u $CONF_DIR/$CONF $CONF_DIR/$CONF.new)"
fi

# Data: created once, never touched again (except its owner and mode in system mode).
new_data=0
if [ ! -d "$DATA_DIR" ]; then new_data=1; fi
if [ "$system" = 1 ]; then
  install -d -m "$DATA_MODE" -o "$SVC_USER" -g "$SVC_USER" "$DATA_DIR"
  if [ "$new_data" = 1 ]; then
    # Create the database now, owned by the service user (group-writable for the agent, so
    # staff in the outpost group can run the CLI next to the service).
    init=(status)
    if [ "$role" = server ]; then init=(devices list); fi
    if ! log=$("$BIN_DIR/$BIN" --config "$CONF_DIR/$CONF" "${init[@]}" 2>&1); then
      die "the installed $BIN could not create its database in $DATA_DIR:"$'\n'"$log"
    fi
    if [ "$role" = agent ]; then chmod 0660 "$DATA_DIR/agent.db"; fi
    chown -R "$SVC_USER:$SVC_USER" "$DATA_DIR"
  fi
else
  install -d -m 0750 "$DATA_DIR"
fi

render_unit "$here/$UNIT" >"$work/$UNIT"
put_file "$work/$UNIT" "$UNIT_DIR/$UNIT" 0644

# Encryption at rest for an unattended box: the data key sealed by systemd-creds, unsealed by
# systemd for the service (the service user cannot read the host key itself).
encrypt_note=""
if [ "$encrypt" = 1 ]; then
  if [ -f "$DATA_DIR/data-key.json" ]; then
    encrypt_note="already encrypted (kept)"
  else
    if ! log=$("$BIN_DIR/$BIN" --config "$CONF_DIR/$CONF" encrypt --systemd-creds 2>&1); then
      die "could not encrypt $DATA_DIR:"$'\n'"$log"
    fi
    printf '%s\n' "$log"
    encrypt_note="encrypted; key sealed in $DATA_DIR/data-key.cred (write down the recovery key above)"
  fi
  if [ "$system" = 1 ]; then chown -R "$SVC_USER:$SVC_USER" "$DATA_DIR"; fi
  install -d -m 0755 "$UNIT_DIR/$UNIT.d"
  printf '%s\n' "# Written by install.sh --encrypt: systemd unseals the data key for the service." \
    "[Service]" "LoadCredentialEncrypted=outpost-data-key:$DATA_DIR/data-key.cred" >"$work/encryption.conf"
  put_file "$work/encryption.conf" "$UNIT_DIR/$UNIT.d/encryption.conf" 0644
fi

run_as="$BIN_DIR/$BIN --config $CONF_DIR/$CONF"
service_note="not enabled (installed under --prefix; add --systemd to enable it)"
if [ "$system" = 1 ]; then
  run_as="sudo -u $SVC_USER $run_as"
  # A unit under --prefix is linked where systemd looks for it.
  if [ -n "$root" ] && [ -d /etc/systemd/system ]; then ln -sfn "$UNIT_DIR/$UNIT" "/etc/systemd/system/$UNIT"; fi
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT"
    if systemctl restart "$UNIT"; then
      service_note="enabled and running (systemctl status $UNIT; journalctl -u $UNIT)"
    else
      service_note="enabled, but it did not start: see journalctl -u $UNIT"
    fi
  else
    service_note="systemd is not running here, so nothing was started; start it with: runuser -u $SVC_USER -- $BIN_DIR/$BIN --config $CONF_DIR/$CONF $([ "$role" = agent ] && echo run || echo serve)"
  fi
fi

# --- Report ---------------------------------------------------------------------------
models_note="(none)"
if [ -d "$MODELS_DIR" ]; then
  models_note="$MODELS_DIR ($(cd -- "$MODELS_DIR" && find . -mindepth 2 -maxdepth 2 -name manifest.json | sed 's|^\./||; s|/manifest.json$||' | sort | tr '\n' ' ' | sed 's/ $//'))"
fi
cat <<EOF

Outpost $role $version $([ "$upgrade" = 1 ] && echo upgraded || echo installed).
  binary:   $BIN_DIR/$BIN
  runtime:  $LIB_DIR/$ORT_LIB
  models:   $models_note
  config:   $CONF_DIR/$CONF: $conf_note
  data:     $DATA_DIR$([ "$new_data" = 1 ] || echo " (kept)")${encrypt_note:+; $encrypt_note}
  service:  $UNIT_DIR/$UNIT: $service_note
  remove:   $([ "$system" = 1 ] && echo "sudo ")bash $SHARE_DIR/uninstall.sh $role${prefix:+ --prefix $root} (keeps data and config; --purge removes them)
EOF
echo
if [ "$role" = agent ]; then
  echo "Next step: enroll this device with the one-time code from your operator:"
  echo "  $run_as enroll <server-url> <code>"
  echo "Then check the installation: $run_as doctor"
  if [ "$system" = 1 ]; then
    echo "To run outpost commands as yourself, join its group: sudo usermod -aG $SVC_USER \$USER (then log in again)."
    echo "The review page is http://127.0.0.1:8470/ while the service runs."
  fi
else
  echo "Next step: register each field device; give its operator the printed code:"
  echo "  $run_as devices add --name laptop-07 --group north"
  echo "The API listens on the address in $CONF_DIR/$CONF (listen, default 127.0.0.1:8480);"
  echo "put a TLS-terminating reverse proxy in front of it for agents on a public network."
fi
