// Fair (FIFO) mode of the asynchronous acquire on a real redis-server
// (LockOptions::fair, AsyncQueuesFairly; issue 16 item 1 with issue 13):
// coroutines on one io_context and blocking threads queue in one waiter queue
// and are granted in arrival order; coroutines cancelled while queued leave
// the queue at once (async_leave_fair), so no handoff waits for a cancelled
// waiter's place to lapse, the counter is exact and the queue ends empty; the
// loop is never blocked.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "support/async_checks.hpp"  // the lag bound, the loop's Ticker

using namespace std::chrono_literals;
namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

static_assert(dlock::AsyncQueuesFairly<dlock::RedisBackend>);

class RedisFairAsync : public dlock::test::RedisTest {
 protected:
  static dlock::LockOptions fair_options() {
    return {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 100ms}, .fair = true};
  }
  long long queued(const std::string& name) { return cmd({"ZCARD", key(name) + ":queue"}).integer; }
  // Runs `io` in short slices until `done()` or `limit`.
  template <class F>
  static void run_until(asio::io_context& io, F done, Clock::duration limit = 10s) {
    const auto until = Clock::now() + limit;
    while (!done() && Clock::now() < until) io.run_for(2ms);
  }
};

// 50 coroutines and 5 blocking threads queue one at a time behind a holder
// (each joins the queue before the next starts); once the holder releases,
// the grants come in exactly that order, each released by the holder
// asynchronously (release_fair, which wakes the next head).
TEST_F(RedisFairAsync, GrantsFollowArrivalOrderAcrossCoroutinesAndThreads) {
  constexpr int waiters = 55;
  const auto opts = fair_options();
  asio::io_context io;
  dlock::Lock<dlock::RedisBackend> holder(redis(), "order", opts);
  holder.lock();
  std::mutex mu;
  std::vector<int> granted;  // arrival index of each grant, in grant order
  std::vector<std::unique_ptr<dlock::Lock<dlock::RedisBackend>>> locks;
  std::vector<std::thread> threads;
  int coroutines_done = 0, failed = 0;
  for (int i = 0; i < waiters; ++i) {
    locks.push_back(std::make_unique<dlock::Lock<dlock::RedisBackend>>(redis(), "order", opts));
    if (i % 11 == 5) {  // a blocking waiter among the coroutines
      threads.emplace_back([&, i] {
        locks[i]->lock();
        {
          std::lock_guard lk(mu);
          granted.push_back(i);
        }
        locks[i]->unlock();
      });
    } else {
      asio::co_spawn(
          io,
          [&, i]() -> asio::awaitable<void> {
            try {
              auto g = co_await locks[i]->async_acquire(asio::use_awaitable);
              {
                std::lock_guard lk(mu);
                granted.push_back(i);
              }
              co_await asio::post(io, asio::use_awaitable);
              co_await g.async_release(asio::use_awaitable);
            } catch (const std::exception& e) {
              std::printf("coroutine %d: %s\n", i, e.what());
              ++failed;
            }
            ++coroutines_done;
          },
          asio::detached);
    }
    run_until(io, [&] { return queued("order") == i + 1; });  // in the queue before the next one starts
    ASSERT_EQ(queued("order"), i + 1) << "waiter " << i << " never queued";
  }
  const auto released = Clock::now();
  holder.unlock();  // the blocking release_fair wakes the head
  const int coroutines = waiters - static_cast<int>(threads.size());
  run_until(io, [&] {
    std::lock_guard lk(mu);
    return coroutines_done == coroutines && granted.size() == static_cast<std::size_t>(waiters);
  });
  for (auto& t : threads) t.join();
  io.run_for(50ms);
  std::printf(
      "%d waiters (%zu threads) granted in %lld ms after the release\n", waiters, threads.size(),
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - released).count()));
  EXPECT_EQ(failed, 0);
  ASSERT_EQ(granted.size(), static_cast<std::size_t>(waiters));
  for (int i = 0; i < waiters; ++i) EXPECT_EQ(granted[static_cast<std::size_t>(i)], i) << "grant " << i;
  EXPECT_EQ(queued("order"), 0);
}

