#!/usr/bin/env bash
# Many small files (issue 15), with same-run baselines, each run REPS times (interleaved)
# and reported as medians with the individual runs:
#   (a) securexfer send -r DIR over protocol 4 -> a fresh serve on 127.0.0.1 (every file
#       fsynced and committed by the server before it is acknowledged), under a new
#       stored name each run so that no run replaces the last one's files
#   (b) securexfer get -r NAME -o DIR back into an empty directory (each file verified,
#       synced and renamed into place before the command exits)
#   (c) scp -r up and (d) scp -r down, to and from a throwaway sshd on 127.0.0.1 (scp does
#       not fsync: its copies may still be in the page cache when it exits)
#   (e) rsync -a over ssh up and (f) down, to and from the same sshd (no fsync either)
#   (g) cp -r DIR DEST && sync on this machine: the floor of making the files durable
# Then, when `securexfer send --help` shows --parallel: one file of random data (1 GiB)
# sent with --parallel 1 and with --parallel 4.
# The tree is FILES (1000) files of FILE_SIZE (4096) bytes of random data in folders of
# 100. Every copy is compared with the original (diff -r) after it is made, outside the
# timing; dirty pages are written out before each timed run, so nobody pays for another's
# writeback.
#
# usage: bench/many.sh [--files N] [--file-size BYTES] [--big 1G|BYTES] [--reps N]
#   NO_BUILD=1 skips `cargo build --release`; KEEP=1 keeps the work directory;
#   TMPDIR chooses where the files go.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

files=${FILES:-1000}
file_size=${FILE_SIZE:-4096}
big_arg=${BIG:-1G}
reps=${REPS:-5}
while [ $# -gt 0 ]; do
  case $1 in
    --files) files=$2; shift 2 ;;
    --file-size) file_size=$2; shift 2 ;;
    --big) big_arg=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--files N] [--file-size BYTES] [--big 1G|BYTES] [--reps N]" >&2; exit 2 ;;
  esac
done
case $big_arg in
  *G|*g) big=$(( ${big_arg%?} << 30 )) ;;
  *M|*m) big=$(( ${big_arg%?} << 20 )) ;;
  *) big=$big_arg ;;
esac

