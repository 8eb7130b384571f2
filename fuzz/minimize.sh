#!/usr/bin/env bash
# Minimizes corpus/<target> with `cargo fuzz cmin`, keeping the named inputs that must stay
# whatever coverage they add: the hand-made seeds (seed-*) and the inputs of fixed crashes
# (crash-*), which tests/suite/fuzz_corpus.rs replays as regression tests.
# Usage (from fuzz/): ./minimize.sh decode_request|server_session|v4_frames
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: $0 <target>}
keep=$(mktemp -d)
trap 'rm -rf "$keep"' EXIT
find "corpus/$target" -maxdepth 1 -type f \( -name 'seed-*' -o -name 'crash-*' \) -exec cp {} "$keep" \;
RUSTC_BOOTSTRAP=1 cargo fuzz cmin "$target" -- -timeout=20 -rss_limit_mb=4096
# A stateful target keeps hundreds of inputs that each hold one hit-count feature; set-cover
# merging keeps (nearly) every feature in far fewer files.
if [ "$(find "corpus/$target" -type f | wc -l)" -gt 450 ]; then
  RUSTC_BOOTSTRAP=1 cargo fuzz cmin "$target" -- -set_cover_merge=1 -timeout=20 -rss_limit_mb=4096
fi
cp "$keep"/* "corpus/$target/" 2>/dev/null || true
echo "corpus/$target: $(find "corpus/$target" -type f | wc -l) files, $(du -sh --apparent-size "corpus/$target" | cut -f1)"
