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

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using RedisLock = dlock::Lock<dlock::RedisBackend>;

std::string uri() {
  const char* u = std::getenv("DLOCK_BENCH_REDIS");
  return u ? u : "redis://127.0.0.1:6379";
}

dlock::RedisOptions options(std::size_t pool) {
  return dlock::parse_redis_uri(uri(), dlock::RedisOptions{.key_prefix = "dlock-bench:", .pool_size = pool});
}

void BM_redis_uncontended(benchmark::State& state) {
  dlock::RedisBackend redis(options(1));
  RedisLock lock(redis, "uncontended", {.ttl = 30s});
  for (auto _ : state) {
    if (!lock.try_lock()) {
      state.SkipWithError("try_lock failed on a free lock");
      break;
    }
    lock.unlock();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_redis_uncontended)->UseRealTime();

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

void BM_redis_contended(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const char* secs = std::getenv("DLOCK_BENCH_SECONDS");
  const auto duration = std::chrono::seconds(std::max(1, secs ? std::atoi(secs) : 5));
  std::vector<std::unique_ptr<dlock::RedisBackend>> backends;
  for (std::size_t i = 0; i < n; ++i) backends.push_back(std::make_unique<dlock::RedisBackend>(options(1)));
  for (auto _ : state) {
    std::vector<std::vector<double>> waits(n);
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        RedisLock lock(*backends[i], "contended", {.ttl = 30s});
        while (!stop.load(std::memory_order_relaxed)) {
          const auto t0 = std::chrono::steady_clock::now();
          if (!lock.try_lock_for(1s)) continue;
          waits[i].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          lock.unlock();
        }
      });
    }
    std::this_thread::sleep_for(duration);
    stop = true;
    for (auto& t : threads) t.join();
    std::vector<double> all;
    std::size_t least = SIZE_MAX, most = 0;
    for (auto& w : waits) {
      all.insert(all.end(), w.begin(), w.end());
      least = std::min(least, w.size());
      most = std::max(most, w.size());
    }
    const double seconds = std::chrono::duration<double>(duration).count();
    state.counters["handoffs_per_s"] = static_cast<double>(all.size()) / seconds;
    state.counters["p50_wait_ms"] = percentile(all, 0.50);
    state.counters["p99_wait_ms"] = percentile(all, 0.99);
    state.counters["min_acquisitions"] = static_cast<double>(least);
    state.counters["max_acquisitions"] = static_cast<double>(most);
  }
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
