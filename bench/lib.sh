# Helpers shared by bench/e2e.sh and bench/load.sh (sourced, not run).

bin=${SECUREXFER_BIN:-$PWD/target/release/securexfer}

# Builds the release binary (and the load example) unless NO_BUILD=1.
build_release() {
  if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release --quiet --bin securexfer "$@"
  fi
}

# Installs missing tools from Debian's packages: need_tool COMMAND PACKAGE...
need_tool() {
  local cmd=$1; shift
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "$cmd" ]; then
    echo "installing $* for $cmd" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# Starts `securexfer serve` on 127.0.0.1 with a free port in DIR; sets server_pid and
# server_addr. Extra arguments go to serve.
start_server() {
  local dir=$1; shift
  mkdir -p "$dir"
  (cd "$dir" && exec "$bin" serve --listen 127.0.0.1 --port 0 --storage storage --db defensive.db "$@" \
      >listening.txt 2>server.log) &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q listening "$dir/listening.txt" 2>/dev/null && break
    sleep 0.1
  done
  server_addr=$(sed -n 's/^securexfer listening on //p' "$dir/listening.txt")
  [ -n "$server_addr" ] || { echo "the server did not start; see $dir/server.log" >&2; cat "$dir/server.log" >&2; return 1; }
}

# Stops the server started by start_server (SIGTERM, then wait).
stop_server() {
  if [ -n "${server_pid:-}" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}

# Peak resident set of a running process, in KiB.
peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# User + system CPU seconds a running process has used so far.
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

# Nanoseconds since the epoch.
now_ns() { date +%s%N; }

# The median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# The largest of the numbers given as arguments.
maximum() { printf '%s\n' "$@" | sort -g | tail -1; }

# Floating-point arithmetic: calc EXPR.
calc() { awk "BEGIN {printf \"%.3f\", $1}"; }

# PASS or MISS: verdict VALUE OP TARGET with OP one of <= >= <.
verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
  ok = (op == "<=") ? v <= t : (op == ">=") ? v >= t : v < t; print ok ? "PASS" : "MISS" }'; }

# The load average, for the record.
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }
