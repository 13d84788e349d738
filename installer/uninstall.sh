#!/usr/bin/env bash
# Removes an Outpost agent or server installed by install.sh. The data folder, the
# configuration and the system user are kept unless --purge is given.
#
#   sudo bash uninstall.sh agent|server [--purge]
#   bash uninstall.sh agent|server --prefix DIR [--purge]
#
# install.sh also puts a copy of this script in <prefix>/usr/local/share/outpost/.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: uninstall.sh agent|server [--prefix DIR] [--systemd] [--purge]

Removes the Outpost agent or server: binary, service unit and, once neither is left, the
shared ONNX Runtime library and models. Keeps the data and the configuration.

Options:
  --prefix DIR   the installation was made with install.sh --prefix DIR
  --systemd      with --prefix: it was installed with --systemd (disable the service, and
                 with --purge remove the system user)
  --purge        also delete the data folder, the configuration and the system user
  -h, --help     this help
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

role="" prefix="" force_systemd=0 purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    agent | server)
      [ -z "$role" ] || die "give one role: agent or server"
      role=$1
      ;;
    --prefix)
      if [ $# -lt 2 ] || [ -z "$2" ]; then die "--prefix needs a folder"; fi
      prefix=$2
      shift
      ;;
    --systemd) force_systemd=1 ;;
    --purge) purge=1 ;;
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

# The same layout as install.sh.
root=""
if [ -n "$prefix" ]; then
  [ -d "$prefix" ] || die "$prefix does not exist"
  root=$(cd -- "$prefix" && pwd)
  root=${root%/}
fi
BIN_DIR=$root/usr/local/bin
LIB_DIR=$root/usr/local/lib/outpost
SHARE_DIR=$root/usr/local/share/outpost
CONF_DIR=$root/etc/outpost
UNIT_DIR=$root/etc/systemd/system
if [ "$role" = agent ]; then
  BIN=outpost OTHER_BIN=outpost-server SVC_USER=outpost DATA_DIR=$root/var/lib/outpost
  CONF=agent.toml UNIT=outpost-agent.service
else
  BIN=outpost-server OTHER_BIN=outpost SVC_USER=outpost-server DATA_DIR=$root/var/lib/outpost-server
  CONF=server.toml UNIT=outpost-server.service
fi
system=0
if [ -z "$prefix" ] || [ "$force_systemd" = 1 ]; then system=1; fi
if [ "$system" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "removing a system-wide installation needs root: run it with sudo (or pass --prefix DIR)"
fi

installed=0
if [ -e "$BIN_DIR/$BIN" ] || [ -e "$UNIT_DIR/$UNIT" ]; then installed=1; fi

# Stop the service first, so nothing writes while files go away.
if [ "$system" = 1 ]; then
  systemd=0
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then systemd=1; fi
  if [ "$systemd" = 1 ]; then systemctl disable --now --quiet "$UNIT" 2>/dev/null || true; fi
  link=/etc/systemd/system/$UNIT
  if [ -n "$root" ] && [ -L "$link" ] && [ "$(readlink -- "$link")" = "$UNIT_DIR/$UNIT" ]; then
    rm -f -- "$link"
  fi
  rm -f -- "$UNIT_DIR/$UNIT"
  if [ "$systemd" = 1 ]; then systemctl daemon-reload; fi
else
  rm -f -- "$UNIT_DIR/$UNIT"
fi
# The drop-in install.sh --encrypt wrote (the sealed key itself stays with the data).
rm -f -- "$UNIT_DIR/$UNIT.d/encryption.conf"
rmdir -- "$UNIT_DIR/$UNIT.d" 2>/dev/null || true

rm -f -- "$BIN_DIR/$BIN"
if [ "$installed" = 1 ]; then
  echo "removed $BIN_DIR/$BIN and $UNIT_DIR/$UNIT"
else
  echo "the $role is not installed${prefix:+ under $root} (no $BIN_DIR/$BIN)"
fi

# The runtime library, the models and this script are shared by the agent and the server.
if [ -e "$BIN_DIR/$OTHER_BIN" ]; then
  echo "kept $LIB_DIR and $SHARE_DIR: $OTHER_BIN is still installed"
else
  rm -rf -- "$LIB_DIR" "$SHARE_DIR"
  echo "removed $LIB_DIR and $SHARE_DIR"
fi

if [ "$purge" = 1 ]; then
  rm -f -- "$CONF_DIR/$CONF" "$CONF_DIR/$CONF.new"
  rmdir -- "$CONF_DIR" 2>/dev/null || true
  rm -rf -- "${DATA_DIR:?}"
  echo "purged the configuration $CONF_DIR/$CONF and the data $DATA_DIR"
  if [ "$system" = 1 ] && getent passwd "$SVC_USER" >/dev/null; then
    if userdel "$SVC_USER"; then
      echo "removed the system user $SVC_USER"
    else
      echo "warning: could not remove the system user $SVC_USER (still running something?): userdel $SVC_USER" >&2
    fi
  fi
else
  echo "kept the data in $DATA_DIR and the configuration $CONF_DIR/$CONF (remove them with --purge)"
fi

# Under a prefix, leave no empty folders behind (never outside the prefix).
if [ -n "$root" ]; then
  for d in "$BIN_DIR" "$root/usr/local/lib" "$root/usr/local/share" "$root/usr/local" "$root/usr" \
    "$UNIT_DIR" "$root/etc/systemd" "$CONF_DIR" "$root/etc" "$root/var/lib" "$root/var"; do
    rmdir -- "$d" 2>/dev/null || true
  done
fi
