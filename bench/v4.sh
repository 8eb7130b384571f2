#!/usr/bin/env bash
# Protocol 4 end to end (issue 14), on one file of random data (1 GiB), with same-run
# baselines, each run REPS times (interleaved) and reported as medians:
#   (a) securexfer send --protocol 4 -> serve: the whole send, from process start through
#       the TLS 1.3 handshake (both keys checked), streaming, both BLAKE3 hashes, the
#       commit (the server fsyncs before COMMITTED) and close_notify, to exit
#   (b) securexfer send --protocol 3 -> the same server: the whole protocol-3 send
#   (c) a plaintext TCP copy of the same file into an fsynced file on 127.0.0.1 (python3
#       receiving with 1 MiB reads, bash's /dev/tcp sending): the floor of any sender
#   (d) scp -c aes128-gcm@openssh.com to a throwaway sshd on 127.0.0.1
# Client CPU and peak RSS come from /usr/bin/time, the server's from /proc (CPU before
# and after each run; VmHWM of a fresh server per protocol).
#
# usage: bench/v4.sh [--size 1G|BYTES] [--reps N]
#   NO_BUILD=1 skips `cargo build --release`; KEEP=1 keeps the work directory;
#   TMPDIR chooses where the files go.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

size_arg=${SIZE:-1G}
reps=${REPS:-3}
while [ $# -gt 0 ]; do
  case $1 in
    --size) size_arg=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--size 1G|BYTES] [--reps N]" >&2; exit 2 ;;
  esac
done
size=$(bytes_of "$size_arg")

