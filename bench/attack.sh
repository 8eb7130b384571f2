#!/usr/bin/env bash
# Each attack of issue 11 against a fresh release server on 127.0.0.1, with
# examples/attack.rs: while the attack runs from other loopback addresses, a normal client
# at 127.0.0.1 makes TRIES (20) whole transfers (register, send 64 KiB, confirm) spread over
# DURATION (20) seconds (FORGERY_SECS (60) for the forgery shape). For each shape it
# prints the server's peak RSS (VmHWM), the normal client's latency p50 / p95 / max and
# what the attacker achieved, beside the no-attack baseline of the same round; REPS (3)
# rounds, then the medians.
#
# usage: bench/attack.sh [none|forgery|parked|trickle|registrations|unconfirmed]...
#   (default: all; `none` is always run first as the baseline)
#   NO_BUILD=1 skips the release build; KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

REPS=${REPS:-3}
TRIES=${TRIES:-20}
DURATION=${DURATION:-20}
FORGERY_SECS=${FORGERY_SECS:-60}
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(forgery parked trickle registrations unconfirmed)
shapes=(none "${shapes[@]/none/}")

build_release --example attack
attack=${ATTACK_BIN:-$PWD/target/release/examples/attack}
# 5100 attacking sockets on one side, as many accepted on the other.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-attack.XXXXXX")
cleanup() {
  stop_server
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# Server flags per shape: the defaults, except that `parked` raises --max-uploads so that
# all 1100 uploads are held at once (the worst case: an operator who raised the cap; with
# the default of 256 the rest are refused with 2107 before any content is read).
flags_for() {
  case $1 in
    parked) echo "--max-uploads 1200" ;;
    *) echo "" ;;
  esac
}

declare -A rss p50 p95 pmax ok within1 within2 vok vmax attacker records
run_shape() {
  local shape=$1 rep=$2 dir=$work/$1-$2 secs=$DURATION
  [ "$shape" = forgery ] && secs=$FORGERY_SECS
  # shellcheck disable=SC2046
  start_server "$dir" $(flags_for "$shape")
  local out status=0
  out=$("$attack" --server "$server_addr" --shape "$shape" --tries "$TRIES" --duration "$secs" \
    --db "$dir/defensive.db" 2>&1) || status=$?
  local peak
  peak=$(peak_rss_kib "$server_pid")
  stop_server
  echo "$out" | sed 's/^/    /'
  [ "$status" = 0 ] || echo "    ($shape round $rep: the driver reported a failure, exit $status)"
  local normal
  normal=$(echo "$out" | grep '^normal:')
  rss[$shape,$rep]=$(calc "$peak / 1024")
  p50[$shape,$rep]=$(echo "$normal" | awk '{print $5}')
  p95[$shape,$rep]=$(echo "$normal" | awk '{print $7}')
  pmax[$shape,$rep]=$(echo "$normal" | awk '{print $9}')
  ok[$shape,$rep]=$(echo "$normal" | awk '{print $3}')
  within1[$shape,$rep]=$(echo "$normal" | awk '{print $11}')
  within2[$shape,$rep]=$(echo "$normal" | awk '{print $13}')
  local victim
  victim=$(echo "$out" | grep '^victim:')
  vok[$shape,$rep]=$(echo "$victim" | awk '{print $3}')
  vmax[$shape,$rep]=$(echo "$victim" | awk '{print $9}')
  attacker[$shape,$rep]=$(echo "$out" | sed -n 's/^attacker: //p')
  records[$shape,$rep]=$(echo "$out" | sed -n 's/^records: //p')
  [ "${KEEP:-0}" = 1 ] || rm -rf "$dir"
}

echo "attack benchmark: ${shapes[*]}; $REPS rounds; $TRIES normal transfers per shape"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
for rep in $(seq "$REPS"); do
  for shape in "${shapes[@]}"; do
    [ -n "$shape" ] || continue
    echo
    echo "== round $rep: $shape (load before: $(load_avg))"
    run_shape "$shape" "$rep"
  done
done

col() { # col ARRAY SHAPE: the values of every round
  local -n arr=$1; local r vals=()
  for r in $(seq "$REPS"); do vals+=("${arr[$2,$r]}"); done
  echo "${vals[@]}"
}
echo
echo "== medians of $REPS rounds (each round's figures in brackets)"
printf '%-14s %8s %8s %8s %8s %9s %6s %4s %4s %7s %9s  %s\n' shape "RSS MiB" "p50 ms" "p95 ms" "max ms" "p50/base" ok "<1s" "<2s" victim "vic. max" "attacker and records (last round)"
base50=$(median $(col p50 none))
for shape in "${shapes[@]}"; do
  [ -n "$shape" ] || continue
  m50=$(median $(col p50 "$shape"))
  printf '%-14s %8s %8s %8s %8s %9s %6s %4s %4s %7s %9s  %s\n' "$shape" \
    "$(median $(col rss "$shape"))" "$m50" "$(median $(col p95 "$shape"))" \
    "$(median $(col pmax "$shape"))" "$(calc "$m50 / $base50")" \
    "${ok[$shape,$REPS]}" "$(median $(col within1 "$shape"))" "$(median $(col within2 "$shape"))" \
    "${vok[$shape,$REPS]}" "$(maximum $(col vmax "$shape"))" \
    "${attacker[$shape,$REPS]}; ${records[$shape,$REPS]}"
  echo "    rounds: RSS [$(col rss "$shape")] p50 [$(col p50 "$shape")] max [$(col pmax "$shape")]"
done

echo
echo "== targets (issue 11)"
forged=0
for r in $(seq "$REPS"); do
  n=$(echo "${records[forgery,$r]:-forged 0}" | awk '{print $2}')
  forged=$((forged + n))
done
echo "forgery: forged files in $REPS x ${FORGERY_SECS} s: $forged (target 0) $([ "$forged" = 0 ] && echo PASS || echo MISS);" \
  "victim transfers that failed: $(for r in $(seq "$REPS"); do echo "${vok[forgery,$r]:-0/0}"; done | awk -F/ '{f += $2 - $1} END {print f}') (target 0)"
echo "forgery: at the longest block (1 h per client id, whatever the address) one guess an hour,"
echo "         one in 255 lucky: about $(calc "255 / 24") days per forged file (target > 1 day)"
if [ -n "${rss[parked,1]:-}" ]; then
  echo "parked:  peak RSS $(maximum $(col rss parked)) MiB (target < 256) $(verdict "$(maximum $(col rss parked))" '<' 256);" \
    "slowest normal transfer $(maximum $(col pmax parked)) ms (target < 1000) $(verdict "$(maximum $(col pmax parked))" '<' 1000)"
fi
if [ -n "${within2[trickle,1]:-}" ]; then
  least=$(printf '%s\n' $(col within2 trickle) | sort -g | head -1)
  need=$(( (TRIES * 19 + 19) / 20 ))
  echo "trickle: fewest normal transfers within 2 s in a round: $least of $TRIES (target >= $need, 19 in 20) $(verdict "$least" '>=' "$need")"
fi
