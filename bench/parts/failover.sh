# Sentinel and Cluster failover part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
# Issue 14: time from the primary's SIGKILL to the first successful acquire,
# p50/p99 over DLOCK_BENCH_FAILOVERS (default 10) failovers, each on a fresh
# deployment (1 primary, 2 replicas, 3 sentinels, quorum 2,
# down-after-milliseconds 500, failover-timeout 2000), and the same for a
# Redis Cluster (3 primaries, 3 replicas, cluster-node-timeout 1000; a
# primary SIGKILLed, its replica promoted); see bench/failover_bench.cpp.
#
# Optional and long (about 6 s per failover: the sentinels must first find
# each other): skipped by a plain `bench/compare`; run it with
#   bench/compare failover          or   DLOCK_BENCH_FAILOVER=1 bench/compare
if (($# == 0)) && [ -z "${DLOCK_BENCH_FAILOVER:-}" ]; then
  echo "skipped (optional, about a minute: bench/compare failover, or DLOCK_BENCH_FAILOVER=1)"
else
  "$BENCH_BUILD/bench/failover_bench" "${DLOCK_BENCH_FAILOVERS:-10}" sentinel
  "$BENCH_BUILD/bench/failover_bench" "${DLOCK_BENCH_FAILOVERS:-10}" cluster
fi
