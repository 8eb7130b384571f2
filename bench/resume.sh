#!/usr/bin/env bash
# Resuming a protocol-4 upload (issue 15), on one file of random data (1 GiB), each run
# REPS times and reported as medians:
#   (a) a whole `securexfer send` of the file: the baseline, measured in the same run
#   (b) the same send SIGKILLed once the server has written half of the file, then run
#       again: the second run's wall time and the bytes it sent (size - resumed_from)
# and the same for `get` (the download SIGKILLed once its partial file holds half).
# Target: the second run transfers at most 55% of the file, and the stored (or
# downloaded) file is byte-identical (checked with cmp).
#
# usage: bench/resume.sh [--size 1G|BYTES] [--reps N]
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

need_tool python3 python3
build_release

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-resume.XXXXXX")
cleanup() {
  stop_server
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

file=$work/big.bin
head -c "$size" /dev/urandom >"$file"
home=$work/home
mkdir -p "$home" "$work/down"
start_server "$work/server"
XDG_CONFIG_HOME=$home "$bin" register --server "$server_addr" --name "resume-bench-$$" \
  >/dev/null 2>"$work/register.err" || { cat "$work/register.err" >&2; exit 1; }

client() { XDG_CONFIG_HOME=$home "$bin" "$@" --server "$server_addr"; }

# The largest file under DIR whose name starts with PREFIX, in bytes (0 if none).
largest() {
  find "$1" -name "$2*" -type f -printf '%s\n' 2>/dev/null | sort -n | tail -1 | grep . || echo 0
}

# Durable bytes recorded for the unfinished upload of big.bin (0 if none).
recorded() {
  python3 - "$work/server/defensive.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
row = db.execute("SELECT Durable FROM unfinished_uploads WHERE Path = 'big.bin'").fetchone()
print(row[0] if row else 0)
EOF
}

# Starts `securexfer ARGS...` (the process itself, not a shell around it), SIGKILLs it
# once `largest DIR PREFIX` reaches half the size.
kill_at_half() {
  local dir=$1 prefix=$2; shift 2
  env XDG_CONFIG_HOME="$home" "$bin" "$@" --server "$server_addr" >/dev/null 2>&1 &
  local pid=$!
  while [ "$(largest "$dir" "$prefix")" -lt $((size / 2)) ]; do
    kill -0 "$pid" 2>/dev/null || { echo "it ended before half" >&2; exit 1; }
    sleep 0.01
  done
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
}

# Wall seconds of COMMAND..., its stdout kept in $work/last.json.
timed() {
  local t0; t0=$(now_ns)
  "$@" >"$work/last.json"
  calc "($(now_ns) - $t0) / 1e9"
}

field() { python3 -c "import json,sys; print(next(json.loads(l) for l in open(sys.argv[1]) if '\"status\"' in l)[sys.argv[2]])" "$work/last.json" "$1"; }

whole_up=() second_up=() frac_up=() whole_down=() second_down=() frac_down=()
for rep in $(seq "$reps"); do
  client rm big.bin >/dev/null 2>&1 || true
  whole_up+=("$(timed client send "$file" --json)")
  client rm big.bin >/dev/null 2>&1 || true
  # Paced, so that half on the server's disk is about half sent: at full speed the client
  # is done (its COMMIT sent) before the server has written half, and nothing is cut.
  kill_at_half "$work/server/storage" .securexfer-part-kept- send "$file" --limit-rate 256M
  while [ "$(recorded)" -lt $((size / 2)) ]; do sleep 0.05; done
  second_up+=("$(timed client send "$file" --json)")
  [ "$(field status)" = verified ] || { cat "$work/last.json" >&2; exit 1; }
  frac_up+=("$(calc "($size - $(field resumed_from)) / $size")")
  stored=$(find "$work/server/storage" -name big.bin -type f)
  cmp -s "$stored" "$file" || { echo "the stored file differs" >&2; exit 1; }

  rm -f "$work/down/big.bin"
  whole_down+=("$(timed client get big.bin -o "$work/down" --json)")
  rm -f "$work/down/big.bin"
  kill_at_half "$work/down" .big.bin.securexfer-partial get big.bin -o "$work/down"
  second_down+=("$(timed client get big.bin -o "$work/down" --json)")
  [ "$(field status)" = verified ] || { cat "$work/last.json" >&2; exit 1; }
  frac_down+=("$(calc "($size - $(field resumed_from)) / $size")")
  cmp -s "$work/down/big.bin" "$file" || { echo "the downloaded file differs" >&2; exit 1; }
  echo "run $rep: up ${whole_up[-1]} s whole, ${second_up[-1]} s resumed (${frac_up[-1]} sent);" \
    "down ${whole_down[-1]} s whole, ${second_down[-1]} s resumed (${frac_down[-1]} fetched)" >&2
done

echo "resume, $(calc "$size / 1073741824") GiB, $reps runs, load $(load_avg)"
printf '%-44s %10s %10s  %s\n' "" "median" "of whole" "runs"
row() { printf '%-44s %10s %10s  %s\n' "$1" "$2" "$3" "$4"; }
wu=$(median "${whole_up[@]}"); su=$(median "${second_up[@]}")
wd=$(median "${whole_down[@]}"); sd=$(median "${second_down[@]}")
row "(a) send, whole file (s)" "$wu" "1.000" "${whole_up[*]}"
row "(b) send again after SIGKILL at half (s)" "$su" "$(calc "$su / $wu")" "${second_up[*]}"
row "    fraction of the file sent again" "$(median "${frac_up[@]}")" "" "${frac_up[*]}"
row "(a) get, whole file (s)" "$wd" "1.000" "${whole_down[*]}"
row "(b) get again after SIGKILL at half (s)" "$sd" "$(calc "$sd / $wd")" "${second_down[*]}"
row "    fraction of the file fetched again" "$(median "${frac_down[@]}")" "" "${frac_down[*]}"
fu=$(maximum "${frac_up[@]}"); fd=$(maximum "${frac_down[@]}")
echo "target: at most 0.55 of the file again, every run: send $fu $(verdict "$fu" "<=" 0.55), get $fd $(verdict "$fd" "<=" 0.55)"
