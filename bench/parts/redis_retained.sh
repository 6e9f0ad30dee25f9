# Redis retained-memory part of bench/compare (sourced; common.sh loaded, BENCH_BUILD set).
#
# On a throw-away redis-server of its own: 100,000 distinct lock names, each
# acquired and released once (Lock<RedisBackend>, ttl 10 s, default fence_ttl),
# then INFO memory's used_memory and DBSIZE right after the releases and once
# the server has expired the names' fencing counters (max(fence_ttl, 3 x ttl)
# after their acquire). Prints bytes retained per name at both points.
retained_port=$(free_port)
start_redis "$retained_port"
DLOCK_BENCH_REDIS="redis://127.0.0.1:$retained_port" "$BENCH_BUILD/bench/redis_retained" --names 100000 --ttl-ms 10000 |
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r["new_keys"] = r["keys_after_release"] - r["keys_before"]
r["left_keys"] = r["keys_after_expiry"] - r["keys_before"]
print("{names} names, ttl {ttl_ms} ms, each counter kept {counter_kept_ms} ms past its value".format(**r))
print("  right after release: {bytes_per_name_after_release:.0f} B/name ({new_keys} keys, MEMORY USAGE of one "
      "counter {memory_usage_of_one_counter} B)".format(**r))
print("  after {seconds_until_expired:.1f} s: {bytes_per_name_after_expiry:.1f} B/name ({left_keys} keys)".format(**r))
'
