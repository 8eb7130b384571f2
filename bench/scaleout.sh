#!/usr/bin/env bash
# The scale-out configuration (issue 16) beside the single-machine default, in one run:
#   (a) one file of SIZE (1G) sent with `securexfer send --protocol 3`, REPS (3) times,
#       through one instance over PostgreSQL + the object store, and to a default server
#       (SQLite + a local directory): median wall time, the server's peak RSS;
#   (b) CLIENTS (16) clients × BIG (64M) at once (examples/load.rs register mode) spread over
#       3 instances, and the same against one default server: aggregate MB/s, each
#       server's peak RSS;
#   (c) sessions per second (reconnect mode: SESSIONS (1500) sessions by CONCURRENCY (48)
#       workers, each a new connection, a 1027 and a 4 KiB file) with 1, 2 and 3
#       instances, and against the default server. Session i goes to instance i mod N
#       (its requests stay on its connection; each key exchange is published to PostgreSQL
#       and each file's commit is one transaction there).
# PostgreSQL and the S3-compatible server (rclone serve s3) are the test suite's, started
# here by .ci/services.sh on loopback and stopped at the end; every scenario gets a fresh
# database and a fresh prefix. All of it shares this machine's 2 cores: the figures say
# what the extra hops cost, not what more machines would add.
#
# usage: bench/scaleout.sh   (NO_BUILD=1 skips the release build; KEEP=1 keeps the work dir)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SIZE=$(bytes_of "${SIZE:-1G}")
REPS=${REPS:-3}
CLIENTS=${CLIENTS:-16}
BIG=${BIG:-64M}
SESSIONS=${SESSIONS:-1500}
CONCURRENCY=${CONCURRENCY:-48}

