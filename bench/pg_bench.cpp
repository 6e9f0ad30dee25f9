// PostgresBackend throughput and handoff latency, for bench/parts/postgres.sh.
//
//   DLOCK_BENCH_PG="host=127.0.0.1 port=5432 dbname=dlock user=postgres" pg_bench
//
// pg_uncontended: one thread, try_lock + unlock pairs on one lock (compare
//   with pgbench running pg_try_advisory_lock + pg_advisory_unlock).
// pg_uncontended_fenced: the same with the fencing sequence installed.
// pg_contended/8: 8 threads, each with its own Lock on one name, lock() +
//   unlock() for a fixed time; reports handoffs/s and the p50/p99 wait of lock().
#include <dlock/postgres.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using PgLock = dlock::Lock<dlock::PostgresBackend>;

std::string conninfo() {
  const char* c = std::getenv("DLOCK_BENCH_PG");
  return c ? c : "";
}

void uncontended(benchmark::State& state, bool fenced) {
  dlock::PostgresBackend pg(
      dlock::PostgresOptions{.conninfo = conninfo(),
                             .lock_namespace = "bench",
                             .fencing_sequence = fenced ? "dlock_bench.fencing" : "dlock_bench_none.fencing"});
  if (fenced) pg.install_schema();
  PgLock lock(pg, fenced ? "uncontended-fenced" : "uncontended", {.ttl = 30s});
  for (auto _ : state) {
    if (!lock.try_lock()) {
      state.SkipWithError("try_lock failed on a free lock");
      break;
    }
    if (fenced) benchmark::DoNotOptimize(lock.fencing_token());
    lock.unlock();
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_pg_uncontended(benchmark::State& state) { uncontended(state, false); }
void BM_pg_uncontended_fenced(benchmark::State& state) { uncontended(state, true); }

void BM_pg_contended(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const auto duration = std::chrono::seconds(
      std::max(1, std::atoi(std::getenv("DLOCK_BENCH_SECONDS") ? std::getenv("DLOCK_BENCH_SECONDS") : "5")));
  dlock::PostgresBackend pg(dlock::PostgresOptions{
      .conninfo = conninfo(), .lock_namespace = "bench", .pool_size = static_cast<std::size_t>(threads) * 2});
  for (auto _ : state) {
    std::vector<std::vector<double>> waits(static_cast<std::size_t>(threads));
    std::atomic<bool> stop{false};
    std::vector<std::thread> pool;
    const auto start = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        PgLock lock(pg, "contended", {.ttl = 30s});
        auto& mine = waits[static_cast<std::size_t>(t)];
        while (!stop.load(std::memory_order_relaxed)) {
          const auto t0 = std::chrono::steady_clock::now();
          lock.lock();
          mine.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          lock.unlock();
        }
      });
    }
    std::this_thread::sleep_for(duration);
    stop = true;
    for (auto& th : pool) th.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::vector<double> all;
    for (const auto& w : waits) all.insert(all.end(), w.begin(), w.end());
    std::sort(all.begin(), all.end());
    const auto pct = [&](double p) {
      return all.empty() ? 0.0
                         : all[std::min(all.size() - 1, static_cast<std::size_t>(p * static_cast<double>(all.size())))];
    };
    state.counters["handoffs_per_s"] = static_cast<double>(all.size()) / secs;
    state.counters["p50_wait_ms"] = pct(0.50);
    state.counters["p99_wait_ms"] = pct(0.99);
  }
}

BENCHMARK(BM_pg_uncontended)->UseRealTime()->MinTime(5.0);
BENCHMARK(BM_pg_uncontended_fenced)->UseRealTime()->MinTime(5.0);
BENCHMARK(BM_pg_contended)->Arg(8)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
