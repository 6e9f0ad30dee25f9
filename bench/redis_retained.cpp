// What a lock name leaves behind in Redis after its lock is released, for
// bench/parts/redis_retained.sh and docs/benchmarks.md.
//
//   DLOCK_BENCH_REDIS=redis://127.0.0.1:6379 redis_retained [--names N] [--ttl-ms T] [--fence-ttl-ms F]
//                                                           [--wait-ms W]
//
// Acquires and releases N distinct names (Lock<RedisBackend> try_lock +
// unlock, default 100,000, ttl 10 s, RedisOptions::fence_ttl F, default the
// library's) and prints, as one line of JSON: used_memory (INFO memory) and
// DBSIZE before, right after the releases and once the server has expired
// the names' fencing counters (polled every 100 ms; gives up after
// max(fence_ttl, 3 x ttl) + 60 s, or after W), the MEMORY USAGE of one counter, and the
// bytes retained per name at each point. Run it on a server of its own.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

namespace {

using namespace std::chrono_literals;

long long used_memory(dlock::detail::RedisClient& node) {
  const std::string info = node.command({"INFO", "memory"}).str;
  const std::string_view field = "used_memory:";
  const auto at = info.find(field);
  return at == std::string::npos ? -1 : std::atoll(info.c_str() + at + field.size());
}

long long dbsize(dlock::detail::RedisClient& node) { return node.command({"DBSIZE"}).integer; }

}  // namespace

int main(int argc, char** argv) {
  long long names = 100'000;
  std::chrono::milliseconds ttl = 10s;
  dlock::RedisOptions base{.key_prefix = "dlock-retained:"};
  std::optional<std::chrono::milliseconds> wait;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    const long long v = std::atoll(argv[i + 1]);
    if (a == "--names") {
      names = v;
    } else if (a == "--ttl-ms") {
      ttl = std::chrono::milliseconds(v);
    } else if (a == "--fence-ttl-ms") {
      base.fence_ttl = std::chrono::milliseconds(v);
    } else if (a == "--wait-ms") {
      wait = std::chrono::milliseconds(v);
    } else {
      std::fprintf(stderr, "usage: redis_retained [--names N] [--ttl-ms T] [--fence-ttl-ms F] [--wait-ms W]\n");
      return 2;
    }
  }
  const char* uri = std::getenv("DLOCK_BENCH_REDIS");
  dlock::RedisBackend redis(dlock::parse_redis_uri(uri ? uri : "redis://127.0.0.1:6379", base));
  auto& node = redis.node();

  const long long mem0 = used_memory(node), keys0 = dbsize(node);
  for (long long i = 0; i < names; ++i) {
    dlock::Lock<dlock::RedisBackend> lock(redis, "entity:" + std::to_string(i), {.ttl = ttl});
    if (!lock.try_lock()) {
      std::fprintf(stderr, "redis_retained: name %lld was not free\n", i);
      return 1;
    }
    lock.unlock();
  }
  const long long mem1 = used_memory(node), keys1 = dbsize(node);
  const auto usage = node.command({"MEMORY", "USAGE", node.keys("entity:0").fence});
  const long long one = usage.type == dlock::detail::RedisValue::Type::integer ? usage.integer : -1;

  const auto kept = dlock::detail::fence_pttl(ttl, redis.options().fence_ttl);
  const auto t0 = std::chrono::steady_clock::now();
  const auto give_up = t0 + (wait ? *wait : kept + 60s);
  while (dbsize(node) > keys0 && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(100ms);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const long long mem2 = used_memory(node), keys2 = dbsize(node);

  const auto per_name = [&](long long m) { return static_cast<double>(m - mem0) / static_cast<double>(names); };
  std::printf(
      "{\"names\": %lld, \"ttl_ms\": %lld, \"counter_kept_ms\": %lld, \"used_memory_before\": %lld, "
      "\"keys_before\": %lld, \"used_memory_after_release\": %lld, \"keys_after_release\": %lld, "
      "\"memory_usage_of_one_counter\": %lld, \"bytes_per_name_after_release\": %.1f, "
      "\"seconds_until_expired\": %.1f, \"used_memory_after_expiry\": %lld, \"keys_after_expiry\": %lld, "
      "\"bytes_per_name_after_expiry\": %.1f}\n",
      names, static_cast<long long>(ttl.count()), static_cast<long long>(kept.count()), mem0, keys0, mem1, keys1, one,
      per_name(mem1), waited, mem2, keys2, per_name(mem2));
  return keys2 > keys0 ? 1 : 0;
}