need_tool /usr/bin/time time
need_tool openssl openssl
build_release --example load
load=${LOAD_BIN:-$PWD/target/release/examples/load}

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-scaleout.XXXXXX")
export XDG_CONFIG_HOME=$work/home
pids=()
cleanup() {
  stop_all
  SECUREXFER_SERVICES_DIR=$work/services .ci/services.sh stop >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT


# A fresh database on the services' PostgreSQL; prints its address.
fresh_db() {
  local name="bench_$$_$(now_ns)"
  "$pg_bin/psql" -q "$SECUREXFER_TEST_POSTGRES" -c "CREATE DATABASE $name" >/dev/null
  echo "${SECUREXFER_TEST_POSTGRES%/*}/$name"
}

# Starts `serve` in DIR over DB and STORAGE; appends to pids and addrs.
start_instance() {
  local dir=$1 db=$2 storage=$3; shift 3
  mkdir -p "$dir"
  (cd "$dir" && exec "$bin" serve --listen 127.0.0.1 --port 0 --db "$db" --storage "$storage" \
      --registrations-per-minute 0 "$@" >listening.txt 2>server.log) &
  pids+=("$!")
  local addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/^securexfer listening on //p' "$dir/listening.txt" 2>/dev/null)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "an instance did not start; see $dir/server.log" >&2; cat "$dir/server.log" >&2; exit 1; }
  addrs+=("$addr")
}

# N instances over one fresh database and one fresh prefix (N=0: one default server).
start_deployment() {
  local n=$1 tag=$2
  addrs=()
  if [ "$n" = 0 ]; then
    start_instance "$work/$tag/default" defensive.db storage
    return
  fi
  local db; db=$(fresh_db)
  local i
  for ((i = 1; i <= n; i++)); do
    start_instance "$work/$tag/i$i" "$db" "$SECUREXFER_TEST_S3/bench-$$-$tag"
  done
}

# Each running server's peak RSS in MiB, space-separated.
peaks() {
  local p out=()
  for p in "${pids[@]}"; do out+=("$(calc "$(peak_rss_kib "$p") / 1024")"); done
  echo "${out[*]}"
}

stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# (a) One large file through one server; prints "median_secs peak_mib runs".
one_file() {
  local n=$1 tag=$2 file=$work/data.bin id=$work/$2/me.info runs=() r t0 t1
  start_deployment "$n" "$tag"
  "$bin" register --server "${addrs[0]}" --name "big-$tag" --identity "$id" --protocol 3 >/dev/null 2>&1
  for ((r = 1; r <= REPS; r++)); do
    sync
    t0=$(now_ns)
    "$bin" send "$file" --server "${addrs[0]}" --identity "$id" --protocol 3 --quiet
    t1=$(now_ns)
    runs+=("$(calc "($t1 - $t0) / 1e9")")
  done
  local peak; peak=$(peaks)
  stop_all
  echo "$(median "${runs[@]}") $peak ${runs[*]}"
}

# (b) and (c): the load driver against the deployment; prints its summary lines.
drive() {
  local n=$1 tag=$2; shift 2
  start_deployment "$n" "$tag"
  local servers; servers=$(IFS=,; echo "${addrs[*]}")
  "$load" --server "$servers" --work-dir "$work" "$@" >"$work/$tag.out" 2>&1 ||
    { cat "$work/$tag.out" >&2; echo "the load driver failed ($tag)" >&2; exit 1; }
  echo "$(grep -E '^(errors|wall time|sessions/s|MB/s):' "$work/$tag.out" | tr '\n' ' ')| server peak RSS MiB: $(peaks)"
  stop_all
}

# The cluster runs as an unprivileged user when we are root: it must reach its directory.
chmod 755 "$work"
mkdir -p "$work/services"
SECUREXFER_SERVICES_DIR=$work/services .ci/services.sh start >"$work/services.env"
# shellcheck disable=SC1091
source "$work/services.env"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

echo "scale-out bench: $bin; PostgreSQL $SECUREXFER_TEST_POSTGRES, object store $AWS_ENDPOINT_URL"
echo "load before: $(load_avg)"
make_file "$work/data.bin" "$SIZE"

echo
echo "== (a) one file of $SIZE bytes, send --protocol 3, $REPS runs, medians"
read -r d_secs d_peak d_runs <<<"$(one_file 0 a-default)"
# The test store's own CPU during the scale-out runs: on one machine it shares the cores.
rclone_pid=$(pgrep -n -f 'serve s3 --addr 127.0.0.1')
rclone_before=$(cpu_secs "$rclone_pid")
read -r s_secs s_peak s_runs <<<"$(one_file 1 a-scaleout)"
rclone_per_run=$(calc "($(cpu_secs "$rclone_pid") - $rclone_before) / $REPS")
mb=$(calc "$SIZE / 1e6")
printf '%-46s %7.3f s %6.0f MB/s  peak RSS %6.1f MiB\n' "default (SQLite + local directory)" "$d_secs" "$(calc "$mb / $d_secs")" "$d_peak"
printf '%-46s %7.3f s %6.0f MB/s  peak RSS %6.1f MiB\n' "1 instance (PostgreSQL + object store)" "$s_secs" "$(calc "$mb / $s_secs")" "$s_peak"
echo "ratio scale-out time / default time        $(calc "$s_secs / $d_secs")"
echo "the object store's (rclone's) CPU per run   $rclone_per_run s (it shares this machine's 2 cores)"

echo
echo "== (b) $CLIENTS clients x $BIG at once (register mode)"
echo "default:     $(drive 0 b-default --clients "$CLIENTS" --size "$BIG")"
echo "3 instances: $(drive 3 b-scaleout --clients "$CLIENTS" --size "$BIG")"

echo
echo "== (c) $SESSIONS sessions by $CONCURRENCY workers, reconnect + 4 KiB each"
echo "default:     $(drive 0 c-default --reconnect --sessions "$SESSIONS" --concurrency "$CONCURRENCY" --size 4K)"
for n in 1 2 3; do
  echo "$n instance(s): $(drive "$n" "c-$n" --reconnect --sessions "$SESSIONS" --concurrency "$CONCURRENCY" --size 4K)"
done
echo
echo "load after: $(load_avg)"
