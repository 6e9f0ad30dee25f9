// Lock's asynchronous API on MemoryBackend (an AsyncBackend): coroutines on
// one io_context thread contend without blocking it; cancellation leaves
// nothing held; callback, use_future and use_awaitable forms; AsyncGuard.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include "async_support.hpp"
#include "key_outlives_validity.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using dlock::EventType;
using dlock::Lock;
using dlock::LockOptions;
using dlock::MemoryBackend;
using dlock::test::RecordingObserver;
using Clock = std::chrono::steady_clock;

static_assert(dlock::AsyncBackend<MemoryBackend>);
static_assert(!dlock::AsyncBackend<dlock::test::FaultyBackend>);

namespace {

const LockOptions fast{.ttl = 10s, .retry = {.initial_delay = 200us, .max_delay = 2ms}};

}  // namespace

TEST(Async, TwoHundredCoroutinesOnOneThreadContendForFourLocks) {
  asio::io_context io;
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  constexpr int coroutines = 200, cycles = 5, names = 4;
  std::vector<std::unique_ptr<Lock<MemoryBackend>>> locks;
  for (int i = 0; i < coroutines; ++i) {
    // 50 waiters per name, woken by releases (AsyncNotifiesRelease) or their backoff.
    LockOptions o{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}, .observer = observer};
    locks.push_back(std::make_unique<Lock<MemoryBackend>>(mem, "job" + std::to_string(i % names), o));
  }
  const auto seen = dlock::test::contend(io, locks, names, cycles, /*guard_releases=*/true, 60s);
  ASSERT_EQ(seen.finished, coroutines);
  EXPECT_EQ(seen.failed, 0);
  EXPECT_TRUE(seen.tokens_increase);
  EXPECT_EQ(seen.total, coroutines * cycles);
  EXPECT_EQ(observer->count(EventType::acquired), static_cast<std::size_t>(coroutines * cycles));
  EXPECT_EQ(observer->count(EventType::released), static_cast<std::size_t>(coroutines * cycles));
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  constexpr auto lag_bound = 2s;  // everything runs many times slower
#else
  constexpr auto lag_bound = 100ms;
#endif
  EXPECT_LT(seen.worst_lag, lag_bound) << "the loop's thread was blocked";
  for (int n = 0; n < names; ++n) {
    Lock<MemoryBackend> probe(mem, "job" + std::to_string(n));
    EXPECT_TRUE(probe.try_lock()) << "left held: job" << n;
  }
}

TEST(Async, CancellationAtRandomPointsLeavesNothingHeld) {
  asio::io_context io;
  MemoryBackend mem;
  constexpr int tasks = 100;
  std::mt19937 rng(42);
  std::vector<std::unique_ptr<Lock<MemoryBackend>>> locks;
  std::vector<std::stop_source> stops(tasks);
  std::vector<std::unique_ptr<asio::steady_timer>> cancellers;
  int acquired = 0, cancelled = 0, other = 0, done = 0;
  for (int i = 0; i < tasks; ++i) {
    locks.push_back(std::make_unique<Lock<MemoryBackend>>(mem, "job" + std::to_string(i % 2), fast));
    asio::co_spawn(
        io,
        [&, i]() -> awaitable<void> {
          try {
            auto g = co_await locks[i]->async_acquire(stops[i].get_token(), use_awaitable);
            ++acquired;
            co_await asio::post(io, use_awaitable);
          } catch (const boost::system::system_error& e) {
            (dlock::to_std(e.code()) == dlock::errc::cancelled ? cancelled : other)++;
          }
          ++done;
        },
        asio::detached);
    cancellers.push_back(std::make_unique<asio::steady_timer>(io, std::chrono::microseconds(rng() % 5000)));
    cancellers.back()->async_wait([&, i](const boost::system::error_code&) { stops[i].request_stop(); });
  }
  const auto start = Clock::now();
  while (done < tasks && Clock::now() - start < 30s) io.run_one_for(100ms);
  io.run_for(20ms);
  std::printf("%d acquired, %d cancelled, %d other\n", acquired, cancelled, other);
  ASSERT_EQ(done, tasks);
  EXPECT_EQ(other, 0);
  EXPECT_GT(cancelled, 0);
  for (auto& l : locks) EXPECT_FALSE(l->owns_lock());
  Lock<MemoryBackend> a(mem, "job0"), b(mem, "job1");
  EXPECT_TRUE(a.try_lock());
  EXPECT_TRUE(b.try_lock());
}

