// Checks of a backend's asynchronous API on real servers, shared by the
// Redis and Redlock async tests (issue 13): coroutines on one io_context
// thread contend without blocking it (a 1 ms timer on the same thread keeps
// ticking), cancellation at random points leaves no lock held on the server,
// and a server stopped mid-wait gives errc::connection at the deadline.
#pragma once

#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "unit/loop_ticker.hpp"

namespace dlock::test {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr std::chrono::milliseconds async_lag_bound{2000};  // everything runs many times slower
#else
inline constexpr std::chrono::milliseconds async_lag_bound{100};
#endif

/// Expects `name` free on the backend's server(s): one try_lock succeeds
/// (within `settle`, tried every 5 ms: for a server that frees a closed
/// session's locks once it notices the close, PostgreSQL).
template <class B>
void expect_free(B& backend, const std::string& name, std::chrono::milliseconds settle = {}) {
  Lock<B> probe(backend, name);
  const auto end = std::chrono::steady_clock::now() + settle;
  bool free = probe.try_lock();
  while (!free && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the server's own clean-up is the point
    free = probe.try_lock();
  }
  EXPECT_TRUE(free) << "left held: " << name;
}

/// `coroutines` coroutines on one io_context thread, `cycles` acquisitions
/// each of one of `names` locks (base + index), holding across a suspension:
/// the counters are exact, the tokens increase, the loop's 1 ms timer is
/// never late by more than `lag_bound`, nothing is left held.
template <class B>
void expect_coroutines_exclude_each_other(B& backend, const std::string& base, int coroutines, int cycles, int names,
                                          LockOptions o, std::chrono::milliseconds lag_bound = async_lag_bound) {
  namespace asio = boost::asio;
  using Clock = std::chrono::steady_clock;
  asio::io_context io;
  struct Shared {
    long counter = 0;
    std::uint64_t last_token = 0;
    bool tokens_increase = true;
  };
  std::vector<Shared> shared(static_cast<std::size_t>(names));
  std::vector<std::unique_ptr<Lock<B>>> locks;
  for (int i = 0; i < coroutines; ++i)
    locks.push_back(std::make_unique<Lock<B>>(backend, base + std::to_string(i % names), o));
  int finished = 0, failed = 0;
  for (int i = 0; i < coroutines; ++i) {
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          Shared& s = shared[static_cast<std::size_t>(i % names)];
          try {
            for (int c = 0; c < cycles; ++c) {
              auto g = co_await locks[i]->async_acquire(asio::use_awaitable);
              const std::uint64_t token = g.fencing_token();
              if (token <= s.last_token) s.tokens_increase = false;
              s.last_token = token;
              const long seen = s.counter;
              co_await asio::post(io, asio::use_awaitable);  // an overlap would lose an increment
              s.counter = seen + 1;
              if (c % 2 == 0) co_await g.async_release(asio::use_awaitable);  // else ~AsyncGuard starts it
            }
          } catch (const std::exception& e) {
            std::printf("coroutine %d: %s\n", i, e.what());
            ++failed;
          }
          ++finished;
        },
        asio::detached);
  }
  Ticker ticker(io);
  ticker.arm(Clock::now() + std::chrono::milliseconds(1));
  const auto start = Clock::now();
  while (finished < coroutines && Clock::now() - start < std::chrono::seconds(60))
    io.run_one_for(std::chrono::milliseconds(100));
  ticker.stop = true;
  io.run_for(std::chrono::milliseconds(100));  // the releases the last guards started
  std::printf(
      "%d acquisitions in %lld ms on one thread; 1 ms timer: %d ticks, worst lag %lld us\n", coroutines * cycles,
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()),
      ticker.ticks, ticker.worst_us());
  ASSERT_EQ(finished, coroutines);
  EXPECT_EQ(failed, 0);
  long total = 0;
  for (const auto& s : shared) {
    EXPECT_TRUE(s.tokens_increase);
    total += s.counter;
  }
  EXPECT_EQ(total, static_cast<long>(coroutines) * cycles);
  EXPECT_LT(ticker.worst, lag_bound) << "the loop's thread was blocked";
  for (int n = 0; n < names; ++n) expect_free(backend, base + std::to_string(n));
}