need_tool /usr/bin/time time
need_tool openssl openssl
need_tool /usr/sbin/sshd openssh-server
need_tool scp openssh-client
need_tool rsync rsync
build_release

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-many.XXXXXX")
export XDG_CONFIG_HOME=$work/home
sshd_pid=
cleanup() {
  stop_server
  [ -n "$sshd_pid" ] && { kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; }
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

ssh_opts=(-i "$work/ssh/client_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o BatchMode=yes -o LogLevel=ERROR -c aes128-gcm@openssh.com)
me=$(id -un)@127.0.0.1

# The tree: FILES files of FILE_SIZE random bytes, 100 to a folder (d00/f000 ...).
make_tree() {
  local dir=$1 i
  mkdir -p "$dir"
  make_file "$work/tree.bin" "$((files * file_size))"
  split -b "$file_size" -a 6 -d "$work/tree.bin" "$dir/f"
  rm -f "$work/tree.bin"
  for ((i = 0; i < files; i++)); do
    local d; d=$(printf 'd%02d' $((i / 100)))
    mkdir -p "$dir/$d"
    mv "$dir/$(printf 'f%06d' "$i")" "$dir/$d/$(printf 'f%03d' $((i % 100)))"
  done
  [ "$(find "$dir" -type f | wc -l)" = "$files" ] || { echo "could not make $files files" >&2; exit 1; }
}

# timed CMD...: wall seconds in run_secs, after writing out what earlier runs left dirty.
timed() {
  local t0 t1
  sync
  t0=$(now_ns)
  "$@"
  t1=$(now_ns)
  run_secs=$(calc "($t1 - $t0) / 1e9")
}

# same ORIGINAL COPY: the copy is the original, byte for byte, file for file.
same() { diff -r "$1" "$2" >/dev/null || { echo "$3: the copy differs from the original" >&2; exit 1; }; }

sx_send() { "$bin" send -r "$src" --as "$1" --server "$server_addr" --quiet; }
sx_get() { "$bin" get -r "$1" -o "$2" --server "$server_addr" --quiet; }
scp_up() { scp -q -r -P "$ssh_port" "${ssh_opts[@]}" "$src" "$me:$1"; }
scp_down() { scp -q -r -P "$ssh_port" "${ssh_opts[@]}" "$me:$src" "$1"; }
rsync_up() { rsync -a -e "ssh -p $ssh_port ${ssh_opts[*]}" "$src/" "$me:$1/"; }
rsync_down() { rsync -a -e "ssh -p $ssh_port ${ssh_opts[*]}" "$me:$src/" "$1/"; }
cp_sync() { cp -r "$src" "$1" && sync; }

start_sshd
src=$work/src/many
make_tree "$src"
start_server "$work/server"
"$bin" register --server "$server_addr" --name "many-$$" --protocol 4 >/dev/null 2>"$work/register.err" \
  || { cat "$work/register.err" >&2; exit 1; }
echo "many bench: $bin, $files files of $file_size bytes, $reps runs each, work in $work (load $(load_avg))"

declare -A runs
# One contender's run: record NAME CMD... (the command's last argument is where it writes).
record() {
  local name=$1; shift
  timed "$@"
  runs[$name]+="$run_secs "
}

# Each run writes into folders of its own, and the copies are deleted only after the last
# run: on ext4 without a journal, every file created soon after many were deleted in its
# block group pays for skipping the recently freed inodes (find_inode_bit), so deleting
# between runs would make each contender's cost depend on what was deleted before it.
for ((r = 1; r <= reps; r++)); do
  up=$work/ssh/dest/$r down=$work/down/$r
  mkdir -p "$up" "$down/sx"
  record sx_up sx_send "many$r"
  record scp_up scp_up "$up/scp"
  same "$src" "$up/scp" "scp -r up"
  record rsync_up rsync_up "$up/rsync"
  same "$src" "$up/rsync" "rsync up"
  record cp cp_sync "$up/cp"
  same "$src" "$up/cp" "cp -r"
  record sx_down sx_get "many$r" "$down/sx"
  same "$src" "$down/sx/many$r" "securexfer get -r"
  record scp_down scp_down "$down/scp"
  same "$src" "$down/scp" "scp -r down"
  record rsync_down rsync_down "$down/rsync"
  same "$src" "$down/rsync" "rsync down"
done
rm -rf "$work/down" "$work/ssh/dest"
mkdir -p "$work/ssh/dest"
stored=$(find "$work/server/storage" -type f -name 'f*' | wc -l)
[ "$stored" -ge $((files * reps)) ] || { echo "the server holds $stored files, not $((files * reps))" >&2; exit 1; }

echo
echo "== $files files of $file_size bytes, medians of $reps (load now: $(load_avg))"
# row LABEL NAME: the median, ms per file and the runs.
row() {
  local m; m=$(median ${runs[$2]})
  eval "med_$2=$m"
  printf '%-40s %7.3f s %7.2f ms/file   (runs: %s)\n' "$1" "$m" "$(calc "$m * 1000 / $files")" "${runs[$2]% }"
}
row "(a) securexfer send -r (protocol 4)" sx_up
row "(b) securexfer get -r -o DIR" sx_down
row "(c) scp -r up" scp_up
row "(d) scp -r down" scp_down
row "(e) rsync -a over ssh up" rsync_up
row "(f) rsync -a over ssh down" rsync_down
row "(g) cp -r && sync (local floor)" cp
up=$(calc "$med_scp_up / $med_sx_up"); dn=$(calc "$med_scp_down / $med_sx_down")
echo "ratio scp -r up time / send -r time        $up   target >= 3  $(verdict "$up" '>=' 3)"
echo "ratio scp -r down time / get -r time       $dn   target >= 3  $(verdict "$dn" '>=' 3)"
echo "ratio rsync up time / send -r time         $(calc "$med_rsync_up / $med_sx_up")"
echo "ratio rsync down time / get -r time        $(calc "$med_rsync_down / $med_sx_down")"
echo "ratio send -r time / cp -r && sync time    $(calc "$med_sx_up / $med_cp")"

# ---- --parallel (issue 15): runs only once `send` has the flag. ----------------------
if ! "$bin" send --help | grep -q -- '--parallel'; then
  echo
  echo "== one file of $big bytes, --parallel 4 against 1: skipped (securexfer send has no --parallel yet)"
  exit 0
fi
file=$work/big.bin
make_file "$file" "$big"
p1=() p4=()
# Which goes first alternates, so that neither always follows the other's 1 GiB of writes.
send_big() {
  timed "$bin" send "$file" --as "big$1-$2" --parallel "$1" --server "$server_addr" --quiet
  if [ "$1" = 1 ]; then p1+=("$run_secs"); else p4+=("$run_secs"); fi
}
for ((r = 1; r <= reps; r++)); do
  if ((r % 2)); then send_big 1 "$r"; send_big 4 "$r"; else send_big 4 "$r"; send_big 1 "$r"; fi
  "$bin" rm "big1-$r" "big4-$r" --server "$server_addr" --quiet
done
m1=$(median "${p1[@]}"); m4=$(median "${p4[@]}")
mb=$(calc "$big / 1e6")
echo
echo "== one file of $big bytes, medians of $reps (load now: $(load_avg))"
printf '%-40s %7.3f s %8.0f MB/s   (runs: %s)\n' "(h) securexfer send --parallel 1" "$m1" "$(calc "$mb / $m1")" "${p1[*]}"
printf '%-40s %7.3f s %8.0f MB/s   (runs: %s)\n' "(i) securexfer send --parallel 4" "$m4" "$(calc "$mb / $m4")" "${p4[*]}"
ratio=$(calc "$m4 / $m1")
# One file is one unit, sent on one connection whatever --parallel says (v4_parallel checks
# that the server accepts one connection), so the two medians differ by this machine's
# run-to-run noise alone. "No slower" is judged against that noise, measured in the same
# run: the ratio may exceed 1 by at most half the relative spread of the --parallel 1 runs.
spread=$(calc "($(maximum "${p1[@]}") - $(minimum "${p1[@]}")) / $m1")
bound=$(calc "1 + $spread / 2")
echo "ratio --parallel 4 time / --parallel 1 time  $ratio   target <= 1 (strict: $(verdict "$ratio" '<=' 1))"
echo "  within the noise of the --parallel 1 runs (<= $bound, half their spread $spread): $(verdict "$ratio" '<=' "$bound")"
