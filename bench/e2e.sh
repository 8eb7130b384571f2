#!/usr/bin/env bash
# End-to-end throughput of the release binary on loopback, with same-run baselines, on the
# same file of random data:
#   (a) securexfer send --protocol 3 -> securexfer serve: the whole send (connect, key exchange (1027),
#       send, checksum, confirm; the server fsyncs the file before it acknowledges)
#   (b) the floor: openssl enc -aes-128-cbc -in FILE -out /dev/null
#   (c) scp -c aes128-gcm@openssh.com to a throwaway sshd on 127.0.0.1
# Each is run REPS times (interleaved); medians are printed, and peak RSS is the largest seen.
#
# usage: bench/e2e.sh [--size 1G|4G|BYTES] [--reps N]
#   --size 4G (or SIZE=4G) runs 1 GiB and then the protocol's largest file, 4294967279
#   bytes (4 GiB - 17: the encrypted size, a multiple of 16 with at least one byte of
#   padding, must fit in the 32-bit content size). Any other size runs that size alone.
#   NO_BUILD=1 skips `cargo build --release`; KEEP=1 keeps the work directory;
#   TMPDIR chooses where the files go (the file, the server's storage, scp's copy).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

MAX_PLAINTEXT=4294967279
size_arg=${SIZE:-1G}
reps=${REPS:-3}
while [ $# -gt 0 ]; do
  case $1 in
    --size) size_arg=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--size 1G|4G|BYTES] [--reps N]" >&2; exit 2 ;;
  esac
done
case $size_arg in
  4G|4g) sizes=("$((1 << 30))" "$MAX_PLAINTEXT") ;;
  *G|*g) sizes=("$(( ${size_arg%?} << 30 ))") ;;
  *M|*m) sizes=("$(( ${size_arg%?} << 20 ))") ;;
  *) sizes=("$size_arg") ;;
esac

need_tool /usr/bin/time time
need_tool openssl openssl
need_tool /usr/sbin/sshd openssh-server
need_tool scp openssh-client
build_release

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-e2e.XXXXXX")
# The client's home (known_servers) stays in the work directory, not the user's.
export XDG_CONFIG_HOME=$work/home
sshd_pid=
cleanup() {
  stop_server
  [ -n "$sshd_pid" ] && { kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; }
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

scp_opts() {
  echo -q -c aes128-gcm@openssh.com -i "$work/ssh/client_key" -P "$ssh_port" \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR
}

# Runs a command under /usr/bin/time; sets run_secs (wall, ns resolution) and run_kib (peak RSS).
# Dirty pages left by the contender before (scp's copy, our stored file) are written out
# first, so nobody's run pays for another's writeback.
timed() {
  local t0 t1
  sync
  t0=$(now_ns)
  /usr/bin/time -f '%M' -o "$work/time.out" "$@"
  t1=$(now_ns)
  run_secs=$(calc "($t1 - $t0) / 1e9")
  run_kib=$(tail -1 "$work/time.out")
}

run_size() {
  local size=$1 file=$work/data.bin key
  key=$(openssl rand -hex 16)
  make_file "$file" "$size"
  start_server "$work/server"
  local id=$work/client/me.info
  mkdir -p "$work/client"
  "$bin" register --server "$server_addr" --name "e2e-$$-$size" --identity "$id" --protocol 3 >/dev/null 2>&1
  local ours=() floor=() scp=() client_kib=() server_kib sent
  for ((r = 1; r <= reps; r++)); do
    timed "$bin" send "$file" --server "$server_addr" --identity "$id" --protocol 3 --quiet
    ours+=("$run_secs"); client_kib+=("$run_kib")
    sent=$(ls "$work"/server/storage/*/data.bin)
    [ "$(stat -c %s "$sent")" = "$size" ] || { echo "stored size differs" >&2; exit 1; }
    timed openssl enc -aes-128-cbc -K "$key" -iv 00000000000000000000000000000000 -in "$file" -out /dev/null
    floor+=("$run_secs")
    # shellcheck disable=SC2046
    timed scp $(scp_opts) "$file" "$(id -un)@127.0.0.1:$work/ssh/dest/"
    scp+=("$run_secs")
    rm -f "$work/ssh/dest/data.bin"
  done
  cmp "$file" "$sent" || { echo "the stored file differs from the one sent" >&2; exit 1; }
  server_kib=$(peak_rss_kib "$server_pid")
  local server_cpu; server_cpu=$(cpu_secs "$server_pid")
  stop_server
  rm -rf "$work/server" "$work/client"
  report "$size" "$(median "${ours[@]}")" "$(median "${floor[@]}")" "$(median "${scp[@]}")" \
    "$server_kib" "$(maximum "${client_kib[@]}")" "$server_cpu" "${ours[*]}" "${floor[*]}" "${scp[*]}"
  rm -f "$file"
}

report() {
  local size=$1 ours=$2 floor=$3 scp=$4 server_kib=$5 client_kib=$6 server_cpu=$7
  local mb=$(calc "$size / 1e6")
  echo
  echo "== $size bytes ($(calc "$size / 1073741824") GiB), $reps runs each, medians (load now: $(load_avg))"
  printf '%-40s %7.3f s %8.0f MB/s   (runs: %s)\n' "(a) securexfer send -> serve" "$ours" "$(calc "$mb / $ours")" "$8"
  printf '%-40s %7.3f s %8.0f MB/s   (runs: %s)\n' "(b) floor: openssl enc -aes-128-cbc" "$floor" "$(calc "$mb / $floor")" "$9"
  printf '%-40s %7.3f s %8.0f MB/s   (runs: %s)\n' "(c) scp -c aes128-gcm@openssh.com" "$scp" "$(calc "$mb / $scp")" "${10}"
  local r1 r2
  r1=$(calc "$ours / $floor"); r2=$(calc "$scp / $ours")
  echo "ratio our time / floor time          $r1   target <= 1.25  $(verdict "$r1" '<=' 1.25)"
  echo "ratio our MB/s / scp MB/s            $r2   target >= 1.5   $(verdict "$r2" '>=' 1.5)"
  echo "peak RSS server (VmHWM)              $(calc "$server_kib / 1024") MiB   target < 64  $(verdict "$server_kib" '<' 65536)"
  echo "peak RSS client (time %M)            $(calc "$client_kib / 1024") MiB   target < 64  $(verdict "$client_kib" '<' 65536)"
  echo "server CPU over all runs             ${server_cpu} s"
}

start_sshd
echo "e2e: $bin, sizes ${sizes[*]}, work in $work, sshd on 127.0.0.1:$ssh_port"
for size in "${sizes[@]}"; do
  run_size "$size"
done