/// The counts of run_cancelled_tasks: the bodies count their acquisitions.
struct CancelledTasks {
  int acquired = 0;   ///< counted by the bodies
  int cancelled = 0;  ///< ended by errc::cancelled
  int other = 0;      ///< ended by any other error (printed)
  int done = 0;
};

/// Spawns `tasks` coroutines `body(i, stop)` on `io`; for each i with
/// `cancels(i)`, a stop is requested at a random point within `window`
/// (seeded by `seed`). A body that ends with errc::cancelled counts as
/// cancelled, with another error as other. Runs `io` until every task is done
/// (30 s at most), then 100 ms more (the releases the last guards started).
template <class Body, class Cancels>
void run_cancelled_tasks(boost::asio::io_context& io, CancelledTasks& run, int tasks, unsigned seed,
                         std::chrono::microseconds window, Body& body, Cancels cancels) {
  namespace asio = boost::asio;
  using Clock = std::chrono::steady_clock;
  std::mt19937 rng(seed);
  std::vector<std::stop_source> stops(static_cast<std::size_t>(tasks));
  std::vector<std::unique_ptr<asio::steady_timer>> cancellers;
  for (int i = 0; i < tasks; ++i) {
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          try {
            co_await body(i, stops[static_cast<std::size_t>(i)].get_token());
          } catch (const boost::system::system_error& e) {
            if (to_std(e.code()) == errc::cancelled) {
              ++run.cancelled;
            } else {
              std::printf("task %d: %s\n", i, e.what());
              ++run.other;
            }
          }
          ++run.done;
        },
        asio::detached);
    if (!cancels(i)) continue;
    cancellers.push_back(std::make_unique<asio::steady_timer>(io, std::chrono::microseconds(rng() % window.count())));
    cancellers.back()->async_wait(
        [&stops, i](const boost::system::error_code&) { stops[static_cast<std::size_t>(i)].request_stop(); });
  }
  const auto start = Clock::now();
  while (run.done < tasks && Clock::now() - start < std::chrono::seconds(30))
    io.run_one_for(std::chrono::milliseconds(100));
  io.run_for(std::chrono::milliseconds(100));
  std::printf("%d acquired, %d cancelled, %d other\n", run.acquired, run.cancelled, run.other);
}

/// `tasks` acquires of two names, each cancelled (stop token) at a random
/// point within 100 ms: every one ends acquired-and-released or cancelled,
/// and neither name is left held on the server.
/// `settle`: as expect_free's.
template <class B>
void expect_cancellation_leaves_nothing(B& backend, const std::string& base, int tasks, unsigned seed,
                                        std::chrono::milliseconds settle = {}) {
  namespace asio = boost::asio;
  asio::io_context io;
  std::vector<std::unique_ptr<Lock<B>>> locks;
  const LockOptions o{
      .ttl = std::chrono::seconds(10),
      .retry = {.initial_delay = std::chrono::microseconds(200), .max_delay = std::chrono::milliseconds(2)}};
  for (int i = 0; i < tasks; ++i) locks.push_back(std::make_unique<Lock<B>>(backend, base + std::to_string(i % 2), o));
  CancelledTasks run;
  auto body = [&](int i, std::stop_token stop) -> asio::awaitable<void> {
    auto g = co_await locks[static_cast<std::size_t>(i)]->async_acquire(std::move(stop), asio::use_awaitable);
    ++run.acquired;
    co_await asio::post(io, asio::use_awaitable);
    co_await g.async_release(asio::use_awaitable);
  };
  run_cancelled_tasks(io, run, tasks, seed, std::chrono::milliseconds(100), body, [](int) { return true; });
  ASSERT_EQ(run.done, tasks);
  EXPECT_EQ(run.other, 0);
  EXPECT_GT(run.cancelled, 0);
  EXPECT_GT(run.acquired, 0);
  for (auto& l : locks) EXPECT_FALSE(l->owns_lock());
  expect_free(backend, base + "0", settle);
  expect_free(backend, base + "1", settle);
}

