#!/usr/bin/env bash
# Where the time goes: one run of a path under `perf record -e cpu-clock -g` on both sides
# (the VM has no hardware counters), then the CPU seconds each process used and the
# symbols that took most of them. perf's own overhead is included, so both sides read a
# little higher than in the timing benches.
#
#   p3        one file of SIZE (1G) sent over protocol 3 to a default server
#   v4        the same over protocol 4
#   small     FILES (1000) files of FILE_SIZE (4096) bytes, `send -r` over protocol 4
#   scaleout  the p3 file through one instance over PostgreSQL + the object store (the
#             test suite's services, started by .ci/services.sh and stopped after); the
#             object store's own CPU seconds (rclone) are printed beside the two sides
#
# usage: bench/profile.sh p3|v4|small|scaleout...
#   The binary wants symbols: by default it is built so into $PROFILE_TARGET
#   (/tmp/prof-target); SECUREXFER_BIN names another. TOP (25) symbols per side.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE_TARGET=${PROFILE_TARGET:-/tmp/prof-target}
export SECUREXFER_BIN=${SECUREXFER_BIN:-$PROFILE_TARGET/release/securexfer}
source bench/lib.sh

SIZE=$(bytes_of "${SIZE:-1G}")
FILES=${FILES:-1000}
FILE_SIZE=${FILE_SIZE:-4096}
TOP=${TOP:-25}
[ $# -gt 0 ] || { echo "usage: $0 p3|v4|small|scaleout..." >&2; exit 2; }

need_tool perf linux-perf
need_tool openssl openssl
if [ "${NO_BUILD:-0}" != 1 ] && [ "$SECUREXFER_BIN" = "$PROFILE_TARGET/release/securexfer" ]; then
  CARGO_TARGET_DIR=$PROFILE_TARGET CARGO_PROFILE_RELEASE_STRIP=none \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --quiet --bin securexfer
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-profile.XXXXXX")
export XDG_CONFIG_HOME=$work/home
services=0
cleanup() {
  stop_server
  [ "$services" = 1 ] && { SECUREXFER_SERVICES_DIR=$work/services .ci/services.sh stop >/dev/null 2>&1 || true; }
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# The symbols of a perf.data that took most of its samples, with their share.
top_symbols() {
  # head ends the pipe early: not a failure.
  { perf report -i "$1" --no-children --sort dso,symbol -g none --stdio 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | sed -E 's/ +$//' | cut -c1-150 | head -n "$TOP"; } || true
}

# Profiles the server (already started, server_pid) and the client command given, then
# prints both sides.
profile() {
  local label=$1; shift
  perf record -q -e cpu-clock -F 4000 -g -p "$server_pid" -o "$work/$label-server.data" 2>/dev/null &
  local perf_server=$!
  sleep 0.5
  local before; before=$(cpu_secs "$server_pid")
  local t0; t0=$(now_ns)
  /usr/bin/time -f '%U %S' -o "$work/$label-client.time" \
    perf record -q -e cpu-clock -F 4000 -g -o "$work/$label-client.data" -- "$@" 2>/dev/null
  local t1; t1=$(now_ns)
  local after; after=$(cpu_secs "$server_pid")
  kill -INT "$perf_server"; wait "$perf_server" 2>/dev/null || true
  echo "== $label: wall $(calc "($t1 - $t0) / 1e9") s; server CPU $(calc "$after - $before") s;" \
    "client CPU (with perf) $(awk '{printf "%.2f", $1 + $2}' "$work/$label-client.time") s"
  [ -n "${object_store_before:-}" ] &&
    echo "   the object store (rclone) CPU: $(calc "$(cpu_secs "$rclone_pid") - $object_store_before") s"
  echo "-- server, by symbol"
  top_symbols "$work/$label-server.data"
  echo "-- client, by symbol"
  top_symbols "$work/$label-client.data"
  echo
}

for mode in "$@"; do
  object_store_before=
  case $mode in
    p3|v4|scaleout)
      [ -f "$work/data.bin" ] || make_file "$work/data.bin" "$SIZE"
      protocol=3; [ "$mode" = v4 ] && protocol=4
      extra=()
      if [ "$mode" = scaleout ]; then
        if [ "$services" = 0 ]; then
          chmod 755 "$work"; mkdir -p "$work/services"
          SECUREXFER_SERVICES_DIR=$work/services .ci/services.sh start >"$work/services.env"
          services=1
          # shellcheck disable=SC1091
          source "$work/services.env"
        fi
        pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
        db="bench_profile_$$"
        "$pg_bin/psql" -q "$SECUREXFER_TEST_POSTGRES" -c "CREATE DATABASE $db" >/dev/null
        extra=(--db "${SECUREXFER_TEST_POSTGRES%/*}/$db" --storage "$SECUREXFER_TEST_S3/profile-$$")
        # The newest such process: the binary, if a wrapper started it.
        rclone_pid=$(pgrep -n -f 'serve s3 --addr 127.0.0.1')
      fi
      if [ "$mode" = scaleout ]; then
        serve_in "$work/$mode" "${extra[@]}"
      else
        start_server "$work/$mode"
      fi
      # Protocol 3's identity is a me.info file; protocol 4's lives in the client's home.
      identity=(); [ "$protocol" = 3 ] && identity=(--identity "$work/$mode/me.info")
      "$bin" register --server "$server_addr" --name "prof-$mode" --protocol "$protocol" \
        "${identity[@]}" >/dev/null 2>&1
      [ "$mode" = scaleout ] && object_store_before=$(cpu_secs "$rclone_pid")
      profile "$mode" "$bin" send "$work/data.bin" --server "$server_addr" \
        --protocol "$protocol" "${identity[@]}" --quiet
      stop_server
      ;;
    small)
      src=$work/small
      mkdir -p "$src"
      for ((i = 0; i < FILES; i++)); do head -c "$FILE_SIZE" /dev/urandom >"$src/f$i"; done
      start_server "$work/small-server"
      "$bin" register --server "$server_addr" --name prof-small --protocol 4 >/dev/null 2>&1
      (cd "$work" && profile small "$bin" send -r small --server "$server_addr" --quiet)
      stop_server
      ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
done
