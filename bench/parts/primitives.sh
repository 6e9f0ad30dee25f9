# Primitives part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On one throw-away redis-server, in the same run (issue 16):
#   pairs:   uncontended acquire+release pairs/s of the mutex, the read lock
#            and a semaphore permit; ratios to the mutex (target >= 0.8)
#   waiters: N threads of one service (one RedisBackend), each with its own
#            Lock on one name, zero hold, default and fair mode: handoffs/s,
#            script calls (EVALSHA + EVAL, INFO commandstats) per handoff,
#            owner changes, p99 wait; 256 vs 8 waiters (target >= 0.8x at <= 4
#            calls per handoff); and 8 contenders with a backend each (as
#            processes), default vs fair (targets: owner changes >= 90%, p99
#            <= 10 ms, handoffs >= 0.7x default)
# DLOCK_BENCH_RUNS (default 3) rounds; medians are printed.
prim_port=$(free_port)
start_redis "$prim_port"
prim_bin="$BENCH_BUILD/bench/primitives_bench"
prim_runs=${DLOCK_BENCH_RUNS:-3}
prim_results=$(mktemp -t dlock-primbench-results.XXXXXX)
_dlock_cleanup+=("rm -f '$prim_results'")

for ((run = 1; run <= prim_runs; run++)); do
  DLOCK_BENCH_REDIS="redis://127.0.0.1:$prim_port" DLOCK_BENCH_SECONDS=${DLOCK_BENCH_SECONDS:-3} "$prim_bin" \
    --benchmark_filter=BM_redis --benchmark_min_time=1 --benchmark_format=json 2>/dev/null >>"$prim_results"
  echo "run $run done"
  redis-cli -p "$prim_port" FLUSHALL >/dev/null
done

python3 - "$prim_results" <<'PY'
import json, re, statistics, sys
from collections import defaultdict
text = open(sys.argv[1]).read()
docs, dec, i = [], json.JSONDecoder(), 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    d, i = dec.raw_decode(text, i)
    docs.append(d)
vals = defaultdict(list)
for d in docs:
    for b in d["benchmarks"]:
        name = re.sub(r"/(iterations|real_time|min_time).*$", "", b["name"])
        for k in ("items_per_second", "handoffs_per_s", "calls_per_handoff", "owner_change_pct", "p99_wait_ms"):
            if k in b:
                vals[(name, k)].append(b[k])
med = lambda n, k: statistics.median(vals[(n, k)]) if vals[(n, k)] else float("nan")
print(f"median of {len(docs)} runs:")
m = med("BM_redis_mutex_pair", "items_per_second")
for n, label in (("BM_redis_mutex_pair", "mutex"), ("BM_redis_rw_read_pair", "read lock"),
                 ("BM_redis_semaphore_pair", "semaphore permit")):
    v = med(n, "items_per_second")
    print(f"  {label:<17} pair: {v:8.0f} pairs/s  ({v / m:.2f}x the mutex)")
def row(n, label):
    print(f"  {label:<40} {med(n, 'handoffs_per_s'):7.0f} handoffs/s  {med(n, 'calls_per_handoff'):6.1f} calls/handoff"
          f"  owner changes {med(n, 'owner_change_pct'):5.1f}%  p99 wait {med(n, 'p99_wait_ms'):7.2f} ms")
for fair, mode in ((0, "default"), (1, "fair")):
    a, b = f"BM_redis_waiters/8/{fair}/0", f"BM_redis_waiters/256/{fair}/0"
    row(a, f"8 waiters, one backend, {mode}")
    row(b, f"256 waiters, one backend, {mode}")
    print(f"    256 vs 8 waiters, {mode}: {med(b, 'handoffs_per_s') / med(a, 'handoffs_per_s'):.2f}x handoffs/s")
a, b = "BM_redis_waiters/8/0/1", "BM_redis_waiters/8/1/1"
row(a, "8 contenders, a backend each, default")
row(b, "8 contenders, a backend each, fair")
print(f"    fair vs default, 8 contenders: {med(b, 'handoffs_per_s') / med(a, 'handoffs_per_s'):.2f}x handoffs/s")
PY
