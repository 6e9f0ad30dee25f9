// RedisBackend's AsyncBackend operations on a real server (issue 13): 200
// coroutines on one io_context thread contend for 4 locks without blocking it,
// cancellation at random points leaves no lock held, a server stopped
// mid-wait gives errc::connection at the deadline, and a waiter with a long
// backoff is woken by the release's PUBLISH (AsyncNotifiesRelease).
#include <dlock/dlock.hpp>
#include <dlock/election.hpp>
#include <dlock/redis.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "redis/redis_test_support.hpp"
#include "support/async_checks.hpp"
#include "support/redis_server.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using dlock::Lock;
using dlock::LockOptions;
using dlock::RedisBackend;
using Clock = std::chrono::steady_clock;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

class RedisAsync : public dlock::test::RedisTest {};

TEST_F(RedisAsync, TwoHundredCoroutinesOnOneThreadContendForFourLocks) {
  dlock::test::expect_coroutines_exclude_each_other(
      redis(), "job", 200, 5, 4, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
}

TEST_F(RedisAsync, CancellationAtRandomPointsLeavesNoLockOnTheServer) {
  dlock::test::expect_cancellation_leaves_nothing(redis(), "cancel", 60, 7);
}

TEST(RedisAsyncServer, AServerStoppedMidWaitGivesAConnectionErrorAtTheDeadline) {
  dlock::test::RedisServer server;
  RedisBackend redis(server.options());
  dlock::test::expect_stopped_server_gives_connection_error(redis, "stopped", [&] { server.stop(); });
}

TEST_F(RedisAsync, AWaiterWithALongBackoffIsWokenByTheRelease) {
  dlock::test::expect_release_wakes_a_long_backoff_waiter(redis(), "woken");
}

TEST_F(RedisAsync, ExtendAndReleaseCompleteOnTheExecutor) {
  dlock::test::expect_extend_and_release_complete(redis(), "ext");
}

}  // namespace

namespace {

// During an outage try_lock_for throws ConnectionError at its deadline (it
// returns false only on contention): async_try_lock_for completes with
// errc::connection at the same deadline, not (no error, false).
TEST(RedisAsyncServer, TryLockForDuringAnOutageEndsAsTheBlockingFormDoes) {
  dlock::test::RedisServer server;
  RedisBackend redis(server.options());
  server.stop();
  const LockOptions o{.ttl = 10s, .retry = {.initial_delay = 5ms, .max_delay = 20ms}};
  Lock<RedisBackend> blocking(redis, "outage", o);
  auto start = Clock::now();
  EXPECT_THROW((void)blocking.try_lock_for(300ms), dlock::ConnectionError);
  EXPECT_GE(Clock::now() - start, 300ms);
  asio::io_context io;
  Lock<RedisBackend> async(redis, "outage", o);
  std::optional<std::pair<boost::system::error_code, bool>> got;
  start = Clock::now();
  async.async_try_lock_for(
      300ms, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) { got.emplace(ec, ok); }));
  io.run_for(3s);
  const auto took = Clock::now() - start;
  ASSERT_TRUE(got);
  EXPECT_TRUE(dlock::to_std(got->first) == dlock::errc::connection) << got->first.message();
  EXPECT_FALSE(got->second);
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 1s);
}

}  // namespace

namespace {

bool eventually_true(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(2ms);  // polling a condition, not waiting for it to happen
  }
  return true;
}

