#!/usr/bin/env bash
# Checks that a release binary is statically linked and runs the whole flow on its own:
# serve, register, send, reconnect and send again, db inspect.
# Usage: scripts/static-check.sh path/to/securexfer
set -euo pipefail
bin=$(realpath "$1")
echo "== $bin"
file "$bin" || true
links=$(ldd "$bin" 2>&1 || true)
case "$links" in
  *"statically linked"*|*"not a dynamic executable"*) echo "statically linked: $links" ;;
  *) echo "error: $bin is dynamically linked:"; echo "$links"; exit 1 ;;
esac
. "$(dirname "$0")/lib.sh"
start_local_server
head -c 3000000 /dev/urandom > "$work/client/f.bin"
cd "$work/client"
"$bin" register --server "$address" --name static-check
"$bin" send f.bin --server "$address"
"$bin" send f.bin --server "$address" --json
cd "$work/server"
"$bin" db inspect --json > inspect.json
grep -q '"verified": true' inspect.json
cmp "$work/client/f.bin" storage/*/f.bin
echo "static-check: OK (stored file identical, recorded as verified)"