// 50 coroutines (two cycles each, holding across a suspension) and 4 blocking
// threads on one fair lock; 20 of the coroutines are cancelled at random
// points in the first 300 ms, queued or not. The counter is exact, no handoff
// waits anywhere near a waiter's ttl (a cancelled waiter left at once instead
// of holding the head until its place lapsed), the queue ends empty, and a
// 1 ms timer on the loop keeps ticking.
TEST_F(RedisFairAsync, CancelledWaitersLeaveTheQueueAndNeverStallIt) {
  constexpr int coroutines = 50, threads_n = 4, cycles = 2;
  const auto opts = fair_options();
  const auto waiter_ttl = dlock::detail::fair_waiter_ttl(opts);  // 1 s
  asio::io_context io;
  std::atomic<long> counter{0};
  std::mutex mu;
  std::vector<Clock::time_point> grants;
  const auto note_grant = [&] {
    std::lock_guard lk(mu);
    grants.push_back(Clock::now());
  };
  std::vector<std::unique_ptr<dlock::Lock<dlock::RedisBackend>>> locks;
  for (int i = 0; i < coroutines; ++i)
    locks.push_back(std::make_unique<dlock::Lock<dlock::RedisBackend>>(redis(), "cancel", opts));
  dlock::test::CancelledTasks run;
  auto body = [&](int i, std::stop_token stop) -> asio::awaitable<void> {
    for (int c = 0; c < cycles; ++c) {
      auto g = co_await locks[static_cast<std::size_t>(i)]->async_acquire(stop, asio::use_awaitable);
      note_grant();
      ++run.acquired;
      const long seen = counter.load();
      co_await asio::post(io, asio::use_awaitable);  // an overlap would lose an increment
      counter.store(seen + 1);
      if (c % 2 == 0) co_await g.async_release(asio::use_awaitable);  // else ~AsyncGuard starts it
    }
  };
  std::vector<std::thread> threads;
  std::atomic<int> thread_failures{0};
  for (int t = 0; t < threads_n; ++t) {
    threads.emplace_back([&] {
      try {
        dlock::Lock<dlock::RedisBackend> lock(redis(), "cancel", opts);
        for (int c = 0; c < cycles; ++c) {
          lock.lock();
          note_grant();
          const long seen = counter.load();
          std::this_thread::yield();
          counter.store(seen + 1);
          lock.unlock();
        }
      } catch (const std::exception& e) {
        std::printf("thread: %s\n", e.what());
        ++thread_failures;
      }
    });
  }
  dlock::test::Ticker ticker(io);
  ticker.arm(Clock::now() + 1ms);
  const auto start = Clock::now();
  // Also runs the releases the last guards started and the cancelled waiters' queue leaves.
  const auto cancels = [](int i) { return i % 5 < 2; };  // 20 of the 50
  dlock::test::run_cancelled_tasks(io, run, coroutines, 16, 300ms, body, cancels);
  for (auto& t : threads) t.join();
  ticker.stop = true;
  std::sort(grants.begin(), grants.end());
  Clock::duration worst_gap{};
  for (std::size_t i = 1; i < grants.size(); ++i) worst_gap = std::max(worst_gap, grants[i] - grants[i - 1]);
  const auto ms = [](Clock::duration d) {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  std::printf(
      "%d grants, %d cancelled, %d other in %lld ms; worst gap between grants %lld ms (waiter ttl %lld ms); "
      "1 ms timer worst lag %lld us\n",
      run.acquired + threads_n * cycles, run.cancelled, run.other, ms(Clock::now() - start), ms(worst_gap),
      static_cast<long long>(waiter_ttl.count()), ticker.worst_us());
  ASSERT_EQ(run.done, coroutines);
  EXPECT_EQ(run.other, 0);
  EXPECT_EQ(thread_failures.load(), 0);
  EXPECT_GT(run.cancelled, 0);
  EXPECT_EQ(counter.load(), run.acquired + threads_n * cycles) << "two holders overlapped";
  EXPECT_LT(worst_gap, waiter_ttl / 3) << "a handoff waited for a cancelled waiter's place to lapse";
  EXPECT_EQ(queued("cancel"), 0) << "a waiter's place was left in the queue";
  EXPECT_LT(ticker.worst, dlock::test::async_lag_bound) << "the loop's thread was blocked";
  dlock::Lock<dlock::RedisBackend> probe(redis(), "cancel");
  EXPECT_TRUE(probe.try_lock()) << "left held";
}

// A queued coroutine whose stop is requested leaves the queue at once: the
// waiter behind it is granted right after the holder's release, not a waiter
// ttl later.
TEST_F(RedisFairAsync, ACancelledHeadLeavesAtOnce) {
  const auto opts = fair_options();
  asio::io_context io;
  dlock::Lock<dlock::RedisBackend> holder(redis(), "head", opts);
  holder.lock();
  dlock::Lock<dlock::RedisBackend> first(redis(), "head", opts), second(redis(), "head", opts);
  std::stop_source stop;
  boost::system::error_code first_ec;
  bool first_done = false, second_got = false;
  Clock::time_point got_at{};
  first.async_acquire(stop.get_token(), asio::bind_executor(io, [&](boost::system::error_code ec, auto) {
                        first_ec = ec;
                        first_done = true;
                      }));
  run_until(io, [&] { return queued("head") == 1; });
  second.async_try_lock_for(5s, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) {
                              EXPECT_FALSE(ec) << ec.message();
                              second_got = ok;
                              got_at = Clock::now();
                            }));
  run_until(io, [&] { return queued("head") == 2; });
  ASSERT_EQ(queued("head"), 2);
  stop.request_stop();
  run_until(io, [&] { return first_done; });
  EXPECT_TRUE(dlock::to_std(first_ec) == dlock::errc::cancelled) << first_ec.message();
  // Well within its waiter ttl (1 s): the leave is one script call, started as the acquire ended.
  run_until(
      io, [&] { return queued("head") == 1; }, 200ms);
  EXPECT_EQ(queued("head"), 1) << "the cancelled head kept its place";
  const auto released = Clock::now();
  holder.unlock();
  run_until(io, [&] { return second_got; });
  ASSERT_TRUE(second_got);
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(got_at - released);
  std::printf("granted %lld ms after the release\n", static_cast<long long>(after.count()));
  EXPECT_LT(after, 300ms);  // woken by the release naming it, not by its 100 ms renewals nor a lapsed place
  second.unlock();
}

}  // namespace