// An io_context destroyed, and then the backend, while asynchronous requests
// are in flight (written to a server that does not answer yet: CLIENT PAUSE):
// no handler runs after the context is gone, nothing crashes, and under ASan
// nothing leaks when the replies come in later (the transport completes them
// into the dropped completions; detail/async_work.hpp). The pause is the
// server's, and its end is waited for as the point of the test.
TEST(RedisAsyncServer, DestroyingTheIoContextAndTheBackendWithRequestsInFlightIsSafe) {
  dlock::test::RedisServer server;
  RedisBackend admin(server.options());
  auto redis = std::make_unique<RedisBackend>(server.options());
  const auto quiet = std::make_shared<dlock::test::QuietObserver>();
  const LockOptions o{.ttl = 10s, .retry = {.initial_delay = 5ms, .max_delay = 20ms}, .observer = quiet};
  Lock<RedisBackend> holder(admin, "held", o);
  ASSERT_TRUE(holder.try_lock());
  std::atomic<bool> destroyed{false};
  std::atomic<int> ran{0}, ran_after{0};
  const auto count = [&] {
    ++ran;
    if (destroyed) ++ran_after;
  };
  {
    std::vector<std::unique_ptr<Lock<RedisBackend>>> locks;  // outlive the io_context (docs/async.md)
    asio::io_context io;
    // One round trip first: the shared links are up, so the requests below are written, not queued.
    Lock<RedisBackend> warm(*redis, "warm", o);
    std::optional<bool> warmed;
    warm.async_try_lock_for(1s, asio::bind_executor(io, [&](boost::system::error_code, bool ok) { warmed = ok; }));
    io.run_for(2s);
    ASSERT_TRUE(warmed && *warmed);
    io.restart();
    ASSERT_EQ(admin.node().command({"CLIENT", "PAUSE", "600", "ALL"}).str, "OK");
    for (int i = 0; i < 40; ++i) {
      // Free names (an attempt in flight) and the held one (a waiter, subscribed).
      locks.push_back(std::make_unique<Lock<RedisBackend>>(*redis, i % 4 == 0 ? "held" : "f" + std::to_string(i), o));
      locks.back()->async_try_lock_for(5s, asio::bind_executor(io, [&](boost::system::error_code, bool) { count(); }));
    }
    io.run_for(100ms);  // the attempts are written; the paused server holds their replies
    destroyed = true;
  }
  redis.reset();  // the backend too, requests still in flight
  // The pause ends; the replies come in and are dropped. A PING answered
  // after it, and an asynchronous round trip on the transport, put them behind us.
  EXPECT_EQ(admin.node().command({"PING"}).str, "PONG");
  asio::io_context later;
  Lock<RedisBackend> after(admin, "after", o);
  std::optional<bool> got;
  after.async_try_lock_for(2s, asio::bind_executor(later, [&](boost::system::error_code, bool ok) { got = ok; }));
  later.run_for(3s);
  EXPECT_TRUE(got && *got);
  EXPECT_EQ(ran_after, 0) << "a handler ran after its io_context was destroyed";
  EXPECT_EQ(ran, 0) << "the paused server answered before the io_context was destroyed: nothing was in flight";
  holder.unlock();
}

