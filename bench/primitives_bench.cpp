// The primitives' acquire+release pair against the mutex's, on the in-process
// backends (MemoryBackend, MemoryPrimitives): what the views and the pools add
// to the front end's own cost. (The Redis comparison of issue 16 waits for the
// scripts to be wired into RedisBackend; docs/primitives.md.)
//
//   primitives_bench --benchmark_min_time=0.5
#include <dlock/dlock.hpp>

#include <benchmark/benchmark.h>

#include <chrono>

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

}  // namespace

BENCHMARK_MAIN();