need_tool /usr/bin/time time
need_tool openssl openssl
need_tool /usr/sbin/sshd openssh-server
need_tool scp openssh-client
build_release

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-v4.XXXXXX")
sshd_pid=
sink_pid=
cleanup() {
  stop_server
  [ -n "$sshd_pid" ] && { kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; }
  [ -n "$sink_pid" ] && { kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; }
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A plaintext TCP receiver: one connection per run, into an fsynced file, then it says
# "done" on its stdout (a fifo) so that the sender's time includes the fsync.
start_sink() {
  sink_port=$(free_port)
  mkfifo "$work/sink.done"
  python3 - "$sink_port" "$work/sink.out" "$work/sink.done" "$work/sink.ready" <<'EOF' &
import os, socket, sys
port, out, done, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
open(ready, "w").close()
buf = bytearray(1 << 20)
view = memoryview(buf)
while True:
    conn, _ = srv.accept()
    with open(out, "wb") as f:
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            f.write(view[:n])
        f.flush()
        os.fsync(f.fileno())
    conn.close()
    with open(done, "w") as d:
        d.write("done\n")
EOF
  sink_pid=$!
  # Not wait_port: a probe connection would be taken for the first copy.
  for _ in $(seq 50); do
    [ -e "$work/sink.ready" ] && return 0
    sleep 0.1
  done
  echo "the plaintext receiver did not start" >&2; return 1
}

plain_copy() {
  cat "$1" >"/dev/tcp/127.0.0.1/$sink_port"
  read -r _ <"$work/sink.done"
}

# timed_cpu CMD...: wall seconds (run_secs), client CPU seconds (run_cpu, of which system
# run_sys), peak RSS (run_kib), and the server's CPU seconds during the run
# (run_server_cpu, of which system run_server_sys).
timed_cpu() {
  local t0 t1 s0 s1 k0 k1
  sync
  s0=$(cpu_secs "$server_pid"); k0=$(sys_secs "$server_pid")
  t0=$(now_ns)
  /usr/bin/time -f '%U %S %M' -o "$work/time.out" "$@"
  t1=$(now_ns)
  s1=$(cpu_secs "$server_pid"); k1=$(sys_secs "$server_pid")
  run_secs=$(calc "($t1 - $t0) / 1e9")
  read -r u s run_kib <"$work/time.out"
  run_cpu=$(calc "$u + $s")
  run_sys=$s
  run_server_cpu=$(calc "$s1 - $s0")
  run_server_sys=$(calc "$k1 - $k0")
}

timed_plain() {
  local t0 t1
  sync
  t0=$(now_ns)
  "$@"
  t1=$(now_ns)
  run_secs=$(calc "($t1 - $t0) / 1e9")
}

# One protocol's runs against a fresh server: sets the named arrays' medians in globals.
# run_protocol 3|4
run_protocol() {
  local proto=$1 home=$work/home$1 walls=() cpus=() scpus=() csys=() ssys=() kibs=() r
  start_server "$work/server$proto"
  mkdir -p "$home"
  XDG_CONFIG_HOME=$home "$bin" register --server "$server_addr" --name "v4bench-$proto-$$" \
    --protocol "$proto" >/dev/null 2>"$work/register$proto.err" \
    || { cat "$work/register$proto.err" >&2; exit 1; }
  for ((r = 1; r <= reps; r++)); do
    XDG_CONFIG_HOME=$home timed_cpu "$bin" send "$file" --server "$server_addr" --protocol "$proto" --quiet
    walls+=("$run_secs"); cpus+=("$run_cpu"); scpus+=("$run_server_cpu"); kibs+=("$run_kib")
    csys+=("$run_sys"); ssys+=("$run_server_sys")
    local stored
    stored=$(ls "$work/server$proto"/storage/*/data.bin)
    cmp "$file" "$stored" || { echo "protocol $proto: the stored file differs" >&2; exit 1; }
    # The other contenders run between two of ours, as in e2e.sh.
    if [ "$proto" = 4 ]; then
      timed_plain plain_copy "$file"; plain+=("$run_secs")
      cmp -s "$file" "$work/sink.out" || { echo "the plaintext copy differs" >&2; exit 1; }
      rm -f "$work/sink.out"
      # shellcheck disable=SC2046
      timed_plain scp -q -c aes128-gcm@openssh.com -i "$work/ssh/client_key" -P "$ssh_port" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o LogLevel=ERROR "$file" "$(id -un)@127.0.0.1:$work/ssh/dest/"
      scp+=("$run_secs")
      rm -f "$work/ssh/dest/data.bin"
    fi
  done
  eval "wall$proto=$(median "${walls[@]}") cpu$proto=$(median "${cpus[@]}")"
  eval "scpu$proto=$(median "${scpus[@]}") ckib$proto=$(maximum "${kibs[@]}")"
  eval "skib$proto=$(peak_rss_kib "$server_pid")"
  eval "csys$proto=$(median "${csys[@]}") ssys$proto=$(median "${ssys[@]}")"
  eval "runs$proto='${walls[*]}'"
  stop_server
}

start_sshd
start_sink
file=$work/data.bin
make_file "$file" "$size"
echo "v4 bench: $bin, $size bytes, $reps runs each, work in $work (load $(load_avg))"
plain=() scp=()
run_protocol 4
run_protocol 3
plain_m=$(median "${plain[@]}"); scp_m=$(median "${scp[@]}")
mb=$(calc "$size / 1e6")
gib=$(calc "$size / 1073741824")
echo
echo "== $size bytes ($gib GiB), medians of $reps (load now: $(load_avg))"
row() { printf '%-44s %7.3f s %8.0f MB/s   (runs: %s)\n' "$1" "$2" "$(calc "$mb / $2")" "$3"; }
row "(a) securexfer send --protocol 4" "$wall4" "$runs4"
row "(b) securexfer send --protocol 3" "$wall3" "$runs3"
row "(c) plaintext TCP copy, fsynced" "$plain_m" "${plain[*]}"
row "(d) scp -c aes128-gcm@openssh.com" "$scp_m" "${scp[*]}"
r1=$(calc "$plain_m / $wall4"); r2=$(calc "$scp_m / $wall4")
c4=$(calc "($cpu4 + $scpu4) / $gib"); c3=$(calc "($cpu3 + $scpu3) / $gib")
r3=$(calc "$c4 / $c3")
echo "ratio v4 MB/s / plaintext copy MB/s          $r1   target >= 0.9  $(verdict "$r1" '>=' 0.9)"
echo "ratio v4 MB/s / scp MB/s                     $r2   target >= 2    $(verdict "$r2" '>=' 2)"
per_gib() { calc "$1 / $gib"; }
echo "CPU s per GiB, client + server: v4 $c4 (client $(per_gib "$cpu4"), server $(per_gib "$scpu4")), v3 $c3 (client $(per_gib "$cpu3"), server $(per_gib "$scpu3"))"
echo "ratio v4 CPU / v3 CPU                        $r3   target <= 0.5  $(verdict "$r3" '<=' 0.5)"
echo "  system seconds per GiB: v4 client $(calc "$csys4 / $gib"), server $(calc "$ssys4 / $gib"); v3 client $(calc "$csys3 / $gib"), server $(calc "$ssys3 / $gib")"
# The floor under any protocol that moves these bytes through the kernel as protocol 3
# does (1 MiB socket reads, O_DIRECT writes: the cheapest paths here) and hashes and
# encrypts them as protocol 4 must: protocol 3's system seconds, plus BLAKE3 and
# AES-256-GCM once on each side at the speeds `cargo bench --bench crypto` measures now.
echo
echo "== the CPU floor of protocol 4 (cargo bench --bench crypto, 256 MiB, 3 repetitions)"
BENCH_MIB=256 BENCH_REPS=3 cargo bench --quiet --bench crypto >"$work/crypto.out" 2>"$work/crypto.err" \
  || { cat "$work/crypto.err" >&2; exit 1; }
blake3_mbs=$(awk '/^BLAKE3/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "MB/s") { print $i; exit } }' "$work/crypto.out")
gcm_mbs=$(awk '/^AES-256-GCM/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "MB/s") { print $i; exit } }' "$work/crypto.out")
[ -n "$blake3_mbs" ] && [ -n "$gcm_mbs" ] || { echo "no BLAKE3 or AES-GCM figure in:" >&2; cat "$work/crypto.out" >&2; exit 1; }
crypto=$(calc "2 * 1073.741824 / $blake3_mbs + 2 * 1073.741824 / $gcm_mbs")
kernel3=$(calc "($csys3 + $ssys3) / $gib")
floor=$(calc "$kernel3 + $crypto")
half=$(calc "$c3 / 2")
echo "BLAKE3 $blake3_mbs MB/s, AES-256-GCM $gcm_mbs MB/s: both sides hash and encrypt or decrypt: $crypto s per GiB"
echo "protocol 3's system seconds (client + server): $kernel3 s per GiB"
echo "floor: $floor s per GiB; half of protocol 3's CPU: $half s per GiB  $(verdict "$floor" '<=' "$half" | sed 's/PASS/(reachable)/; s/MISS/(below the floor: not reachable)/')"
echo "ratio v4 CPU / floor                         $(calc "$c4 / $floor")"
echo "peak RSS v4: server $(calc "$skib4 / 1024") MiB, client $(calc "$ckib4 / 1024") MiB   target < 64 each  $(verdict "$(maximum "$skib4" "$ckib4")" '<' 65536)"
echo "peak RSS v3: server $(calc "$skib3 / 1024") MiB, client $(calc "$ckib3 / 1024") MiB"