TEST(Async, CallbackFormTimesOutAsFalseAndAcquiresAsTrue) {
  asio::io_context io;
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "job");
  holder.lock();
  Lock<MemoryBackend> lock(mem, "job", fast);
  std::optional<std::pair<boost::system::error_code, bool>> got;
  lock.async_try_lock_for(30ms,
                          asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) { got.emplace(ec, ok); }));
  EXPECT_FALSE(got);  // never inside the initiating call
  io.run();
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->first);
  EXPECT_FALSE(got->second);
  holder.unlock();
  got.reset();
  io.restart();
  lock.async_try_lock_until(
      Clock::now() + 1s, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) { got.emplace(ec, ok); }));
  io.run();
  ASSERT_TRUE(got);
  EXPECT_TRUE(got->second);
  EXPECT_TRUE(lock.owns_lock());
  std::optional<dlock::ReleaseResult> released;
  io.restart();
  lock.async_release(asio::bind_executor(io, [&](boost::system::error_code ec, dlock::ReleaseResult r) {
    EXPECT_FALSE(ec);
    released = r;
  }));
  io.run();
  EXPECT_EQ(released, dlock::ReleaseResult::released);
  EXPECT_FALSE(lock.owns_lock());
}

TEST(Async, FutureFormWithTheLoopOnAnotherThread) {
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  std::thread loop([&] { io.run(); });
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job", fast);
  // Boost 1.74's use_future has no executor of its own: co_spawn gives it the loop's.
  std::future<bool> f = asio::co_spawn(io, lock.async_try_lock_for(1s, use_awaitable), asio::use_future);
  EXPECT_TRUE(f.get());
  EXPECT_TRUE(lock.owns_lock());
  std::future<dlock::ReleaseResult> r = asio::co_spawn(io, lock.async_release(use_awaitable), asio::use_future);
  EXPECT_EQ(r.get(), dlock::ReleaseResult::released);
  // (A failure arrives as the future's exception; not exercised across threads
  // here: TSan cannot see libstdc++'s exception_ptr reference count.)
  work.reset();
  loop.join();
}

TEST(Async, AcquireTimeoutAndCancellationArriveAsErrorCodes) {
  asio::io_context io;
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "job");
  holder.lock();
  LockOptions o = fast;
  o.acquire_timeout = 20ms;
  Lock<MemoryBackend> lock(mem, "job", o);
  std::error_code timeout, cancelled;
  std::stop_source stop;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        try {
          auto g = co_await lock.async_acquire(use_awaitable);
        } catch (const boost::system::system_error& e) {
          timeout = dlock::to_std(e.code());
        }
        asio::steady_timer t(io, 5ms);
        t.async_wait([&](const boost::system::error_code&) { stop.request_stop(); });
        try {
          co_await lock.async_try_lock_for(1h, stop.get_token(), use_awaitable);
        } catch (const boost::system::system_error& e) {
          cancelled = dlock::to_std(e.code());
        }
      },
      asio::detached);
  const auto start = Clock::now();
  io.run();
  EXPECT_EQ(timeout, dlock::errc::timeout);
  EXPECT_EQ(cancelled, dlock::errc::cancelled);
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_FALSE(lock.owns_lock());
  EXPECT_TRUE(holder.owns_lock());
}

TEST(Async, GuardDestructionReleasesWithoutBlockingAndLossIsSignalled) {
  asio::io_context io;
  MemoryBackend mem;
  Lock<MemoryBackend> lock(mem, "job", fast);
  bool lost_called = false;
  std::error_code extend_error;
  boost::system::error_code extend_ok;
  std::stop_token st;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        {
          auto g = co_await lock.async_acquire(use_awaitable);
          EXPECT_TRUE(g.owns_lock());
          co_await g.async_extend(5s, asio::redirect_error(use_awaitable, extend_ok));
        }  // the destructor started the release
        EXPECT_FALSE(lock.owns_lock());
        auto g = co_await lock.async_acquire(use_awaitable);
        st = g.stop_token();
        g.on_lost([&](const dlock::LostEvent&) { lost_called = true; });
        (void)mem.force_release("job");
        boost::system::error_code ec;
        co_await g.async_extend(5s, asio::redirect_error(use_awaitable, ec));
        extend_error = dlock::to_std(ec);
      },
      asio::detached);
  io.run();
  EXPECT_FALSE(extend_ok);
  EXPECT_EQ(extend_error, dlock::errc::lock_lost);
  EXPECT_TRUE(lost_called);
  EXPECT_TRUE(st.stop_requested());
}

TEST(Async, AnAcquirePendingWhenTheLoopIsDestroyedLetsTheLockObjectGo) {
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "job");
  holder.lock();
  Lock<MemoryBackend> lock(mem, "job", fast);
  bool called = false;
  {
    asio::io_context io;
    lock.async_try_lock_for(1h, asio::bind_executor(io, [&](boost::system::error_code, bool) { called = true; }));
    io.run_for(5ms);
  }  // destroyed with the acquire waiting
  EXPECT_FALSE(called);
  holder.unlock();
  EXPECT_TRUE(lock.try_lock());  // its in-process gate was let go
}

