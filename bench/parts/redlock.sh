# Redlock part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On five throw-away redis-servers, in the same run:
#   single: Lock<RedisBackend> on the first server, try_lock + unlock pairs/s
#   redlock: Lock<RedlockBackend> over all five, try_lock + unlock pairs/s
#   ratio:  redlock latency / single latency = single pairs/s / redlock pairs/s
#           (target <= 1.3: a 5-node round costs about one round trip to the
#           slowest node, not five)
#   contended: 8 contenders on one lock over five nodes, zero hold time:
#           handoffs/s, p50/p99 wait of lock(), fewest/most acquisitions
# DLOCK_BENCH_RUNS (default 5) rounds, single and redlock interleaved; medians are printed.
redlock_ports=()
for _ in 1 2 3 4 5; do
  redlock_p=$(free_port)
  start_redis "$redlock_p"
  redlock_ports+=("$redlock_p")
done
redlock_port_list=$(IFS=,; echo "${redlock_ports[*]}")
redlock_bin="$BENCH_BUILD/bench/redlock_bench"
redlock_runs=${DLOCK_BENCH_RUNS:-5}
redlock_results=$(mktemp -t dlock-redlockbench-results.XXXXXX)
_dlock_cleanup+=("rm -f '$redlock_results'")

for ((run = 1; run <= redlock_runs; run++)); do
  single_a=$(DLOCK_BENCH_REDLOCK_PORTS="$redlock_port_list" "$redlock_bin" --benchmark_filter=BM_redis_single_uncontended \
    --benchmark_min_time=1 --benchmark_format=json 2>/dev/null)
  redlock=$(DLOCK_BENCH_REDLOCK_PORTS="$redlock_port_list" "$redlock_bin" --benchmark_filter=BM_redlock_uncontended \
    --benchmark_min_time=1 --benchmark_format=json 2>/dev/null)
  single_b=$(DLOCK_BENCH_REDLOCK_PORTS="$redlock_port_list" "$redlock_bin" --benchmark_filter=BM_redis_single_uncontended \
    --benchmark_min_time=1 --benchmark_format=json 2>/dev/null)
  contended=$(DLOCK_BENCH_REDLOCK_PORTS="$redlock_port_list" DLOCK_BENCH_SECONDS=3 "$redlock_bin" \
    --benchmark_filter=BM_redlock_contended --benchmark_format=json 2>/dev/null)
  python3 -c '
import json, sys
ips = lambda s: json.loads(s)["benchmarks"][0]["items_per_second"]
single = (ips(sys.argv[1]) + ips(sys.argv[3])) / 2
c = json.loads(sys.argv[4])["benchmarks"][0]
print(single, ips(sys.argv[2]), c["handoffs_per_s"], c["p50_wait_ms"], c["p99_wait_ms"], c["min_acquisitions"], c["max_acquisitions"])
' "$single_a" "$redlock" "$single_b" "$contended" | tee -a "$redlock_results" |
    awk -v r="$run" '{printf "run %d: single node %.0f pairs/s (%.1f us), redlock 5 nodes %.0f pairs/s (%.1f us), latency ratio %.3f, contended(8) %.0f handoffs/s p50 %.2f ms p99 %.2f ms, acquisitions per contender %d..%d\n", r, $1, 1e6/$1, $2, 1e6/$2, $1/$2, $3, $4, $5, $6, $7}'
  for redlock_p in "${redlock_ports[@]}"; do redis-cli -p "$redlock_p" FLUSHALL >/dev/null; done
done

python3 - "$redlock_results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
ratios = [r[0] / r[1] for r in rows]
print(f"median of {len(rows)} runs:")
print(f"  single node RedisBackend try_lock+unlock:   {med[0]:.0f} pairs/s ({1e6 / med[0]:.1f} us per pair)")
print(f"  Redlock over 5 nodes try_lock+unlock:       {med[1]:.0f} pairs/s ({1e6 / med[1]:.1f} us per pair)")
print(f"  latency ratio redlock/single:               {statistics.median(ratios):.3f} (target <= 1.3)")
print(f"  contended, 8 contenders on one lock:        {med[2]:.0f} handoffs/s, p50 wait {med[3]:.2f} ms, "
      f"p99 wait {med[4]:.2f} ms, acquisitions per contender {med[5]:.0f}..{med[6]:.0f}")
PY
