# Asynchronous API part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On one throw-away redis-server, in the same run (issue 13):
#   throughput: one io_context thread with 1,000 coroutines, each on its own
#           lock name, acquire+release pairs/s, against 32 threads on the
#           blocking API (one lock name each): ratio async / blocking (target >= 0.9)
#   latency: one coroutine's median acquire+release pair against one blocking
#           thread's: ratio async / blocking (target <= 1.1)
# DLOCK_BENCH_RUNS (default 3) rounds, interleaved; medians are printed.
async_port=$(free_port)
start_redis "$async_port"
async_bin="$BENCH_BUILD/bench/async_bench"
async_uri="redis://127.0.0.1:$async_port"
async_runs=${DLOCK_BENCH_RUNS:-3}
async_rows=()
for ((run = 1; run <= async_runs; run++)); do
  ta=$("$async_bin" "$async_uri" throughput-async 1000 2)
  tb=$("$async_bin" "$async_uri" throughput-blocking 32 2)
  la=$("$async_bin" "$async_uri" latency-async 5000)
  lb=$("$async_bin" "$async_uri" latency-blocking 5000)
  async_rows+=("$ta $tb $la $lb")
done
printf '%s\n' "${async_rows[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
ta, tb, la, lb = (statistics.median(c) for c in zip(*rows))
print(f"async 1000 coroutines, 1 thread: {ta:,.0f} pairs/s; blocking 32 threads: {tb:,.0f} pairs/s; "
      f"ratio {ta / tb:.2f} (target >= 0.9)")
print(f"single pair latency: async {la:.0f} us, blocking {lb:.0f} us; ratio {la / lb:.2f} (target <= 1.1)")
print(f"medians of {len(rows)} runs")
'
