# Redis part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On one throw-away redis-server, in the same run:
#   floor:  redis-benchmark -c 1 -P 1 running EVALSHA of dlock's acquire script
#           (random keys, so every call takes the acquire path). A dlock
#           acquire+release pair is two such round trips, so the floor in
#           pairs/s is EVALSHA ops/s / 2.
#   dlock:  Lock<RedisBackend> try_lock + unlock pairs per second, one thread
#   ratio:  dlock / floor (target >= 0.85)
#   minimal floor: the same with the least correct acquire script instead
#           (redis_bench --minimal-script: SET NX PX, INCR and PEXPIRE of the
#           counter, no clock floor): what dlock's script costs beyond it
#   baseline: with DLOCK_BENCH_REDIS_BASELINE=<another redis_bench binary>
#           (e.g. one built before a change to the acquire script), its
#           uncontended pairs/s too, in the same runs
#   contended: 8 contenders on one lock, zero hold time: handoffs/s, p50/p99
#           wait of lock(), fewest/most acquisitions per contender
# DLOCK_BENCH_RUNS (default 5) rounds, interleaved; medians are printed.
redis_port=$(free_port)
start_redis "$redis_port"
redis_bin="$BENCH_BUILD/bench/redis_bench"
redis_sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$("$redis_bin" --acquire-script)")
redis_min_sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$("$redis_bin" --minimal-script)")
redis_baseline=${DLOCK_BENCH_REDIS_BASELINE:-}
redis_base_sha=$redis_sha
[ -z "$redis_baseline" ] ||
  redis_base_sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$("$redis_baseline" --acquire-script)")
redis_runs=${DLOCK_BENCH_RUNS:-5}
redis_results=$(mktemp -t dlock-redisbench-results.XXXXXX)
_dlock_cleanup+=("rm -f '$redis_results'")

redis_floor() {  # [SHA]: EVALSHA ops/s of the acquire script (or SHA), one client, no pipelining,
  #                and the server's µs per call (INFO commandstats)
  redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
  local ops
  ops=$(redis-benchmark -p "$redis_port" -c 1 -P 1 -n 20000 -r 1000000 --csv \
    EVALSHA "${1:-$redis_sha}" 2 'dlock-floor:{__rand_int__}' 'dlock-floor:{__rand_int__}:fence' \
    01936b8e-7c3a-7d2e-9f01-2b3c4d5e6f70 2000 60000 | awk -F'","' 'NR == 2 {print $2}')
  echo "$ops $(redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' |
    awk -F'usec_per_call=' '/^cmdstat_evalsha:/ {split($2, a, ","); print a[1]}')"
}

# The machine may be shared and noisy: each run brackets the dlock measurement
# with two floor measurements (about a second each) and uses their mean.
for ((run = 1; run <= redis_runs; run++)); do
  floor_a=$(redis_floor)
  minimal_a=$(redis_floor "$redis_min_sha")
  uncontended=$(DLOCK_BENCH_REDIS="redis://127.0.0.1:$redis_port" "$redis_bin" --benchmark_filter=BM_redis_uncontended \
    --benchmark_min_time=1 --benchmark_format=json 2>/dev/null)
  baseline='{"benchmarks": [{"items_per_second": 0}]}'
  base_floor="0 0"
  if [ -n "$redis_baseline" ]; then
    base_floor=$(redis_floor "$redis_base_sha")
    baseline=$(DLOCK_BENCH_REDIS="redis://127.0.0.1:$redis_port" "$redis_baseline" \
      --benchmark_filter=BM_redis_uncontended --benchmark_min_time=1 --benchmark_format=json 2>/dev/null)
  fi
  minimal_b=$(redis_floor "$redis_min_sha")
  floor_b=$(redis_floor)
  contended=$(DLOCK_BENCH_REDIS="redis://127.0.0.1:$redis_port" DLOCK_BENCH_SECONDS=3 "$redis_bin" \
    --benchmark_filter=BM_redis_contended --benchmark_format=json 2>/dev/null)
  python3 -c '
import json, sys
fa, fb, ma, mb, bf = (list(map(float, a.split())) for a in sys.argv[1:3] + sys.argv[5:7] + sys.argv[8:9])
floor = (fa[0] + fb[0]) / 2 / 2
u = json.loads(sys.argv[3])["benchmarks"][0]["items_per_second"]
c = json.loads(sys.argv[4])["benchmarks"][0]
minimal = (ma[0] + mb[0]) / 2 / 2
b = json.loads(sys.argv[7])["benchmarks"][0]["items_per_second"]
# then the server µs per acquire call: dlock, the minimal script, the baseline
print(floor, u, c["handoffs_per_s"], c["p50_wait_ms"], c["p99_wait_ms"], c["min_acquisitions"], c["max_acquisitions"],
      minimal, b, (fa[1] + fb[1]) / 2, (ma[1] + mb[1]) / 2, bf[1])
' "$floor_a" "$floor_b" "$uncontended" "$contended" "$minimal_a" "$minimal_b" "$baseline" "$base_floor" | tee -a "$redis_results" |
    awk -v r="$run" '{printf "run %d: floor %.0f pairs/s, dlock %.0f pairs/s (ratio %.3f), minimal floor %.0f (ratio %.3f)", r, $1, $2, $2/$1, $8, $2/$8
      if ($9 > 0) printf ", baseline %.0f (ratio to minimal %.3f)", $9, $9/$8
      printf ", server us/call: acquire %.2f, minimal %.2f", $10, $11
      if ($12 > 0) printf ", baseline %.2f", $12
      printf ", contended(8) %.0f handoffs/s p50 %.2f ms p99 %.2f ms, acquisitions per contender %d..%d\n", $3, $4, $5, $6, $7}'
  redis-cli -p "$redis_port" FLUSHALL >/dev/null
done

python3 - "$redis_results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
ratios = [r[1] / r[0] for r in rows]
print(f"median of {len(rows)} runs:")
print(f"  floor (redis-benchmark -c 1 -P 1, EVALSHA acquire / 2): {med[0]:.0f} pairs/s")
print(f"  dlock uncontended try_lock+unlock:                      {med[1]:.0f} pairs/s")
print(f"  ratio dlock/floor:                                      {statistics.median(ratios):.3f} (target >= 0.85)")
print(f"  minimal-script floor (SET NX PX + INCR + PEXPIRE) / 2:  {med[7]:.0f} pairs/s")
print(f"  ratio dlock/minimal floor:                              {statistics.median(r[1] / r[7] for r in rows):.3f}")
print(f"  server time per acquire call (INFO commandstats):       dlock {med[9]:.2f} us, minimal {med[10]:.2f} us"
      + (f", baseline {med[11]:.2f} us" if med[11] > 0 else ""))
if med[8] > 0:
    print(f"  baseline binary (DLOCK_BENCH_REDIS_BASELINE):           {med[8]:.0f} pairs/s, ratio to minimal floor "
          f"{statistics.median(r[8] / r[7] for r in rows):.3f}, dlock/baseline {statistics.median(r[1] / r[8] for r in rows):.3f}")
print(f"  contended, 8 contenders on one lock, zero hold:         {med[2]:.0f} handoffs/s, p50 wait {med[3]:.2f} ms, "
      f"p99 wait {med[4]:.2f} ms, acquisitions per contender {med[5]:.0f}..{med[6]:.0f}")
PY
