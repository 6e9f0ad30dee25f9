#!/usr/bin/env bash
# Sends concurrent requests to examples/async_service (one thread, a lock per
# resource taken with co_await and held across an asynchronous operation):
# every request succeeds (none found another inside its resource's critical
# section) and each resource's fencing tokens are distinct and consecutive.
set -euo pipefail
bin=$1
per_resource=${2:-15}
out=$(mktemp -d)
"$bin" --port 0 --seconds 60 >"$out/server" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$out"' EXIT

url=
for _ in $(seq 1 100); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*/' "$out/server" || true)
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { echo "FAIL: the service did not start"; cat "$out/server"; exit 1; }

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
