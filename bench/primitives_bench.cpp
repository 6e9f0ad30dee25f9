// The primitives' acquire+release pair against the mutex's, on the in-process
// backends (MemoryBackend, MemoryPrimitives): what the views and the pools add
// to the front end's own cost. With DLOCK_BENCH_REDIS=redis://host:port (and
// built with Redis), the same pairs on RedisBackend, and many waiters on one
// Redis lock in the default and fair modes: handoffs/s, owner changes, wait
// p99 and server calls per handoff (INFO commandstats: script calls, EVALSHA
// and EVAL, the round trips dlock makes). bench/parts/primitives.sh runs them.
//
//   primitives_bench --benchmark_min_time=0.5
#include <dlock/dlock.hpp>
#ifdef DLOCK_BENCH_WITH_REDIS
#include <dlock/redis.hpp>
#endif

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"

namespace {

using namespace std::chrono_literals;

void BM_mutex_pair(benchmark::State& state) {
  dlock::MemoryBackend mem;
  dlock::bench::lock_unlock_pairs(state, mem);
}
BENCHMARK(BM_mutex_pair);

// Uncontended pairs: acquire() must succeed, release() gives it back.
template <class Acquire, class Release>
void pairs(benchmark::State& state, Acquire acquire, Release release) {
  for (auto _ : state) {
    if (!acquire()) {
      state.SkipWithError("an acquire failed on a free primitive");
      break;
    }
    release();
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_rw_write_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "bench", {.ttl = 30s});
  pairs(
      state, [&] { return rw.try_lock(); }, [&] { rw.unlock(); });
}
BENCHMARK(BM_rw_write_pair);

void BM_rw_read_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "bench", {.ttl = 30s});
  pairs(
      state, [&] { return rw.try_lock_shared(); }, [&] { rw.unlock_shared(); });
}
BENCHMARK(BM_rw_read_pair);

void BM_semaphore_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "bench", 4, {.ttl = 30s});
  pairs(
      state, [&] { return sem.try_acquire(); }, [&] { sem.release(); });
}
BENCHMARK(BM_semaphore_pair);

void BM_permit_guard_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "bench", 4, {.ttl = 30s});
  dlock::Semaphore<dlock::MemoryPrimitives>::Permit p;
  pairs(
      state, [&] { return static_cast<bool>(p = sem.try_acquire_permit()); }, [&] { p.unlock(); });
}
BENCHMARK(BM_permit_guard_pair);

#ifdef DLOCK_BENCH_WITH_REDIS
// ---- Redis (DLOCK_BENCH_REDIS) ----

const char* redis_uri() { return std::getenv("DLOCK_BENCH_REDIS"); }

template <class F>
void with_redis(benchmark::State& state, F body) {
  if (redis_uri() == nullptr) {
    state.SkipWithError("set DLOCK_BENCH_REDIS=redis://host:port");
    for (auto _ : state) {
    }
    return;
  }
  dlock::RedisBackend redis(redis_uri());
  body(redis);
}

void BM_redis_mutex_pair(benchmark::State& state) {
  with_redis(state, [&](dlock::RedisBackend& redis) { dlock::bench::lock_unlock_pairs(state, redis); });
}
BENCHMARK(BM_redis_mutex_pair)->UseRealTime();

void BM_redis_rw_read_pair(benchmark::State& state) {
  with_redis(state, [&](dlock::RedisBackend& redis) {
    dlock::RwLock<dlock::RedisBackend> rw(redis, "bench-rw", {.ttl = 30s});
    pairs(
        state, [&] { return rw.try_lock_shared(); }, [&] { rw.unlock_shared(); });
  });
}
BENCHMARK(BM_redis_rw_read_pair)->UseRealTime();

void BM_redis_semaphore_pair(benchmark::State& state) {
  with_redis(state, [&](dlock::RedisBackend& redis) {
    dlock::Semaphore<dlock::RedisBackend> sem(redis, "bench-sem", 4, {.ttl = 30s});
    pairs(
        state, [&] { return sem.try_acquire(); }, [&] { sem.release(); });
  });
}
BENCHMARK(BM_redis_semaphore_pair)->UseRealTime();

