// RedisBackend throughput and handoff latency, for bench/parts/redis.sh.
//
//   DLOCK_BENCH_REDIS=redis://127.0.0.1:6379 redis_bench
//   redis_bench --acquire-script      prints the acquire script (for redis-benchmark's floor)
//   redis_bench --minimal-script      prints the least correct acquire script (SET NX PX, then
//                                     INCR and PEXPIRE of the counter: no clock floor), for the
//                                     second floor of issue 12
//
// BM_redis_uncontended: one thread, try_lock + unlock pairs on one lock: two
//   round trips (acquire script, release script) per pair.
// BM_redis_contended/8: 8 contenders, each with its own backend (as 8
//   processes would have) and Lock on one name, lock() + unlock() with zero
//   hold time for DLOCK_BENCH_SECONDS (default 5); reports handoffs/s, the
//   p50/p99 wait of lock(), and the fewest/most acquisitions of a contender.
// BM_redis_shared/T/P: T threads sharing one RedisBackend with pool_size P,
//   each on its own name, try_lock + unlock pairs for DLOCK_BENCH_SECONDS
//   (default 5); reports pairs_per_s (all threads together).
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
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

void BM_redis_shared(benchmark::State& state) {
  dlock::RedisBackend redis(options(static_cast<std::size_t>(state.range(1))));
  const char* secs = std::getenv("DLOCK_BENCH_SECONDS");
  const auto duration = std::chrono::seconds(std::max(1, secs ? std::atoi(secs) : 5));
  for (auto _ : state) {
    std::atomic<bool> stop{false}, failed{false};
    std::atomic<std::uint64_t> pairs{0};
    std::vector<std::thread> threads;
    for (std::int64_t i = 0; i < state.range(0); ++i) {
      threads.emplace_back([&, i] {
        dlock::Lock<dlock::RedisBackend> lock(redis, "shared-" + std::to_string(i), {.ttl = 30s});
        std::uint64_t n = 0;
        while (!stop.load(std::memory_order_relaxed)) {
          if (!lock.try_lock()) {
            failed = true;
            break;
          }
          lock.unlock();
          ++n;
        }
        pairs += n;
      });
    }
    std::this_thread::sleep_for(duration);
    stop = true;
    for (auto& t : threads) t.join();
    if (failed) state.SkipWithError("try_lock failed on a free lock");
    state.counters["pairs_per_s"] = static_cast<double>(pairs.load()) / std::chrono::duration<double>(duration).count();
  }
}
BENCHMARK(BM_redis_shared)
    ->Args({32, 1})
    ->Args({32, 4})
    ->Args({32, 32})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The least an acquire script that is correct but for the token's clock
// floor does: SET NX PX, INCR and PEXPIRE of the counter (three calls), and
// PTTL on contention. A floor for the cost of dlock's script.
constexpr std::string_view minimal_acquire_script = R"lua(
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local c = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return {1, c}
end
return {0, redis.call('PTTL', KEYS[1])}
)lua";

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--acquire-script") == 0) {
    std::fwrite(dlock::detail::redis_acquire_script.data(), 1, dlock::detail::redis_acquire_script.size(), stdout);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--minimal-script") == 0) {
    std::fwrite(minimal_acquire_script.data(), 1, minimal_acquire_script.size(), stdout);
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
