# Shared-backend part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
# Issue 12: 32 threads sharing one RedisBackend, each on its own name.
#
# On one throw-away redis-server, in the same run:
#   floor:  redis-benchmark -c 32 -P 1 running EVALSHA of dlock's acquire
#           script on random keys: ops/s / 2 is the pairs/s 32 clients of
#           the server could have (a pair is two such round trips).
#   dlock:  BM_redis_shared/32/P: 32 threads, one RedisBackend with
#           pool_size P (1, 4 the default, 32), try_lock + unlock pairs.
#   ratio:  dlock(pool 32) / floor (target >= 0.9). pool 1 and 4 show what
#           a small pool costs: RedisClient checks a connection out for each
#           call, so at most P calls are in flight; requests from different
#           threads are not pipelined on one connection.
# DLOCK_BENCH_RUNS (default 5) runs; medians are printed.
shared_port=$(free_port)
start_redis "$shared_port"
shared_bin="$BENCH_BUILD/bench/redis_bench"
shared_sha=$(redis-cli -p "$shared_port" SCRIPT LOAD "$("$shared_bin" --acquire-script)")
shared_runs=${DLOCK_BENCH_RUNS:-5}
shared_results=$(mktemp -t dlock-redisshared-results.XXXXXX)
_dlock_cleanup+=("rm -f '$shared_results'")

shared_floor() {  # EVALSHA ops/s of the acquire script, 32 clients, no pipelining
  redis-benchmark -p "$shared_port" -c 32 -P 1 -n 100000 -r 1000000 --csv \
    EVALSHA "$shared_sha" 2 'dlock-floor:{__rand_int__}' 'dlock-floor:{__rand_int__}:fence' \
    01936b8e-7c3a-7d2e-9f01-2b3c4d5e6f70 2000 60000 | awk -F'","' 'NR == 2 {print $2}'
}

for ((run = 1; run <= shared_runs; run++)); do
  shared_a=$(shared_floor)
  shared_dlock=$(DLOCK_BENCH_REDIS="redis://127.0.0.1:$shared_port" DLOCK_BENCH_SECONDS=2 "$shared_bin" \
    --benchmark_filter=BM_redis_shared --benchmark_format=json 2>/dev/null)
  shared_b=$(shared_floor)
  python3 -c '
import json, sys
floor = (float(sys.argv[1]) + float(sys.argv[2])) / 2 / 2
p = [b["pairs_per_s"] for b in json.loads(sys.argv[3])["benchmarks"]]  # pool 1, 4, 32
print(floor, *p)
' "$shared_a" "$shared_b" "$shared_dlock" | tee -a "$shared_results" |
    awk -v r="$run" '{printf "run %d: floor %.0f pairs/s; dlock, 32 threads on one backend: pool 1 %.0f, pool 4 %.0f, pool 32 %.0f pairs/s (ratio %.3f)\n", r, $1, $2, $3, $4, $4/$1}'
  redis-cli -p "$shared_port" FLUSHALL >/dev/null
done

python3 - "$shared_results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"median of {len(rows)} runs:")
print(f"  floor (redis-benchmark -c 32 -P 1, EVALSHA acquire / 2): {med[0]:.0f} pairs/s")
for i, pool in ((1, 1), (2, 4), (3, 32)):
    print(f"  dlock, 32 threads, one RedisBackend, pool_size {pool:2}:     {med[i]:.0f} pairs/s, "
          f"ratio {statistics.median(r[i] / r[0] for r in rows):.3f}")
print("  (target: pool 32 >= 0.9 of the floor)")
PY
