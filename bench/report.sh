#!/usr/bin/env bash
# The whole benchmark report of issue 18 in one run: every speed benchmark, one after the
# other on one release build, each with its same-run baselines (the scripts' own), written
# as one markdown document with the machine it ran on and the command that reproduces
# each section:
#   e2e.sh        protocol 3, one file of 1 GiB, against `openssl enc` and scp
#   v4.sh         protocol 4 against protocol 3, a plaintext TCP copy and scp (CPU, RSS)
#   resume.sh     a 1 GiB send and get SIGKILLed at half, then resumed
#   many.sh x2    1,000 files of 4 KiB and 100 files of 1 MiB, against scp -r and rsync
#   clients.sh    1, 8 and 64 clients at once, per protocol
#   scaleout.sh   PostgreSQL + an object store, 1 to 3 instances, beside the default
# LARGEST=1 adds e2e.sh --size 4G (the largest file protocol 3 carries) and v4.sh on that
# file (~15 min more).
# A section that fails is reported as failed (with its log's tail) and the rest go on;
# the exit status is then 1.
#
# usage: bench/report.sh [OUT.md]   (default: bench/report-DATE.md; NO_BUILD=1 skips the
#   release build; REPS (3) is passed to every script)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

out=${1:-bench/report-$(date -u +%Y%m%d-%H%M).md}
export REPS=${REPS:-3}
build_release --example load || exit 1
export NO_BUILD=1
logs=$(mktemp -d "${TMPDIR:-/tmp}/securexfer-report.XXXXXX")
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$logs"' EXIT

sections=(
  "bench/e2e.sh --size 1G"
  "bench/v4.sh --size 1G"
  "bench/resume.sh --size 1G"
  "bench/many.sh --files 1000 --file-size 4096 --big 1G"
  "bench/many.sh --files 100 --file-size 1048576 --big 64M"
  "bench/clients.sh"
  "bench/scaleout.sh"
)
# Protocol 4 has no limit of its own (a u64 size); the server's is `--max-file-size`, 4 GiB
# by default. Its largest run uses protocol 3's largest file, which v4.sh also sends over
# protocol 3 for its CPU ratio.
[ "${LARGEST:-0}" = 1 ] && sections+=("bench/e2e.sh --size 4G" "bench/v4.sh --size 4294967279")

{
  echo "# securexfer benchmark report"
  echo
  echo "- when: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  echo "- machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
  echo "- load at the start: $(cut -d' ' -f1-3 /proc/loadavg); REPS=$REPS"
  echo "- binary: $bin"
  echo
  echo "Each section is one script's own output: its figures beside the baselines it measured"
  echo "in the same run, medians of REPS runs with the runs beside them. Compare ratios, not"
  echo "absolute figures across days (bench/README.md)."
} > "$out"

failed=0
n=0
for section in "${sections[@]}"; do
  n=$((n + 1))
  log="$logs/$n.log"
  echo "report: $section" >&2
  started=$(date +%s)
  # shellcheck disable=SC2086 # the section is a command line
  if $section > "$log" 2>&1; then status=ok; else status="FAILED (exit $?)"; failed=1; fi
  took=$(( $(date +%s) - started ))
  {
    echo
    echo "## \`$section\`"
    echo
    echo "$status in ${took} s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo '```'
    if [ "$status" = ok ]; then cat "$log"; else tail -40 "$log"; fi
    echo '```'
  } >> "$out"
done
echo "report: written to $out" >&2
exit "$failed"
