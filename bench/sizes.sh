#!/usr/bin/env bash
# Sizes of the function bootstraps that are present: the x86_64 release builds in target/release
# (or BIN_DIR), and any arm64 / SAM builds (target/lambda-arm64, target/lambda, .aws-sam/build).
# The goal is at most 8 MB per arm64 bootstrap (DESIGN section 8: small arm64 binaries).
#   bench/sizes.sh [BIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-target/release}
functions=(webhook-ingest earn outbox-relay tier-recalc member-api redeem campaign-assign)
mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

echo "x86_64 release builds in $bin_dir ($(date -u +%F))"
echo "| function | bytes | MB | stripped | zip -9 (MB) |"
echo "|---|---|---|---|---|"
for f in "${functions[@]}"; do
  path="$bin_dir/$f"
  if [ ! -f "$path" ]; then echo "| $f | missing | | | |"; continue; fi
  bytes=$(stat -c %s "$path")
  stripped=$(file -b "$path" | grep -q 'not stripped' && echo no || echo yes)
  zipped=$(python3 - "$path" <<'PY'
import io, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    z.write(sys.argv[1], "bootstrap")
print(f"{len(buf.getvalue()) / 1048576:.2f}")
PY
)
  echo "| $f | $bytes | $(mb "$bytes") | $stripped | $zipped |"
done

probe=target/bench-probe/release/probe
if [ -f "$probe" ]; then
  echo "| (bench probe: one GetItem, same SDK and profile) | $(stat -c %s "$probe") | $(mb "$(stat -c %s "$probe")") | | |"
fi

echo
echo "arm64 / SAM builds:"
found=$(find . -path ./node_modules -prune -o \( -name bootstrap -path '*arm64*' -o -name bootstrap -path '*aws-sam*' -o -path './target/aarch64-unknown-linux-*/release/*' -type f -perm -u+x \) -print 2>/dev/null | grep -v '\.d$' | sort || true)
if [ -z "$found" ]; then
  echo "none (no target/lambda-arm64, target/aarch64-*, or .aws-sam/build bootstraps in this tree)"
else
  echo "| file | bytes | MB | arch |"
  echo "|---|---|---|---|"
  while read -r path; do
    bytes=$(stat -c %s "$path")
    echo "| $path | $bytes | $(mb "$bytes") | $(file -b "$path" | cut -d, -f2 | xargs) |"
  done <<< "$found"
fi
