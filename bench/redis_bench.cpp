// RedisBackend throughput and handoff latency, for bench/parts/redis.sh.
//
//   DLOCK_BENCH_REDIS=redis://127.0.0.1:6379 redis_bench
//   redis_bench --acquire-script      prints the acquire script (for redis-benchmark's floor)
//
// BM_redis_uncontended: one thread, try_lock + unlock pairs on one lock: two
//   round trips (acquire script, release script) per pair.
// BM_redis_contended/8: 8 contenders, each with its own backend (as 8
//   processes would have) and Lock on one name, lock() + unlock() with zero
//   hold time for DLOCK_BENCH_SECONDS (default 5); reports handoffs/s, the
//   p50/p99 wait of lock(), and the fewest/most acquisitions of a contender.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace std::chrono_literals;

std::string uri() {
  const char* u = std::getenv("DLOCK_BENCH_REDIS");
  return u ? u : "redis://127.0.0.1:6379";
}

dlock::RedisOptions options(std::size_t pool) {
  return dlock::parse_redis_uri(uri(), dlock::RedisOptions{.key_prefix = "dlock-bench:", .pool_size = pool});
}

void BM_redis_uncontended(benchmark::State& state) {
  dlock::RedisBackend redis(options(1));
  dlock::bench::lock_unlock_pairs(state, redis);
}
BENCHMARK(BM_redis_uncontended)->UseRealTime();

void BM_redis_contended(benchmark::State& state) {
  std::vector<std::unique_ptr<dlock::RedisBackend>> backends;
  for (std::int64_t i = 0; i < state.range(0); ++i)
    backends.push_back(std::make_unique<dlock::RedisBackend>(options(1)));
  dlock::bench::contended(state, backends, {.ttl = 30s}, std::chrono::microseconds(0));
}
BENCHMARK(BM_redis_contended)->Arg(8)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--acquire-script") == 0) {
    std::fwrite(dlock::detail::redis_acquire_script.data(), 1, dlock::detail::redis_acquire_script.size(), stdout);
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
