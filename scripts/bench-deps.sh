#!/usr/bin/env bash
# Installs what `make bench-peers` (bench/peers) needs beyond scripts/system-deps.sh, which CI
# runs; nothing here is needed by the tests:
#   collectd-core (Debian): collectd and its modbus plugin, one of the peers;
#   thingsboard-gateway (PyPI, pinned) in a virtualenv of its own under build/bench-peers/,
#   never in the project's .venv (its dependencies would leak into the gateway's imports).
# Nothing is started: the bench starts each contender on loopback ports of its own.
set -euo pipefail

TB_VERSION="${TB_VERSION:-3.8.5}"
# The version its Modbus connector requires (connectors/modbus/modbus_connector.py); without it
# the connector pip-installs it at start-up.
TB_PYMODBUS="${TB_PYMODBUS:-3.9.2}"
PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TB_VENV="${TB_VENV:-$ROOT/build/bench-peers/tb-venv}"

if [ ! -x /usr/sbin/collectd ] || ! compgen -G '/usr/lib/collectd/modbus.so' >/dev/null; then
  echo "puhui bench: installing Debian package collectd-core"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "puhui bench: collectd-core is missing and this is not root (and no password-less sudo)." >&2
    echo "puhui bench: run as root:  apt-get update && apt-get install -y collectd-core" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # --no-install-recommends: collectd-core alone (no rrdtool, no service started on boot).
  $SUDO apt-get install -y -qq --no-install-recommends collectd-core
fi

stamp="$TB_VENV/.installed-$TB_VERSION"
if [ ! -f "$stamp" ]; then
  echo "puhui bench: thingsboard-gateway $TB_VERSION into $TB_VENV"
  test -x "$TB_VENV/bin/python" || "$PYTHON" -m venv "$TB_VENV"
  "$TB_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$TB_VENV/bin/python" -m pip install --quiet "thingsboard-gateway==$TB_VERSION" \
    "pymodbus==$TB_PYMODBUS" pyserial pyserial-asyncio
  touch "$stamp"
fi
