#!/usr/bin/env bash
# Many clients at once against a release server on 127.0.0.1, with examples/load.rs:
#   1. register mode: CLIENTS (1000) clients at once, each registers and sends its own
#      SIZE (1M) file;
#   2. reconnect mode: SESSIONS (2000) sessions by CONCURRENCY (64) workers with
#      pre-registered identities, each a reconnect (1027) and a send of SMALL (4K) bytes.
# Each mode gets a fresh server; afterwards the driver checks every file in the server's
# database and storage, and this script prints the server's peak RSS and CPU time.
#
# usage: bench/load.sh [register|reconnect]...   (default: both)
#   NO_BUILD=1 skips the release build; KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

CLIENTS=${CLIENTS:-1000}
SIZE=${SIZE:-1M}
SESSIONS=${SESSIONS:-2000}
SMALL=${SMALL:-4K}
CONCURRENCY=${CONCURRENCY:-64}
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(register reconnect)

need_tool /usr/bin/time time
build_release --example load
load=${LOAD_BIN:-$PWD/target/release/examples/load}

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-load.XXXXXX")
cleanup() {
  stop_server
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

run_mode() {
  local mode=$1 dir=$work/$1 args
  case $mode in
    register) args=(--clients "$CLIENTS" --size "$SIZE") ;;
    reconnect) args=(--reconnect --sessions "$SESSIONS" --concurrency "$CONCURRENCY" --size "$SMALL") ;;
    *) echo "unknown mode $mode (register or reconnect)" >&2; exit 2 ;;
  esac
  start_server "$dir/server"
  echo
  echo "== $mode mode against $server_addr (load before: $(load_avg))"
  local status=0
  /usr/bin/time -f 'load driver: peak RSS %M KiB, CPU %U s user %S s system' \
    "$load" --server "$server_addr" "${args[@]}" --work-dir "$dir" \
    --db "$dir/server/defensive.db" --storage "$dir/server/storage" || status=$?
  local rss cpu
  rss=$(peak_rss_kib "$server_pid"); cpu=$(cpu_secs "$server_pid")
  stop_server
  echo "server: peak RSS (VmHWM) $(calc "$rss / 1024") MiB, CPU $cpu s"
  rm -rf "$dir"
  [ "$status" = 0 ] || { echo "$mode mode FAILED (exit $status)" >&2; exit "$status"; }
}

for mode in "${modes[@]}"; do
  run_mode "$mode"
done
