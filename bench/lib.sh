# Helpers shared by the bench scripts (sourced, not run).

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

# Starts `securexfer serve` on 127.0.0.1 with a free port in DIR over a storage directory
# and a SQLite file there; sets server_pid and server_addr. Extra arguments go to serve.
start_server() {
  local dir=$1; shift
  serve_in "$dir" --storage storage --db defensive.db "$@"
}

# start_server with only the arguments given (`--db`, `--storage` among them).
serve_in() {
  local dir=$1; shift
  mkdir -p "$dir"
  (cd "$dir" && exec "$bin" serve --listen 127.0.0.1 --port 0 "$@" \
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

# The system (kernel) part of those seconds.
sys_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{print $15 / hz}' "/proc/$1/stat"
}

# Bytes of a size argument: 1G, 512M (binary units) or a plain byte count.
bytes_of() {
  case $1 in
    *G|*g) echo $(( ${1%?} << 30 )) ;;
    *M|*m) echo $(( ${1%?} << 20 )) ;;
    *) echo "$1" ;;
  esac
}

# Nanoseconds since the epoch.
now_ns() { date +%s%N; }

# The median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# The largest of the numbers given as arguments.
maximum() { printf '%s\n' "$@" | sort -g | tail -1; }

# The smallest of the numbers given as arguments.
minimum() { printf '%s\n' "$@" | sort -g | head -1; }

# Floating-point arithmetic: calc EXPR.
calc() { awk "BEGIN {printf \"%.3f\", $1}"; }

# PASS or MISS: verdict VALUE OP TARGET with OP one of <= >= <.
verdict() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
  ok = (op == "<=") ? v <= t : (op == ">=") ? v >= t : v < t; print ok ? "PASS" : "MISS" }'; }

# The load average, for the record.
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# A throwaway sshd on a free loopback port, its keys and config all in $work/ssh; sets
# sshd_pid and ssh_port (the caller stops it).
start_sshd() {
  local d=$work/ssh
  mkdir -p "$d/dest" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$d/client_key"
  cp "$d/client_key.pub" "$d/authorized_keys"
  ssh_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$d/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $d/host_key
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  sshd_pid=$!
  for _ in $(seq 50); do
    (echo >"/dev/tcp/127.0.0.1/$ssh_port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "sshd did not start:" >&2; cat "$d/sshd.log" >&2; return 1
}


# Random data fast: AES-CTR of zeros under a random key.
make_file() {
  local path=$1 size=$2
  # openssl dies of SIGPIPE when head has enough: not a failure.
  { openssl enc -aes-128-ctr -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" -in /dev/zero 2>/dev/null || true; } \
    | head -c "$size" >"$path"
  [ "$(stat -c %s "$path")" = "$size" ] || { echo "could not make $size bytes of data" >&2; exit 1; }
  cat "$path" >/dev/null  # into the page cache, so every contender reads from memory
}