TEST(Async, AThreadPoolLoopWithStopsFromAnotherThread) {
  // Four threads run the loop; stops are requested from a fifth. Each op's
  // steps run on its own strand (checked under TSan).
  asio::io_context io;
  MemoryBackend mem;
  constexpr int tasks = 100;
  std::vector<std::unique_ptr<Lock<MemoryBackend>>> locks;
  std::vector<std::stop_source> stops(tasks);
  long counter = 0;
  std::atomic<int> done{0}, acquired{0};
  for (int i = 0; i < tasks; ++i) {
    locks.push_back(std::make_unique<Lock<MemoryBackend>>(mem, "job", fast));
    asio::co_spawn(
        io,
        [&, i]() -> awaitable<void> {
          try {
            auto g = co_await locks[i]->async_acquire(stops[i].get_token(), use_awaitable);
            const long seen = counter;  // the lock is the only protection
            co_await asio::post(io, use_awaitable);
            counter = seen + 1;
            ++acquired;
            co_await g.async_release(use_awaitable);
          } catch (const boost::system::system_error&) {
          }
          ++done;
        },
        asio::detached);
  }
  std::thread stopper([&] {
    std::mt19937 rng(7);
    for (int i = 0; i < tasks; i += 2) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));  // spreads the stops over the run
      stops[i].request_stop();
    }
  });
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) pool.emplace_back([&] { io.run(); });
  for (auto& t : pool) t.join();
  stopper.join();
  EXPECT_EQ(done.load(), tasks);
  EXPECT_EQ(counter, acquired.load());
  EXPECT_GE(acquired.load(), tasks / 2);
  Lock<MemoryBackend> probe(mem, "job");
  EXPECT_TRUE(probe.try_lock());
}

// As the blocking release: past its validity the end of the critical section
// ran unprotected, whatever the server still had.
TEST(Async, AReleaseAfterTheValidityEndedIsNotHeld) {
  dlock::ManualClock clock;
  dlock::test::KeyOutlivesValidityBackend backend(clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<dlock::test::KeyOutlivesValidityBackend> lock(backend, "job",
                                                     {.ttl = 1s, .observer = observer, .clock = &clock});
  asio::io_context io;
  auto cycle = [&](std::chrono::milliseconds held_for) {
    std::optional<dlock::ReleaseResult> released;
    io.restart();
    lock.async_acquire(asio::bind_executor(io, [&](boost::system::error_code ec, auto&&...) {
      ASSERT_FALSE(ec);
      clock.advance(held_for);
      lock.async_release(
          asio::bind_executor(io, [&](boost::system::error_code, dlock::ReleaseResult r) { released = r; }));
    }));
    io.run();
    return released;
  };
  EXPECT_EQ(cycle(999ms), dlock::ReleaseResult::released);  // within its validity
  EXPECT_EQ(cycle(1s), dlock::ReleaseResult::not_held);
  EXPECT_EQ(observer->count(EventType::released), 1u);
  EXPECT_EQ(observer->count(EventType::release_not_held), 1u);
}

// ---- an asynchronous wait ends on a release (AsyncNotifiesRelease) ----

static_assert(dlock::AsyncNotifiesRelease<MemoryBackend>);
static_assert(!dlock::AsyncNotifiesRelease<dlock::test::FaultyBackend>);

TEST(Async, AWaiterWithALongBackoffIsWokenByARelease) {
  asio::io_context io;
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "woken");
  ASSERT_TRUE(holder.try_lock());
  auto observer = std::make_shared<RecordingObserver>();
  // Every backoff wait lasts 30 s: only a release notification can end it sooner.
  const LockOptions slow{.ttl = 10s,
                         .retry = {.initial_delay = 30s, .max_delay = 30s, .jitter = dlock::Jitter::none},
                         .observer = observer};
  Lock<MemoryBackend> waiter(mem, "woken", slow);
  bool done = false;
  std::uint64_t token = 0;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto g = co_await waiter.async_acquire(use_awaitable);
        token = g.fencing_token();
        done = true;
        co_await g.async_release(use_awaitable);
      },
      asio::detached);
  // The waiter makes its two attempts (the second after subscribing), then waits.
  while (observer->count(EventType::attempt) < 2) io.run_one();
  io.poll();
  ASSERT_FALSE(done);
  const auto released_at = Clock::now();
  holder.unlock();
  while (!done && Clock::now() - released_at < 10s) io.run_one_for(100ms);
  const auto took = Clock::now() - released_at;
  ASSERT_TRUE(done) << "the release did not end the 30 s wait";
  EXPECT_LT(took, 2s);
  EXPECT_EQ(observer->count(EventType::attempt), 3u);  // no polling in between
  EXPECT_GT(token, 1u);
  std::printf("woken %lld us after the release\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::microseconds>(took).count()));
}

