// A test helper shared by the asynchronous tests of every backend: coroutines
// on one io_context thread contend for a few locks, each holding its lock
// across a suspension (an overlap of two holders loses an increment), while
// a 1 ms Ticker measures whether anything blocked the loop's thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "loop_ticker.hpp"

namespace dlock::test {

/// What contend() saw.
struct Contention {
  int finished = 0;  ///< coroutines that ran to the end
  int failed = 0;    ///< coroutines that ended on an exception (printed)
  long total = 0;    ///< increments counted under the locks, all names
  bool tokens_increase = true;
  int ticks = 0;  ///< the 1 ms timer's
  std::chrono::steady_clock::duration worst_lag{};
  std::chrono::milliseconds took{};
};

/// Runs one coroutine per lock in `locks` (lock i contends for name i %
/// names: the caller builds them so) for `cycles` acquire/release cycles on
/// `io`, up to `limit`. `guard_releases`: every other cycle lets the
/// AsyncGuard's destructor start the release instead of co_await-ing it.
template <class L>
Contention contend(boost::asio::io_context& io, std::vector<std::unique_ptr<L>>& locks, int names, int cycles,
                   bool guard_releases, std::chrono::seconds limit) {
  namespace asio = boost::asio;
  using Clock = std::chrono::steady_clock;
  struct Name {
    long counter = 0;
    std::uint64_t last_token = 0;
  };
  std::vector<Name> shared(static_cast<std::size_t>(names));
  Contention out;
  for (std::size_t i = 0; i < locks.size(); ++i) {
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          Name& s = shared[i % shared.size()];
          try {
            for (int c = 0; c < cycles; ++c) {
              auto g = co_await locks[i]->async_acquire(asio::use_awaitable);
              const std::uint64_t token = g.fencing_token();
              if (token <= s.last_token) out.tokens_increase = false;
              s.last_token = token;
              const long seen = s.counter;
              co_await asio::post(io, asio::use_awaitable);  // hold it across a suspension
              s.counter = seen + 1;
              if (!guard_releases || c % 2 == 0) co_await g.async_release(asio::use_awaitable);
            }
          } catch (const std::exception& e) {
            std::printf("coroutine %zu: %s\n", i, e.what());
            ++out.failed;
          }
          ++out.finished;
        },
        asio::detached);
  }
  Ticker ticker(io);
  ticker.arm(Clock::now() + std::chrono::milliseconds(1));
  const auto start = Clock::now();
  while (out.finished < static_cast<int>(locks.size()) && Clock::now() - start < limit)
    io.run_one_for(std::chrono::milliseconds(100));
  out.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  ticker.stop = true;
  io.run_for(std::chrono::milliseconds(50));
  for (const auto& s : shared) out.total += s.counter;
  out.ticks = ticker.ticks;
  out.worst_lag = ticker.worst;
  std::printf("%d acquisitions in %lld ms on one thread; 1 ms timer: %d ticks, worst lag %lld us\n",
              static_cast<int>(locks.size()) * cycles, static_cast<long long>(out.took.count()), out.ticks,
              ticker.worst_us());
  return out;
}

}  // namespace dlock::test
