#!/usr/bin/env bash
# The main job on one machine: build, start a local server, register, send a file, show
# what the server recorded, stop the server. Everything happens in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/securexfer"
. "$(dirname "$0")/lib.sh"
start_local_server
echo "server: listening on $address (storage and database in $work/server)"

head -c 10000000 /dev/urandom > "$work/client/hello.bin"
cd "$work/client"
# The client keeps its identity under $XDG_CONFIG_HOME/securexfer; the demo's stays in its
# temporary directory.
export XDG_CONFIG_HOME="$work/client/config"
"$bin" register --server "$address" --name "demo-$$"
"$bin" send hello.bin --server "$address"
echo "second send, reconnecting with the saved identity:"
"$bin" send hello.bin --server "$address"
cd "$work/server"
"$bin" db inspect
cmp "$work/client/hello.bin" storage/*/hello.bin && echo "demo: the stored file is identical to the one sent"
