#!/usr/bin/env bash
# Scrapes examples/metrics_http with curl while its workers take locks: the
# endpoint answers with the Prometheus text format, the counters grow between
# two scrapes, promtool (when installed) accepts the body, and other paths 404.
set -euo pipefail
bin=$1
out=$(mktemp)
cleanup() { rm -f "$out" "$out".*; }
source "$(dirname "$0")/start_example.sh"
start_example "$out" 'http://127.0.0.1:[0-9]*/metrics' "$bin" --port 0 --seconds 30

acquisitions() { awk '/^dlock_acquisitions_total\{/ {s += $2} END {print s + 0}' "$1"; }

curl -fsS -D "$out.h1" "$url" -o "$out.1"
sleep 0.5
curl -fsS "$url" -o "$out.2"

grep -qi '^content-type: text/plain; version=0.0.4' "$out.h1" || { echo "FAIL: content type"; cat "$out.h1"; exit 1; }
grep -q '^# TYPE dlock_acquisitions_total counter$' "$out.1" || { echo "FAIL: no TYPE line"; exit 1; }
grep -q '^dlock_hold_seconds_bucket{backend="memory",lock_class="orders",kind="mutex",le="+Inf"} ' "$out.2" ||
  { echo "FAIL: no hold histogram for class orders"; exit 1; }
first=$(acquisitions "$out.1")
second=$(acquisitions "$out.2")
[ "$second" -gt "$first" ] || { echo "FAIL: acquisitions did not grow ($first -> $second)"; exit 1; }
if command -v promtool >/dev/null; then
  promtool check metrics <"$out.2" || { echo "FAIL: promtool rejected the exposition"; exit 1; }
fi
code=$(curl -s -o /dev/null -w '%{http_code}' "${url%/metrics}/other")
[ "$code" = 404 ] || { echo "FAIL: /other answered $code"; exit 1; }
echo "metrics_http: acquisitions $first -> $second between scrapes; exposition valid"
echo "1 passed, 0 failed"
