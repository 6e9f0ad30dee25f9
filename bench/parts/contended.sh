# Contended part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# 8 processes contending for one lock, zero hold time, on Redis (one
# redis-server), PostgreSQL (one server) and etcd (a three-member cluster), all
# started here, in the same run: bench/contended_procs forks 8 contenders, each
# opening its own backend, lock() (try_lock_for 1 s) + unlock() for
# DLOCK_BENCH_SECONDS (default 3). Reports handoffs/s and the p50/p99 wait of
# lock(). DLOCK_BENCH_RUNS (default 3) rounds, backends interleaved within each
# round; prints every run and one table of medians.
source "$DLOCK_ROOT/bench/etcd_cluster.sh"
ct_redis_port=$(free_port)
start_redis "$ct_redis_port"
ct_pg_port=$(free_port)
start_postgres "$ct_pg_port"
start_etcd_cluster
ct_bin="$BENCH_BUILD/bench/contended_procs"
ct_runs=${DLOCK_BENCH_RUNS:-3}
ct_secs=${DLOCK_BENCH_SECONDS:-3}
ct_results=$(mktemp -t dlock-contended-results.XXXXXX)
_dlock_cleanup+=("rm -f '$ct_results'")
declare -A ct_target=(
  [redis]="redis://127.0.0.1:$ct_redis_port"
  [postgres]="host=127.0.0.1 port=$ct_pg_port dbname=dlock user=postgres"
  [etcd]="$etcd_endpoints"
)
for ((run = 1; run <= ct_runs; run++)); do
  for b in redis postgres etcd; do
    line=$("$ct_bin" "$b" "${ct_target[$b]}" 8 "$ct_secs")
    echo "$b $line" >>"$ct_results"
    echo "run $run $b: $line" | awk '{printf "%s %s %-9s %8.0f handoffs/s  p50 %7.2f ms  p99 %7.2f ms  acquisitions per process %d..%d\n", $1, $2, $3, $4, $5, $6, $7, $8}'
  done
done
python3 - "$ct_results" "$ct_runs" <<'PY'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    f = l.split()
    if f: rows.setdefault(f[0], []).append(list(map(float, f[1:])))
print(f"8 processes contending for one lock, zero hold (median of {sys.argv[2]} runs):")
print("| backend | handoffs/s | p50 wait (ms) | p99 wait (ms) | acquisitions per process |")
print("|---|---|---|---|---|")
for b in ("redis", "postgres", "etcd"):
    m = [statistics.median(c) for c in zip(*rows[b])]
    print(f"| {b} | {m[0]:.0f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.0f}..{m[4]:.0f} |")
PY
