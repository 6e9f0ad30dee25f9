# Redis Cluster part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
# Issue 14: 8 threads locking names over all slots through redis+cluster://,
# in pairs/s, against the same-run sum over the primaries of
# `redis-benchmark -c 8 -P 1` EVALSHA floors of the acquire script (halved:
# a pair is two round trips); for 1 and 3 primaries without replicas
# (bench/cluster_bench.cpp starts them). DLOCK_BENCH_RUNS (default 3) runs
# of DLOCK_BENCH_SECONDS (default 3) each; medians are printed. On a machine
# with few cores the servers, redis-benchmark and the threads share them:
# read the ratio and how it changes with the shards, not the absolute figures.
for cluster_primaries in 1 3; do
  "$BENCH_BUILD/bench/cluster_bench" "$cluster_primaries" "${DLOCK_BENCH_SECONDS:-3}" "${DLOCK_BENCH_RUNS:-3}"
done
