# etcd part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On one throw-away three-member etcd cluster (loopback, data in a temp dir), in the same run:
#   floor:  BM_etcd_floor, a raw HTTP/JSON client (synchronous Beast, one
#           kept-alive connection) doing lease grant + create-if-absent txn +
#           delete-if-owner txn + lease revoke: the four requests of a pair
#   dlock:  Lock<EtcdBackend> try_lock + unlock pairs per second, one thread
#   ratio:  dlock / floor (target >= 0.85)
#   contended: 8 contenders on one lock, zero hold time: handoffs/s, p50/p99
#           wait of lock(), fewest/most acquisitions per contender
# DLOCK_BENCH_RUNS (default 5) rounds; each dlock run is bracketed by two floor
# runs whose mean is its floor; medians are printed.
source "$DLOCK_ROOT/bench/etcd_cluster.sh"
start_etcd_cluster
etcd_bin="$BENCH_BUILD/bench/etcd_bench"
etcd_runs=${DLOCK_BENCH_RUNS:-5}
etcd_results=$(mktemp -t dlock-etcdbench-results.XXXXXX)
_dlock_cleanup+=("rm -f '$etcd_results'")

etcd_run() {  # items/s of one benchmark
  DLOCK_BENCH_ETCD="$etcd_endpoints" "$etcd_bin" --benchmark_filter="$1" --benchmark_min_time=1 \
    --benchmark_format=json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["benchmarks"][0]["items_per_second"])'
}

for ((run = 1; run <= etcd_runs; run++)); do
  floor_a=$(etcd_run BM_etcd_floor)
  uncontended=$(etcd_run BM_etcd_uncontended)
  floor_b=$(etcd_run BM_etcd_floor)
  contended=$(DLOCK_BENCH_ETCD="$etcd_endpoints" DLOCK_BENCH_SECONDS=3 "$etcd_bin" \
    --benchmark_filter=BM_etcd_contended --benchmark_format=json 2>/dev/null)
  python3 -c '
import json, sys
floor = (float(sys.argv[1]) + float(sys.argv[2])) / 2
c = json.loads(sys.argv[4])["benchmarks"][0]
print(floor, float(sys.argv[3]), c["handoffs_per_s"], c["p50_wait_ms"], c["p99_wait_ms"], c["min_acquisitions"], c["max_acquisitions"])
' "$floor_a" "$floor_b" "$uncontended" "$contended" | tee -a "$etcd_results" |
    awk -v r="$run" '{printf "run %d: floor %.0f pairs/s, dlock %.0f pairs/s (ratio %.3f), contended(8) %.0f handoffs/s p50 %.2f ms p99 %.2f ms, acquisitions per contender %d..%d\n", r, $1, $2, $2/$1, $3, $4, $5, $6, $7}'
done

python3 - "$etcd_results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
ratios = [r[1] / r[0] for r in rows]
print(f"median of {len(rows)} runs:")
print(f"  floor (raw HTTP/JSON: grant + txn + txn + revoke): {med[0]:.0f} pairs/s")
print(f"  dlock uncontended try_lock+unlock:                 {med[1]:.0f} pairs/s")
print(f"  ratio dlock/floor:                                 {statistics.median(ratios):.3f} (target >= 0.85)")
print(f"  contended, 8 contenders on one lock, zero hold:    {med[2]:.0f} handoffs/s, p50 wait {med[3]:.2f} ms, "
      f"p99 wait {med[4]:.2f} ms, acquisitions per contender {med[5]:.0f}..{med[6]:.0f}")
PY