TEST(Async, AReleaseDuringAnAttemptIsNotLost) {
  // The holder releases between the waiter's attempt and its wait, many times
  // in a row: each time, the wait that follows ends at once.
  asio::io_context io;
  MemoryBackend mem;
  const LockOptions slow{.ttl = 10s, .retry = {.initial_delay = 30s, .max_delay = 30s, .jitter = dlock::Jitter::none}};
  constexpr int rounds = 50;
  int acquired = 0;
  Lock<MemoryBackend> holder(mem, "race");
  Lock<MemoryBackend> waiter(mem, "race", slow);
  std::thread releaser;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        for (int i = 0; i < rounds; ++i) {
          holder.lock();
          // Released from another thread while the waiter runs its attempts.
          releaser = std::thread([&] { holder.unlock(); });
          auto g = co_await waiter.async_acquire(use_awaitable);
          releaser.join();
          ++acquired;
          co_await g.async_release(use_awaitable);
        }
      },
      asio::detached);
  const auto start = Clock::now();
  while (acquired < rounds && Clock::now() - start < 20s) io.run_one_for(100ms);
  if (releaser.joinable()) releaser.join();
  EXPECT_EQ(acquired, rounds) << "a release was lost: a 30 s backoff wait was not ended";
}

// ---- issue 16 item 5 and issue 13: the blocking acquire's checks in the asynchronous forms ----

// An asynchronous acquire started by the thread that holds the Lock object
// through a blocking acquire would wait for itself: it completes at once with
// errc::deadlock, the backend untouched. Another thread's waits as before.
TEST(Async, AnAcquireByTheThreadHoldingTheLockFailsAtOnceWithDeadlock) {
  asio::io_context io;
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  LockOptions o = fast;
  o.observer = observer;
  o.acquire_timeout = 300ms;  // bounds the wait if it is not detected
  Lock<MemoryBackend> lock(mem, "job", o);
  lock.lock();
  const std::size_t attempts = observer->count(EventType::attempt);
  std::optional<boost::system::error_code> acquire_ec, try_ec;
  lock.async_acquire(
      asio::bind_executor(io, [&](boost::system::error_code ec, dlock::AsyncGuard<Lock<MemoryBackend>> g) {
        acquire_ec = ec;
        EXPECT_FALSE(g.owns_lock());
      }));
  lock.async_try_lock_for(300ms, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) {
                            try_ec = ec;
                            EXPECT_FALSE(ok);
                          }));
  const auto start = Clock::now();
  io.run();
  EXPECT_LT(Clock::now() - start, 200ms) << "a form waited for itself";
  ASSERT_TRUE(acquire_ec && try_ec);
  EXPECT_TRUE(dlock::to_std(*acquire_ec) == dlock::errc::deadlock) << acquire_ec->message();
  EXPECT_TRUE(dlock::to_std(*try_ec) == dlock::errc::deadlock) << try_ec->message();
  EXPECT_EQ(observer->count(EventType::attempt), attempts) << "the backend was contacted";
  EXPECT_TRUE(lock.owns_lock());
  // Started on another thread: contention with the holder, not re-entry.
  std::optional<std::pair<boost::system::error_code, bool>> other;
  io.restart();
  std::thread([&] {
    lock.async_try_lock_for(
        30ms, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) { other.emplace(ec, ok); }));
  }).join();
  io.run();
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->first) << other->first.message();
  EXPECT_FALSE(other->second);
  lock.unlock();
}

// LockOptions::lock_order checks asynchronous acquires as blocking ones: an
// inversion of this thread's holdings is reported before the acquire.
TEST(Async, ALockOrderInversionIsReportedForAnAsynchronousAcquire) {
  asio::io_context io;
  MemoryBackend mem;
  dlock::LockOrderChecker checker(dlock::LockOrderChecker::Action::report);
  auto observer = std::make_shared<RecordingObserver>();
  LockOptions o = fast;
  o.observer = observer;
  o.lock_order = &checker;
  Lock<MemoryBackend> a(mem, "accounts:1", o), b(mem, "billing:1", o);
  b.lock();
  a.lock();  // billing held while accounts is acquired
  a.unlock();
  b.unlock();
  a.lock();
  bool done = false;
  b.async_try_lock_for(1s, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) {
                         EXPECT_FALSE(ec) << ec.message();
                         EXPECT_TRUE(ok);
                         done = true;
                       }));
  io.run();
  EXPECT_TRUE(done);
  EXPECT_EQ(observer->count(EventType::order_violation), 1u);
  b.unlock();
  a.unlock();
}
