// The benchmark bodies redis_bench and redlock_bench share: uncontended
// try_lock + unlock pairs, and contenders handing one lock over.
#pragma once

#include <dlock/dlock.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace dlock::bench {

/// try_lock + unlock pairs on one free lock, one thread; items/s = pairs/s.
template <class B>
void lock_unlock_pairs(benchmark::State& state, B& backend) {
  Lock<B> lock(backend, "uncontended", {.ttl = std::chrono::seconds(30)});
  for (auto _ : state) {
    if (!lock.try_lock()) {
      state.SkipWithError("try_lock failed on a free lock");
      break;
    }
    lock.unlock();
  }
  state.SetItemsProcessed(state.iterations());
}

inline double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

/// One contender per backend (as separate processes would have), each with
/// its own Lock on one name: lock() (try_lock_for 1 s), `hold` of work (a
/// sleep), unlock(), for DLOCK_BENCH_SECONDS (default 5). Reports handoffs/s,
/// the p50/p99 wait of lock(), and the fewest/most acquisitions of a contender.
template <class B>
void contended(benchmark::State& state, std::vector<std::unique_ptr<B>>& backends, const LockOptions& options,
               std::chrono::microseconds hold) {
  const char* secs = std::getenv("DLOCK_BENCH_SECONDS");
  const auto duration = std::chrono::seconds(std::max(1, secs ? std::atoi(secs) : 5));
  const std::size_t n = backends.size();
  for (auto _ : state) {
    std::vector<std::vector<double>> waits(n);
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        Lock<B> lock(*backends[i], "contended", options);
        while (!stop.load(std::memory_order_relaxed)) {
          const auto t0 = std::chrono::steady_clock::now();
          if (!lock.try_lock_for(std::chrono::seconds(1))) continue;
          waits[i].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          if (hold.count() > 0) std::this_thread::sleep_for(hold);
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

}  // namespace dlock::bench
