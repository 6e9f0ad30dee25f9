// dlock demo: several workers contend for one lock and increment a shared
// counter with a deliberately non-atomic read-modify-write inside it. Each
// acquisition prints the worker, its wait and its fencing token; the summary
// shows acquisitions per worker, wait percentiles, whether the counter is
// exact and whether the tokens only went up.
//
//   dlock_demo [--workers N] [--cycles N] [--hold-ms N] [--quiet]
#include <dlock/dlock.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Settings {
  int workers = 4;
  int cycles = 25;
  std::chrono::milliseconds hold{2};
  bool quiet = false;
};

Settings parse(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) {
        fmt::print(stderr, "dlock_demo: {} needs a value\n", arg);
        std::exit(2);
      }
      return std::atoi(argv[++i]);
    };
    if (arg == "--workers") s.workers = std::max(1, value());
    else if (arg == "--cycles") s.cycles = std::max(1, value());
    else if (arg == "--hold-ms") s.hold = std::chrono::milliseconds(std::max(0, value()));
    else if (arg == "--quiet") s.quiet = true;
    else {
      fmt::print(stderr, "usage: dlock_demo [--workers N] [--cycles N] [--hold-ms N] [--quiet]\n");
      std::exit(2);
    }
  }
  return s;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  const Settings settings = parse(argc, argv);
  dlock::MemoryBackend backend;

  long counter = 0;  // protected only by the distributed lock
  std::uint64_t last_token = 0;
  bool tokens_increase = true;
  std::mutex report_mu;  // serialises printing and the statistics, not the counter
  std::vector<double> waits_ms;
  std::vector<int> per_worker(static_cast<std::size_t>(settings.workers));

  fmt::print("dlock demo: {} workers x {} cycles on the in-process backend, hold {} ms\n", settings.workers,
             settings.cycles, settings.hold.count());
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < settings.workers; ++w) {
    threads.emplace_back([&, w] {
      dlock::Lock<dlock::MemoryBackend> lock(backend, "demo:counter",
                                             {.ttl = 5s, .retry = {.initial_delay = 1ms, .max_delay = 50ms}});
      for (int c = 0; c < settings.cycles; ++c) {
        const auto asked = Clock::now();
        auto guard = lock.acquire();
        const double waited = std::chrono::duration<double, std::milli>(Clock::now() - asked).count();
        const std::uint64_t token = guard.fencing_token();
        if (token <= last_token) tokens_increase = false;
        last_token = token;
        const long seen = counter;
        std::this_thread::sleep_for(settings.hold);
        counter = seen + 1;
        std::lock_guard lk(report_mu);
        waits_ms.push_back(waited);
        ++per_worker[static_cast<std::size_t>(w)];
        if (!settings.quiet)
          fmt::print("worker {} acquired token {:>4} after {:6.2f} ms (owner {})\n", w, token, waited,
                     guard.owner_id());
      }
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  const long expected = static_cast<long>(settings.workers) * settings.cycles;
  fmt::print("\nsummary\n");
  fmt::print("  acquisitions   {} in {:.2f} s ({:.0f}/s)\n", waits_ms.size(), seconds,
             static_cast<double>(waits_ms.size()) / seconds);
  fmt::print("  per worker     {}\n", fmt::join(per_worker, " "));
  fmt::print("  wait p50/p99   {:.2f} ms / {:.2f} ms\n", percentile(waits_ms, 0.50), percentile(waits_ms, 0.99));
  fmt::print("  counter        {} (expected {}): {}\n", counter, expected, counter == expected ? "exact" : "WRONG");
  fmt::print("  fencing tokens {}\n", tokens_increase ? "strictly increasing" : "NOT increasing");
  return counter == expected && tokens_increase ? 0 : 1;
}
