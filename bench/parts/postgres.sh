# PostgreSQL part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On one throw-away server, in the same run:
#   floor:  pgbench -n -c 1 -T 10 with "SELECT pg_try_advisory_lock(k); SELECT pg_advisory_unlock(k);"
#   dlock:  Lock<PostgresBackend> try_lock + unlock pairs per second on one thread (pg_bench)
#   ratio:  dlock / floor (target >= 0.85); also against pgbench -M prepared, a
#           stricter floor (dlock uses named prepared statements, pgbench's default
#           simple protocol parses every statement)
#   contended: 8 threads on one lock, handoffs/s and p50/p99 wait of lock()
# DLOCK_BENCH_RUNS (default 3) rounds, interleaved; medians are printed.
pg_port=$(free_port)
start_postgres "$pg_port"
pg_conn="host=127.0.0.1 port=$pg_port dbname=dlock user=postgres"
pg_script=$(mktemp -t dlock-pgbench.XXXXXX)
_dlock_cleanup+=("rm -f '$pg_script'")
printf 'SELECT pg_try_advisory_lock(42);\nSELECT pg_advisory_unlock(42);\n' >"$pg_script"
pg_runs=${DLOCK_BENCH_RUNS:-3}
pg_results=$(mktemp -t dlock-pgbench-results.XXXXXX)
_dlock_cleanup+=("rm -f '$pg_results'")

for ((run = 1; run <= pg_runs; run++)); do
  floor=$("$(pg_bin)/pgbench" -n -c 1 -T 10 -f "$pg_script" -h 127.0.0.1 -p "$pg_port" -U postgres dlock \
    2>/dev/null | awk '/^tps/ {print $3; exit}')
  floor_prepared=$("$(pg_bin)/pgbench" -n -c 1 -T 10 -M prepared -f "$pg_script" -h 127.0.0.1 -p "$pg_port" -U postgres \
    dlock 2>/dev/null | awk '/^tps/ {print $3; exit}')
  DLOCK_BENCH_PG="$pg_conn" "$BENCH_BUILD/bench/pg_bench" --benchmark_format=json 2>/dev/null |
    python3 -c '
import json, sys
floor = float(sys.argv[1])
b = {x["name"].split("/")[0]: x for x in json.load(sys.stdin)["benchmarks"]}
u = b["BM_pg_uncontended"]["items_per_second"]
f = b["BM_pg_uncontended_fenced"]["items_per_second"]
c = b["BM_pg_contended"]
print(floor, u, f, c["handoffs_per_s"], c["p50_wait_ms"], c["p99_wait_ms"], sys.argv[2])
' "$floor" "$floor_prepared" | tee -a "$pg_results" |
    awk -v r="$run" '{printf "run %d: floor %.0f pairs/s (-M prepared %.0f), dlock %.0f pairs/s (ratio %.3f / %.3f), fenced %.0f/s, contended(8) %.0f handoffs/s p50 %.2f ms p99 %.2f ms\n", r, $1, $7, $2, $2/$1, $2/$7, $3, $4, $5, $6}'
done

python3 - "$pg_results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
ratios = [r[1] / r[0] for r in rows]
print(f"median of {len(rows)} runs:")
print(f"  floor (pgbench, try_advisory_lock+unlock): {med[0]:.0f} pairs/s")
print(f"  dlock uncontended try_lock+unlock:         {med[1]:.0f} pairs/s")
print(f"  ratio dlock/floor:                         {statistics.median(ratios):.3f} (target >= 0.85)")
print(f"  floor with pgbench -M prepared:            {med[6]:.0f} pairs/s; ratio {statistics.median([r[1] / r[6] for r in rows]):.3f}")
print(f"  dlock with fencing token:                  {med[2]:.0f} pairs/s ({med[2] / med[0]:.3f} of floor)")
print(f"  contended, 8 waiters on one lock:          {med[3]:.0f} handoffs/s, p50 wait {med[4]:.2f} ms, p99 wait {med[5]:.2f} ms")
PY