// As above, for the primitives' asynchronous acquires: a semaphore's
// permits, a read-write lock's reader and writer and a campaign, written to a
// server that does not answer yet (CLIENT PAUSE), then the io_context
// destroyed, then the primitives and the backend: no handler runs after the
// context is gone, nothing crashes, and (ASan, TSan) nothing leaks or races
// when the replies come in later. The pause's end is waited for.
TEST(RedisPrimitivesAsyncServer, DestroyingTheIoContextAndTheBackendWithPrimitiveRequestsInFlightIsSafe) {
  dlock::test::RedisServer server;
  RedisBackend admin(server.options());
  auto redis = std::make_unique<RedisBackend>(server.options());
  const LockOptions o{.ttl = 10s,
                      .retry = {.initial_delay = 5ms, .max_delay = 20ms},
                      .observer = std::make_shared<dlock::test::QuietObserver>()};
  std::atomic<bool> destroyed{false};
  std::atomic<int> ran{0}, ran_after{0};
  const auto count = [&](boost::system::error_code, auto&&...) {  // any completion's signature
    ++ran;
    if (destroyed) ++ran_after;
  };
  {
    // Outlive the io_context (docs/async.md): destroyed after it, below.
    dlock::Semaphore<RedisBackend> permits(*redis, "permits", 2, o);
    dlock::RwLock<RedisBackend> reader(*redis, "rw", o), exclusive(*redis, "rw-x", o), warm(*redis, "warm", o);
    dlock::Election<RedisBackend> election(*redis, "leader", "candidate-1", o);
    {
      asio::io_context io;
      // One round trip first: the shared links are up, so the requests below are written, not queued.
      std::optional<bool> warmed;
      warm.async_try_lock_for(1s, asio::bind_executor(io, [&](boost::system::error_code, auto guard) {
                                warmed = static_cast<bool>(guard);  // released (asynchronously) as it goes
                              }));
      io.run_for(2s);  // until the release is done too: no work left
      ASSERT_TRUE(warmed && *warmed);
      io.restart();
      ASSERT_EQ(admin.node().command({"CLIENT", "PAUSE", "600", "ALL"}).str, "OK");
      for (int i = 0; i < 3; ++i) permits.async_try_acquire_for(5s, asio::bind_executor(io, count));
      reader.async_try_lock_shared_for(5s, asio::bind_executor(io, count));
      exclusive.async_try_lock_for(5s, asio::bind_executor(io, count));
      election.async_try_campaign_for(5s, asio::bind_executor(io, count));
      io.run_for(100ms);  // the requests are written; the paused server holds their replies
      destroyed = true;
    }
  }
  redis.reset();  // the backend too, requests still in flight
  // The pause ends; the replies come in and are dropped. A PING answered after
  // it, and an asynchronous round trip on the transport, put them behind us.
  EXPECT_EQ(admin.node().command({"PING"}).str, "PONG");
  asio::io_context later;
  dlock::Semaphore<RedisBackend> after(admin, "after", 1, o);
  std::optional<bool> got;
  after.async_try_acquire_for(
      2s, asio::bind_executor(later, [&](boost::system::error_code, auto g) { got = static_cast<bool>(g); }));
  later.run_for(3s);
  EXPECT_TRUE(got && *got);
  EXPECT_EQ(ran_after, 0) << "a handler ran after its io_context was destroyed";
  EXPECT_EQ(ran, 0) << "the paused server answered before the io_context was destroyed: nothing was in flight";
}

// Fair mode's targeted waiter (woken only by a release naming it, or naming
// nobody) and an asynchronous waiter (on_release, any release) on one
// channel: a release naming the targeted waiter (what a fair release that
// hands the lock to it publishes) wakes both; one naming nobody wakes both.
// The targeted waiter blocks on another thread while the I/O thread wakes
// the asynchronous one (run under TSan in CI's sanitize label).
TEST_F(RedisAsync, AFairTargetedWaiterAndAnAsynchronousWaiterOnOneChannelBothWake) {
  const auto a = dlock::OwnerId::generate();
  auto targeted = redis().subscribe_release("mixed", a);   // acknowledged when it returns
  auto async = redis().subscribe_release_nowait("mixed");  // the channel is subscribed already: no SUBSCRIBE
  std::atomic<int> woken{0};
  const std::string channel = redis_keys_for("mixed").channel;
  for (const std::string& payload : {std::string(a.str()), std::string()}) {
    const int before = woken;
    async.on_release([&] { ++woken; });
    std::optional<bool> targeted_woke;
    std::thread t([&] { targeted_woke = targeted.wait_for(5s); });
    const auto n = redis().node().command({"PUBLISH", channel, payload});
    t.join();
    EXPECT_EQ(n.integer, 1) << "one pub/sub connection carries both";
    EXPECT_TRUE(targeted_woke && *targeted_woke) << "payload '" << payload << "'";
    EXPECT_TRUE(eventually_true([&] { return woken == before + 1; }, 5s)) << "payload '" << payload << "'";
  }
  // A release naming another waiter wakes the asynchronous one only.
  async.on_release([&] { ++woken; });
  const int before = woken;
  (void)redis().node().command({"PUBLISH", channel, std::string(dlock::OwnerId::generate().str())});
  EXPECT_TRUE(eventually_true([&] { return woken == before + 1; }, 5s));
  EXPECT_FALSE(targeted.wait_for(50ms));
}

}  // namespace