// Script calls (EVALSHA + EVAL) the server has answered so far.
double script_calls(dlock::RedisBackend& redis) {
  const std::string info = redis.node().command({"INFO", "commandstats"}).str;
  double total = 0;
  for (const std::string_view cmd : {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="}) {
    const auto at = info.find(cmd);
    if (at != std::string::npos) total += std::atof(info.c_str() + at + cmd.size());
  }
  return total;
}

// Waiters on one Redis lock for DLOCK_BENCH_SECONDS (default 3), zero hold:
// state.range(0) threads, each with its own Lock; state.range(1) = 1: fair
// mode; state.range(2) = 1: one RedisBackend per waiter (as separate
// processes would have), 0: one shared backend (one service's threads).
void BM_redis_waiters(benchmark::State& state) {
  with_redis(state, [&](dlock::RedisBackend& admin) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const bool fair = state.range(1) == 1;
    const bool own = state.range(2) == 1;
    const char* secs = std::getenv("DLOCK_BENCH_SECONDS");
    const auto duration = std::chrono::seconds(std::max(1, secs ? std::atoi(secs) : 3));
    std::vector<std::unique_ptr<dlock::RedisBackend>> backends;
    for (std::size_t i = 0; i < (own ? n : 1); ++i)
      backends.push_back(std::make_unique<dlock::RedisBackend>(redis_uri()));
    const dlock::LockOptions options{.ttl = 10s, .fair = fair};  // the default retry policy
    for (auto _ : state) {
      std::vector<std::vector<double>> waits(n);
      std::vector<int> order(2'000'000);
      std::atomic<std::size_t> next{0};
      std::atomic<bool> stop{false};
      const double calls_before = script_calls(admin);
      std::vector<std::thread> threads;
      for (std::size_t i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
          dlock::Lock<dlock::RedisBackend> lock(*backends[own ? i : 0], "bench-waiters", options);
          while (!stop.load(std::memory_order_relaxed)) {
            const auto t0 = std::chrono::steady_clock::now();
            if (!lock.try_lock_for(std::chrono::seconds(10))) continue;
            waits[i].push_back(
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            const std::size_t k = next.fetch_add(1);
            if (k < order.size()) order[k] = static_cast<int>(i);
            lock.unlock();
          }
        });
      }
      std::this_thread::sleep_for(duration);
      stop = true;
      for (auto& t : threads) t.join();
      const double calls = script_calls(admin) - calls_before;
      std::vector<double> all;
      for (auto& w : waits) all.insert(all.end(), w.begin(), w.end());
      const std::size_t handoffs = std::min(all.size(), order.size());
      std::size_t changes = 0;
      for (std::size_t k = 1; k < handoffs; ++k) changes += order[k] != order[k - 1] ? 1 : 0;
      state.counters["handoffs_per_s"] =
          static_cast<double>(all.size()) / std::chrono::duration<double>(duration).count();
      state.counters["calls_per_handoff"] = all.empty() ? 0 : calls / static_cast<double>(all.size());
      state.counters["owner_change_pct"] =
          handoffs > 1 ? 100.0 * static_cast<double>(changes) / static_cast<double>(handoffs - 1) : 0;
      state.counters["p99_wait_ms"] = dlock::bench::percentile(all, 0.99);
    }
  });
}
// {waiters, fair, a backend per waiter}: one service's 8 / 256 threads; 8 "processes".
BENCHMARK(BM_redis_waiters)
    ->Args({8, 0, 0})
    ->Args({256, 0, 0})
    ->Args({8, 1, 0})
    ->Args({256, 1, 0})
    ->Args({8, 0, 1})
    ->Args({8, 1, 1})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
#endif

}  // namespace

BENCHMARK_MAIN();
