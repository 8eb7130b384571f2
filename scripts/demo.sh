#!/usr/bin/env bash
# The main job on one machine: build, start a local server, register, send a file, show
# what the server recorded, stop the server. Everything happens in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/securexfer"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/server" "$work/client"
(cd "$work/server" && exec "$bin" serve --port 0 > listening.txt 2> server.log) &
server=$!
for _ in $(seq 50); do grep -q listening "$work/server/listening.txt" 2>/dev/null && break; sleep 0.1; done
address=$(sed -n 's/^securexfer listening on //p' "$work/server/listening.txt")
echo "server: listening on $address (storage and database in $work/server)"

head -c 10000000 /dev/urandom > "$work/client/hello.bin"
cd "$work/client"
"$bin" register --server "$address" --name "demo-$$"
"$bin" send hello.bin --server "$address"
echo "second send, reconnecting with the saved identity:"
"$bin" send hello.bin --server "$address"
cd "$work/server"
"$bin" db inspect
cmp "$work/client/hello.bin" storage/*/hello.bin && echo "demo: the stored file is identical to the one sent"
