#!/usr/bin/env bash
# Sends concurrent requests to examples/async_service (one thread, a lock per
# resource taken with co_await and held across an asynchronous operation):
# every request succeeds (none found another inside its resource's critical
# section) and each resource's fencing tokens are distinct and consecutive.
set -euo pipefail
bin=$1
per_resource=${2:-15}
out=$(mktemp -d)
cleanup() { rm -rf "$out"; }
source "$(dirname "$0")/start_example.sh"
start_example "$out/server" 'http://127.0.0.1:[0-9]*/' "$bin" --port 0 --seconds 60

clients=()
for r in orders invoices; do
  for i in $(seq 1 "$per_resource"); do
    curl -fsS "${url}lock/$r" -o "$out/$r.$i" &
    clients+=($!)
  done
done
for c in "${clients[@]}"; do wait "$c" || { echo "FAIL: a request failed"; exit 1; }; done

for r in orders invoices; do
  tokens=$(cat "$out/$r".* | awk -v r="$r" '$1 == r {print $2}' | sort -n | tr '\n' ' ')
  expected=$(seq 1 "$per_resource" | tr '\n' ' ')
  [ "$tokens" = "$expected" ] || { echo "FAIL: $r tokens: $tokens (expected $expected)"; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' "${url}other")
[ "$code" = 404 ] || { echo "FAIL: /other answered $code"; exit 1; }
echo "async_service: $per_resource concurrent requests on each of 2 resources; tokens distinct and consecutive"
echo "1 passed, 0 failed"
