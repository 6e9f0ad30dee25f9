// Heartbeat soak: hold N locks at once with auto-extend on one Redis for a
// while, then report what keeping them costs the client:
//   - heartbeat CPU, as a percentage of one core (process CPU time over the
//     hold; nothing else runs in the process meanwhile),
//   - round trips per extension interval (pipelined batches; far below N
//     when batching works),
//   - client memory per held lock (heap in use, Lock objects included),
//   - and that no lock was lost.
//
//   heartbeat_bench REDIS_URI [--locks N] [--ttl-ms T] [--seconds S]
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <fmt/format.h>
#include <malloc.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/counting_backend.hpp"

namespace {

using namespace std::chrono_literals;
using Redis = dlock::test::CountingBackend<dlock::RedisBackend>;

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}
std::size_t heap_in_use() { return mallinfo2().uordblks; }

struct Losses : dlock::Observer {
  std::atomic<long> lost{0}, extend_failures{0};
  void on_event(const dlock::Event& e) noexcept override {
    if (e.type == dlock::EventType::lost) ++lost;
    if (e.type == dlock::EventType::extend_failed) ++extend_failures;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: heartbeat_bench REDIS_URI [--locks N] [--ttl-ms T] [--seconds S]\n");
    return 2;
  }
  int locks = 10000;
  auto ttl = std::chrono::milliseconds(3000);
  int seconds = 30;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    if (a == "--locks")
      locks = std::atoi(argv[i + 1]);
    else if (a == "--ttl-ms")
      ttl = std::chrono::milliseconds(std::atoi(argv[i + 1]));
    else if (a == "--seconds")
      seconds = std::atoi(argv[i + 1]);
  }

  Redis redis{dlock::RedisBackend(argv[1])};
  auto losses = std::make_shared<Losses>();
  const std::size_t heap_before = heap_in_use();
  std::vector<std::unique_ptr<dlock::Lock<Redis>>> held;
  held.reserve(static_cast<std::size_t>(locks));
  const auto t_acquire = std::chrono::steady_clock::now();
  for (int i = 0; i < locks; ++i) {
    held.push_back(std::make_unique<dlock::Lock<Redis>>(
        redis, fmt::format("soak:{}", i), dlock::LockOptions{.ttl = ttl, .auto_extend = true, .observer = losses}));
    if (!held.back()->try_lock()) {
      fmt::print(stderr, "heartbeat_bench: lock soak:{} was not free\n", i);
      return 1;
    }
  }
  const double acquire_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_acquire).count();
  const std::size_t heap_held = heap_in_use();

  const long batches0 = redis.counts().batches, items0 = redis.counts().items, single0 = redis.counts().single;
  const double cpu0 = cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = cpu_seconds() - cpu0;
  const long batches = redis.counts().batches - batches0;
  const long items = redis.counts().items - items0;
  const long single = redis.counts().single - single0;

  long still_held = 0;
  for (auto& l : held) still_held += l->owns_lock() ? 1 : 0;
  const double interval_s = std::chrono::duration<double>(ttl).count() / 3;
  const double intervals = wall / interval_s;

  fmt::print("locks held               {} (acquired in {:.2f} s), ttl {} ms, extended every {:.0f} ms\n", locks,
             acquire_s, ttl.count(), interval_s * 1000);
  fmt::print("hold                     {:.1f} s, {:.1f} extension intervals\n", wall, intervals);
  fmt::print("heartbeat cpu            {:.2f} % of one core (target < 5 %)\n", 100 * cpu / wall);
  const auto per_interval = [intervals](long n) { return static_cast<double>(n) / intervals; };
  fmt::print("extensions               {} ({:.0f} per interval)\n", items + single, per_interval(items + single));
  fmt::print("round trips              {} batches + {} single = {:.1f} per interval (vs {} without batching)\n",
             batches, single, per_interval(batches + single), locks);
  fmt::print("client memory per lock   {:.0f} bytes (target <= 1024)\n",
             static_cast<double>(heap_held - heap_before) / locks);
  fmt::print("lost / extend failures   {} / {}; still held at the end: {}\n", losses->lost.load(),
             losses->extend_failures.load(), still_held);
  for (auto& l : held) l->unlock();
  return losses->lost == 0 && still_held == locks ? 0 : 1;
}
