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

void BM_rw_write_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "bench", {.ttl = 30s});
  for (auto _ : state) {
    if (!rw.try_lock()) {
      state.SkipWithError("try_lock failed on a free lock");
      break;
    }
    rw.unlock();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_rw_write_pair);

void BM_rw_read_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "bench", {.ttl = 30s});
  for (auto _ : state) {
    if (!rw.try_lock_shared()) {
      state.SkipWithError("try_lock_shared failed on a free lock");
      break;
    }
    rw.unlock_shared();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_rw_read_pair);

void BM_semaphore_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "bench", 4, {.ttl = 30s});
  for (auto _ : state) {
    if (!sem.try_acquire()) {
      state.SkipWithError("try_acquire failed with a free permit");
      break;
    }
    sem.release();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_semaphore_pair);

void BM_permit_guard_pair(benchmark::State& state) {
  dlock::MemoryPrimitives prims;
  dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "bench", 4, {.ttl = 30s});
  for (auto _ : state) {
    auto p = sem.try_acquire_permit();
    if (!p) {
      state.SkipWithError("try_acquire_permit failed with a free permit");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_permit_guard_pair);

}  // namespace

BENCHMARK_MAIN();
