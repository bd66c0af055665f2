#!/usr/bin/env bash
# Installs the Debian packages puhui runs against when they are missing:
#   mosquitto (MQTT broker), influxdb (InfluxDB 1.x server, influxd), mbpoll (independent
#   Modbus client used by tests and benchmarks as a reference), chromium (headless: the
#   gateway status page test loads the page and takes a screenshot), prometheus (its promtool
#   checks the alert rules and runs their unit tests), postgresql (initdb and
#   postgres for the PostgreSQL evidence store's private test clusters; Debian keeps them in
#   /usr/lib/postgresql/<version>/bin, off PATH), nats-server and rabbitmq-server (MQTT brokers
#   that cluster: tests/broker runs three-node private clusters of each, docs/scale.md).
# Nothing is started: tests and the demo start private servers on free loopback ports.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mosquitto || need+=(mosquitto)
have influxd || need+=(influxdb)
have mbpoll || need+=(mbpoll)
have chromium || need+=(chromium)
have promtool || need+=(prometheus)
have_postgres() { command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
have_postgres || need+=(postgresql)
have nats-server || need+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
[ ${#need[@]} -eq 0 ] && exit 0

echo "puhui: installing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "puhui: missing ${need[*]} and not root (and no password-less sudo)." >&2
  echo "puhui: run as root:  apt-get update && apt-get install -y ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d keeps the packages' own services from starting on the default ports
# (rabbitmq-server's on 5672 and epmd's on 4369 included): one that denies everything is
# put in place for the install when the system has none, and removed after.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
