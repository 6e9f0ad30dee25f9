# TLS part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
# Issue 12: a try_lock + unlock pair over TLS against one over TCP.
#
# bench/redis_tls_bench starts one redis-server (the integration tests'
# harness: throw-away CA and certificates) serving TLS and plain TCP on two
# ports, and measures, interleaved, in DLOCK_BENCH_RUNS (default 5) rounds:
#   tcp, tls: pairs/s on one thread over an open connection (handshake excluded)
#   ratio:    tcp pairs/s / tls pairs/s = the TLS pair's cost in TCP pairs (target <= 1.3)
#   connect:  the median first PING of a fresh backend (connect + Redis
#             handshake, + the TLS handshake); tls - tcp is the TLS handshake
tls_results=$(mktemp -t dlock-redistls-results.XXXXXX)
_dlock_cleanup+=("rm -f '$tls_results'")
"$BENCH_BUILD/bench/redis_tls_bench" "${DLOCK_BENCH_RUNS:-5}" 1 | tee "$tls_results" |
  awk '{printf "round %d: tcp %.0f pairs/s, tls %.0f pairs/s (cost ratio %.3f); connect tcp %.0f us, tls %.0f us\n", NR, $1, $2, $1/$2, $3, $4}'
python3 - "$tls_results" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"median of {len(rows)} rounds:")
print(f"  TCP pair: {1e6 / med[0]:.1f} us ({med[0]:.0f} pairs/s); TLS pair: {1e6 / med[1]:.1f} us ({med[1]:.0f} pairs/s)")
print(f"  TLS/TCP cost per pair: {statistics.median(r[0] / r[1] for r in rows):.3f} (target <= 1.3)")
print(f"  connect + first PING: TCP {med[2] / 1000:.2f} ms, TLS {med[3] / 1000:.2f} ms "
      f"(TLS handshake and context about {(med[3] - med[2]) / 1000:.2f} ms)")
PY
