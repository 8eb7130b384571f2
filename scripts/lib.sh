# Shared by the scripts here: start `securexfer serve` on a free loopback port in a work
# directory, and stop it on exit. Sets $work (with server/ and client/ inside), $server
# (the pid) and $address (HOST:PORT). Needs $bin.
start_local_server() {
  work=$(mktemp -d)
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
  mkdir -p "$work/server" "$work/client"
  (cd "$work/server" && exec "$bin" serve --port 0 > listening.txt 2> server.log) &
  server=$!
  for _ in $(seq 50); do grep -q listening "$work/server/listening.txt" 2>/dev/null && break; sleep 0.1; done
  address=$(sed -n 's/^securexfer listening on //p' "$work/server/listening.txt")
  [ -n "$address" ] || { echo "the server did not start:"; cat "$work/server/server.log"; exit 1; }
}
