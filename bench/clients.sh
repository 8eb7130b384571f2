#!/usr/bin/env bash
# Concurrent clients on one default server (issue 18), per protocol, in one run:
#   (a) throughput: N clients (1, 8 and 64) each run `securexfer send --protocol P` of a
#       file of its own at the same moment (BIG bytes in all, split evenly: 1 GiB by
#       default, so every N moves the same data); aggregate MB/s = BIG / wall time from
#       the first start to the last exit;
#   (b) sessions per second: N clients each run ROUNDS (20 for N = 1 and 8, 4 for 64)
#       `send --protocol P` of a 4 KiB file in a row, every run a new process, a new
#       connection and a new session (protocol 3: a 1027 key exchange and a 1028; protocol
#       4: a TLS 1.3 handshake with the client's certificate and a PUT); sessions/s =
#       runs / wall time. It is what a script that calls securexfer per file gets,
#       process start included (the same for both protocols).
# Each client has its own identity, registered before the timing. The server is a fresh
# release server per protocol and N (SQLite + a local directory), with the registration
# limit off. Its peak RSS and CPU seconds are reported beside each figure; every stored
# file is checked against its original (cmp) after the timing. Figures are medians of
# REPS (3) runs.
#
# usage: bench/clients.sh   (NO_BUILD=1 skips the release build; KEEP=1 keeps the work dir;
#   COUNTS="1 8 64", BIG=1G, REPS=3 and ROUNDS_SMALL / ROUNDS_LARGE change the plan)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNTS=${COUNTS:-"1 8 64"}
BIG=$(bytes_of "${BIG:-1G}")
REPS=${REPS:-3}
ROUNDS_SMALL=${ROUNDS_SMALL:-20}
ROUNDS_LARGE=${ROUNDS_LARGE:-4}

build_release
work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-clients.XXXXXX")
server_pid=
cleanup() {
  [ -n "$server_pid" ] && stop_server
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# Registers N clients (homes $dir/c1..cN) with the running server over protocol P.
register_clients() {
  local dir=$1 n=$2 proto=$3 i
  for i in $(seq "$n"); do
    mkdir -p "$dir/c$i"
    XDG_CONFIG_HOME=$dir/c$i/config "$bin" register --server "$server_addr" \
      --name "bench-$proto-$n-$i-$$" --protocol "$proto" >/dev/null 2>"$dir/c$i/register.err" \
      || { cat "$dir/c$i/register.err" >&2; exit 1; }
  done
}

# Every client runs ROUNDS sends of its FILE in a row (as NAME-1.bin, NAME-2.bin, ...),
# all clients at once; prints the wall seconds from the first start to the last exit.
timed_clients() {
  local dir=$1 n=$2 proto=$3 rounds=$4 file=$5 name=$6 i pids=() start end
  start=$(now_ns)
  for i in $(seq "$n"); do
    (
      cd "$dir/c$i"
      for r in $(seq "$rounds"); do
        XDG_CONFIG_HOME=$dir/c$i/config "$bin" send "$file" --as "$name-$r.bin" \
          --server "$server_addr" --protocol "$proto" --quiet 2>>"$dir/c$i/send.err"
      done
    ) &
    pids+=("$!")
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { cat "$dir/c$((i + 1))/send.err" >&2; exit 1; }
  done
  end=$(now_ns)
  calc "($end - $start) / 1e9"
}

# Every stored copy is byte-identical to what was sent (every client sent copies of the
# same two files); prints how many there are.
check_stored() {
  local dir=$1 bad=0 copies=0 f
  while IFS= read -r -d '' f; do
    copies=$((copies + 1))
    case $(basename "$f") in
      big-*) cmp -s "$f" "$dir/c1/big.bin" || bad=$((bad + 1)) ;;
      small-*) cmp -s "$f" "$dir/c1/small.bin" || bad=$((bad + 1)) ;;
    esac
  done < <(find "$dir/server/storage" -type f \( -name 'big-*' -o -name 'small-*' \) -print0)
  [ "$bad" = 0 ] || { echo "clients: $bad stored copies differ from what was sent" >&2; exit 1; }
  echo "$copies"
}

printf '%-9s %4s  %12s %10s  %12s %9s  %10s %9s\n' protocol N "wall (a)" "MB/s" "wall (b)" "sess/s" \
  "server RSS" "srv CPU"
for proto in 3 4; do
  for n in $COUNTS; do
    dir=$work/p$proto-n$n
    mkdir -p "$dir"
    start_server "$dir/server" --registrations-per-minute 0
    register_clients "$dir" "$n" "$proto"
    per=$((BIG / n))
    # The same random bytes for every client (its file is its own copy); the small file
    # is one 4 KiB block.
    head -c "$per" /dev/urandom >"$dir/c1/big.bin"
    head -c 4096 /dev/urandom >"$dir/c1/small.bin"
    for i in $(seq 2 "$n"); do
      cp "$dir/c1/big.bin" "$dir/c1/small.bin" "$dir/c$i/"
    done
    rounds=$ROUNDS_SMALL
    [ "$n" -gt 8 ] && rounds=$ROUNDS_LARGE
    walls_a=() walls_b=()
    for rep in $(seq "$REPS"); do
      sync
      walls_a+=("$(timed_clients "$dir" "$n" "$proto" 1 big.bin "big-$rep")")
      walls_b+=("$(timed_clients "$dir" "$n" "$proto" "$rounds" small.bin "small-$rep")")
    done
    copies=$(check_stored "$dir")
    expected=$((n * REPS * (1 + rounds)))
    [ "$copies" = "$expected" ] || { echo "clients: $copies copies stored, $expected sent" >&2; exit 1; }
    wall_a=$(median "${walls_a[@]}")
    wall_b=$(median "${walls_b[@]}")
    rss=$(peak_rss_kib "$server_pid")
    cpu=$(cpu_secs "$server_pid")
    stop_server
    server_pid=
    printf '%-9s %4s  %10.3f s %10.0f  %10.3f s %9.1f  %7d MiB %7.1f s   (a runs: %s; b runs: %s)\n' \
      "$proto" "$n" "$wall_a" "$(calc "$BIG / 1e6 / $wall_a")" "$wall_b" \
      "$(calc "$n * $rounds / $wall_b")" "$((rss / 1024))" "$cpu" "${walls_a[*]}" "${walls_b[*]}"
    rm -rf "$dir"
  done
done
echo "machine: $(nproc) cores, load average $(load_avg), $(date -u +%Y-%m-%dT%H:%MZ)"
