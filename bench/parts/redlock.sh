# Redlock part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On five throw-away redis-servers, in the same run, uncontended try_lock +
# unlock pairs (two rounds each) of:
#   single:   Lock<RedisBackend> on the first server
#   redlock:  Lock<RedlockBackend> over all five
#   floor/1, floor/5: raw hiredis, no dlock, the same scripts and keys sent to
#             1 or 5 servers at once (the least any client can pay here)
#   serial/5: the raw client going to the five one after the other
# Ratios: redlock/single is the target's (<= 1.3: a five-node round costs
# about one round trip to the slowest node, not five); floor/5 / floor/1 is
# the same ratio for the raw client, i.e. what this machine allows; redlock /
# floor/5 is dlock's own overhead.
#
# Each run measures twice: on plain loopback, where client and five servers
# share the machine's cores and a round trip is mostly CPU, and through
# bench/latency_proxy with DLOCK_BENCH_LATENCY_US (default 250) of one-way
# delay on every connection (a 0.5 ms round trip, as between hosts in one
# data centre), where the network dominates as in a real deployment.
# Then: 8 contenders on one lock over five nodes (loopback), with zero and
# with 1 ms hold time: handoffs/s, p50/p99 wait of lock(), fewest/most
# acquisitions of a contender.
# DLOCK_BENCH_RUNS (default 5) runs; medians are printed.
redlock_ports=()
redlock_proxied=()
redlock_map=()
for _ in 1 2 3 4 5; do
  redlock_p=$(free_port)
  start_redis "$redlock_p"
  redlock_ports+=("$redlock_p")
  redlock_q=$(free_port)
  redlock_proxied+=("$redlock_q")
  redlock_map+=("$redlock_q:$redlock_p")
done
redlock_latency_us=${DLOCK_BENCH_LATENCY_US:-250}
redlock_proxy_out=$(mktemp -t dlock-latency-proxy.XXXXXX)
"$BENCH_BUILD/bench/latency_proxy" "$redlock_latency_us" "${redlock_map[@]}" >"$redlock_proxy_out" &
redlock_proxy_pid=$!
_dlock_cleanup+=("kill $redlock_proxy_pid; rm -f '$redlock_proxy_out'")
for _ in $(seq 1 100); do grep -q ready "$redlock_proxy_out" && break; sleep 0.05; done
grep -q ready "$redlock_proxy_out" || { echo "redlock: latency_proxy did not start" >&2; exit 1; }

redlock_bin="$BENCH_BUILD/bench/redlock_bench"
redlock_runs=${DLOCK_BENCH_RUNS:-5}
redlock_results=$(mktemp -t dlock-redlockbench-results.XXXXXX)
_dlock_cleanup+=("rm -f '$redlock_results'")

redlock_pairs() {  # PORTS: pairs/s of single, redlock, floor/1, floor/5, serial/5 as one line
  DLOCK_BENCH_REDLOCK_PORTS="$1" "$redlock_bin" --benchmark_filter='uncontended|floor' --benchmark_min_time=1 \
    --benchmark_format=json 2>/dev/null | python3 -c '
import json, sys
r = {b["name"]: b["items_per_second"] for b in json.load(sys.stdin)["benchmarks"]}
names = ["BM_redis_single_uncontended", "BM_redlock_uncontended", "BM_floor_parallel/1", "BM_floor_parallel/5",
         "BM_floor_serial/5"]
print(" ".join(str(r[n + "/real_time"]) for n in names))'
}

for ((run = 1; run <= redlock_runs; run++)); do
  loopback=$(redlock_pairs "$(IFS=,; echo "${redlock_ports[*]}")")
  delayed=$(redlock_pairs "$(IFS=,; echo "${redlock_proxied[*]}")")
  contended=$(DLOCK_BENCH_REDLOCK_PORTS="$(IFS=,; echo "${redlock_ports[*]}")" DLOCK_BENCH_SECONDS=3 "$redlock_bin" \
    --benchmark_filter=BM_redlock_contended --benchmark_format=json 2>/dev/null | python3 -c '
import json, sys
for c in json.load(sys.stdin)["benchmarks"]:  # hold 0, then 1 ms
    print(c["handoffs_per_s"], c["p50_wait_ms"], c["p99_wait_ms"], c["min_acquisitions"], c["max_acquisitions"], end=" ")')
  echo "$loopback $delayed $contended" | tee -a "$redlock_results" | awk -v r="$run" '{
    printf "run %d: loopback: single %.1f us, redlock %.1f us (ratio %.2f), floor %.1f/%.1f us (ratio %.2f), serial %.1f us;", r, 1e6/$1, 1e6/$2, $1/$2, 1e6/$3, 1e6/$4, $3/$4, 1e6/$5
    printf " delayed: single %.0f us, redlock %.0f us (ratio %.2f), floor ratio %.2f, serial %.0f us;", 1e6/$6, 1e6/$7, $6/$7, $8/$9, 1e6/$10
    printf " contended(8): hold 0: %.0f handoffs/s p50 %.2f ms p99 %.2f ms, hold 1 ms: %.0f handoffs/s p50 %.2f ms p99 %.2f ms\n", $11, $12, $13, $16, $17, $18 }'
  for redlock_p in "${redlock_ports[@]}"; do redis-cli -p "$redlock_p" FLUSHALL >/dev/null; done
done

python3 - "$redlock_results" "$redlock_latency_us" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = lambda f: statistics.median(f(r) for r in rows)
us = lambda i: med(lambda r: 1e6 / r[i])
print(f"median of {len(rows)} runs (us per try_lock+unlock pair; ratios are medians of per-run ratios):")
for name, o in (("loopback", 0), (f"one-way delay {sys.argv[2]} us", 5)):
    print(f"  {name}:")
    print(f"    RedisBackend, 1 node:     {us(o):8.1f}    raw floor, 1 node:  {us(o + 2):8.1f}")
    print(f"    RedlockBackend, 5 nodes:  {us(o + 1):8.1f}    raw floor, 5 nodes: {us(o + 3):8.1f}"
          f"    raw, 5 nodes one by one: {us(o + 4):8.1f}")
    print(f"    redlock/single {med(lambda r: r[o] / r[o + 1]):.2f} (target <= 1.3);"
          f" floor 5/1 {med(lambda r: r[o + 2] / r[o + 3]):.2f};"
          f" redlock/floor at 5 nodes {med(lambda r: r[o + 3] / r[o + 1]):.2f};"
          f" one-by-one/floor 5 {med(lambda r: r[o + 3] / r[o + 4]):.2f}")
for c, hold in ((10, "zero hold time"), (15, "1 ms hold time")):
    print(f"  contended, 8 contenders on one lock over 5 nodes (loopback), {hold}: {med(lambda r: r[c]):.0f} "
          f"handoffs/s, p50 wait {med(lambda r: r[c + 1]):.2f} ms, p99 wait {med(lambda r: r[c + 2]):.2f} ms, "
          f"acquisitions per contender {med(lambda r: r[c + 3]):.0f}..{med(lambda r: r[c + 4]):.0f}")
PY
