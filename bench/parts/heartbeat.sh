# Heartbeat part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
# Holds DLOCK_HEARTBEAT_LOCKS (10000) auto-extended locks (ttl 3 s) on one
# throw-away redis-server for DLOCK_HEARTBEAT_SECONDS (30) and prints the
# heartbeat's CPU, round trips per extension interval and memory per lock.
hb_port=$(free_port)
start_redis "$hb_port"
"$BENCH_BUILD/bench/heartbeat_bench" "redis://127.0.0.1:$hb_port" \
  --locks "${DLOCK_HEARTBEAT_LOCKS:-10000}" --ttl-ms 3000 --seconds "${DLOCK_HEARTBEAT_SECONDS:-30}"