/// An async_acquire waits for `name`, held by `holder`; `stop_server` runs
/// 200 ms in: the acquire completes with errc::connection by its 1 s
/// acquire_timeout (plus a round trip), and the loop keeps running.
template <class B>
void expect_stopped_server_gives_connection_error(B& backend, const std::string& name,
                                                  const std::function<void()>& stop_server) {
  namespace asio = boost::asio;
  using Clock = std::chrono::steady_clock;
  Lock<B> holder(backend, name, LockOptions{.ttl = std::chrono::seconds(10)});
  ASSERT_TRUE(holder.try_lock());
  asio::io_context io;
  Ticker ticker(io);
  ticker.arm(Clock::now() + std::chrono::milliseconds(1));
  LockOptions wo{.ttl = std::chrono::seconds(10),
                 .retry = {.initial_delay = std::chrono::milliseconds(5), .max_delay = std::chrono::milliseconds(20)}};
  wo.acquire_timeout = std::chrono::seconds(1);
  Lock<B> waiter(backend, name, wo);
  boost::system::error_code result;
  bool completed = false;
  const auto start = Clock::now();
  Clock::duration took{};
  waiter.async_acquire(asio::bind_executor(io, [&](boost::system::error_code ec, auto) {
    result = ec;
    completed = true;
    took = Clock::now() - start;
    ticker.stop = true;
  }));
  asio::steady_timer stopper(io, std::chrono::milliseconds(200));
  std::thread stopping;  // not on the loop's thread: stopping a server waits for its exit
  stopper.async_wait([&](const boost::system::error_code&) { stopping = std::thread(stop_server); });
  io.run_for(std::chrono::seconds(5));
  if (stopping.joinable()) stopping.join();
  std::printf("completed %d after %lld ms: %s; 1 ms timer: %d ticks, worst lag %lld us\n", completed,
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
              result.message().c_str(), ticker.ticks, ticker.worst_us());
  ASSERT_TRUE(completed);
  EXPECT_TRUE(to_std(result) == errc::connection) << result.message();
  EXPECT_GE(took, std::chrono::milliseconds(1000)) << "before the deadline";
  EXPECT_LT(took, std::chrono::milliseconds(2000));
  EXPECT_LT(ticker.worst, async_lag_bound);
  holder.unlock();
}

/// A waiter with a 30 s backoff (only the release's PUBLISH can end its wait
/// in time) acquires within a second of the holder's release.
template <class B>
void expect_release_wakes_a_long_backoff_waiter(B& backend, const std::string& name) {
  namespace asio = boost::asio;
  using namespace std::chrono_literals;
  using Clock = std::chrono::steady_clock;
  asio::io_context io;
  Lock<B> holder(backend, name, LockOptions{.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  Lock<B> waiter(backend, name,
                 LockOptions{.ttl = 10s, .retry = {.initial_delay = 30s, .max_delay = 30s, .jitter = Jitter::none}});
  bool acquired = false;
  Clock::time_point got{}, released{};
  waiter.async_try_lock_for(20s, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) {
                              EXPECT_FALSE(ec) << ec.message();
                              acquired = ok;
                              got = Clock::now();
                            }));
  asio::steady_timer release(io, 300ms);
  release.async_wait([&](const boost::system::error_code&) {
    holder.unlock();  // blocking, from the loop: fine in a test
    released = Clock::now();
  });
  io.run_for(5s);
  ASSERT_TRUE(acquired);
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(got - released);
  std::printf("acquired %lld ms after the release\n", static_cast<long long>(after.count()));
  EXPECT_LT(after, 1s);
  waiter.unlock();
}

/// async_extend then async_release of a held lock complete on the executor:
/// extended (valid_until moves), released, and the name is free.
template <class B>
void expect_extend_and_release_complete(B& backend, const std::string& name) {
  namespace asio = boost::asio;
  using namespace std::chrono_literals;
  asio::io_context io;
  Lock<B> lock(backend, name, LockOptions{.ttl = 2s});
  boost::system::error_code extend_ec, release_ec;
  ReleaseResult released = ReleaseResult::not_held;
  ASSERT_TRUE(lock.try_lock());
  const auto before = lock.valid_until();
  lock.async_extend(20s, asio::bind_executor(io, [&](boost::system::error_code ec) {
                      extend_ec = ec;
                      EXPECT_GT(lock.valid_until(), before + 10s);
                      lock.async_release(asio::bind_executor(io, [&](boost::system::error_code e, ReleaseResult r) {
                        release_ec = e;
                        released = r;
                      }));
                    }));
  io.run_for(3s);
  EXPECT_FALSE(extend_ec) << extend_ec.message();
  EXPECT_FALSE(release_ec) << release_ec.message();
  EXPECT_EQ(released, ReleaseResult::released);
  expect_free(backend, name);
}

}  // namespace dlock::test
