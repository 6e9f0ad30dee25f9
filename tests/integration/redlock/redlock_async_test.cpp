// RedlockBackend's AsyncBackend operations on three real servers (issue 13):
// 200 coroutines on one io_context thread contend for 4 locks without
// blocking it (all nodes asked at once, each asynchronously), cancellation at
// random points leaves no lock held on any node, a majority of nodes stopped
// mid-wait gives errc::connection at the deadline, and a release's PUBLISH
// wakes a waiter with a long backoff.
#include <dlock/dlock.hpp>
#include <dlock/detail/redis_client.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <thread>

#include "redlock/redlock_test_support.hpp"
#include "support/async_checks.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using dlock::Lock;
using dlock::LockOptions;
using dlock::RedlockBackend;
using dlock::RedlockOptions;
using dlock::test::RedlockCluster;
using Clock = std::chrono::steady_clock;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(3));

class RedlockAsync : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(cluster().size(), 3u) << "the cluster did not start";
    cluster().heal();
    prefix_ = dlock::test::test_key_prefix();
    RedlockOptions o;
    for (std::size_t i = 0; i < cluster().size(); ++i) o.nodes.push_back(cluster().server(i).options());
    o.key_prefix = prefix_;
    // 200 coroutines' requests pipelined on a loaded 2-core machine: a round may
    // take longer than the 50 ms default, and a release that misses it fails.
    o.node_timeout = 1s;
    backend_ = std::make_unique<RedlockBackend>(o);
  }
  void TearDown() override { cluster().heal(); }
  static RedlockCluster& cluster() { return *RedlockCluster::instance(); }
  RedlockBackend& redlock() { return *backend_; }

  std::string prefix_;
  std::unique_ptr<RedlockBackend> backend_;
};

TEST_F(RedlockAsync, TwoHundredCoroutinesOnOneThreadContendForFourLocks) {
  // The loop is busier than on Redis (every attempt is three requests, and a
  // release published by three nodes wakes its 50 waiters up to three times):
  // measured 30-100 ms of lag on the loaded 2-core machine, from a busy loop
  // (fewer ticks), not a blocked one.
  dlock::test::expect_coroutines_exclude_each_other(
      redlock(), "job", 200, 5, 4, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}},
      3 * dlock::test::async_lag_bound);
}

TEST_F(RedlockAsync, CancellationAtRandomPointsLeavesNoLockOnTheServers) {
  dlock::test::expect_cancellation_leaves_nothing(redlock(), "cancel", 60, 11);
}

TEST_F(RedlockAsync, AWaiterWithALongBackoffIsWokenByTheRelease) {
  dlock::test::expect_release_wakes_a_long_backoff_waiter(redlock(), "woken");
}

TEST_F(RedlockAsync, ExtendAndReleaseCompleteOnTheExecutor) {
  dlock::test::expect_extend_and_release_complete(redlock(), "ext");
}

// Two of the three nodes stopped: no quorum can answer.
TEST_F(RedlockAsync, AMajorityStoppedMidWaitGivesAConnectionErrorAtTheDeadline) {
  dlock::test::expect_stopped_server_gives_connection_error(redlock(), "stopped", [&] {
    cluster().server(0).stop();
    cluster().server(1).stop();
  });
}

}  // namespace

namespace {

// One release publishes on every node that held the lock (three here): an
// asynchronous waiter is woken once by it, not once per node (the copies that
// come in while the wake-up settles belong to it, as in the blocking wait's
// spread; RedlockBackend::Subscription::on_release). The 300 ms with no
// second wake-up is the window the other copies arrive in on loopback.
TEST_F(RedlockAsync, OneReleaseWakesAnAsynchronousWaiterOnce) {
  auto acked = redlock().subscribe_release("once");  // every node acknowledged: no SUBSCRIBE left to wake on
  ASSERT_EQ(acked.acknowledged(), 3u);
  auto sub = redlock().subscribe_release_nowait("once");
  std::atomic<int> wakes{0};
  const auto arm = [&] { sub.on_release([&] { ++wakes; }); };
  arm();
  Lock<RedlockBackend> holder(redlock(), "once");
  ASSERT_TRUE(holder.try_lock());
  EXPECT_EQ(wakes, 0);
  holder.unlock();  // published on the three nodes
  const auto until = Clock::now() + 5s;
  while (wakes == 0 && Clock::now() < until) std::this_thread::sleep_for(1ms);  // polling the count
  ASSERT_EQ(wakes, 1);
  arm();                               // as the acquire does after its attempt
  std::this_thread::sleep_for(300ms);  // the window the other nodes' copies arrive in
  EXPECT_EQ(wakes, 1) << "one release woke the waiter more than once";
  // The next release wakes it again.
  ASSERT_TRUE(holder.try_lock());
  holder.unlock();
  const auto until2 = Clock::now() + 5s;
  while (wakes == 1 && Clock::now() < until2) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(wakes, 2);
}

// As RedisAsyncServer.DestroyingTheIoContextAndTheBackendWithRequestsInFlightIsSafe,
// on three nodes: the io_context, then the backend, destroyed while every
// node holds the rounds' replies (CLIENT PAUSE, whose end is waited for):
// no handler runs, and the operations are destroyed with their context (not
// later on the I/O thread, after their Lock objects: TSan, ASan).
TEST_F(RedlockAsync, DestroyingTheIoContextAndTheBackendWithRoundsInFlightIsSafe) {
  std::atomic<bool> destroyed{false};
  std::atomic<int> ran{0}, ran_after{0};
  const auto quiet = std::make_shared<dlock::test::QuietObserver>();
  const LockOptions o{.ttl = 10s, .retry = {.initial_delay = 5ms, .max_delay = 20ms}, .observer = quiet};
  std::vector<std::unique_ptr<dlock::detail::RedisClient>> admin;
  for (std::size_t i = 0; i < cluster().size(); ++i)
    admin.push_back(std::make_unique<dlock::detail::RedisClient>(cluster().server(i).options()));
  Lock<RedlockBackend> holder(redlock(), "held", o);
  {
    std::vector<std::unique_ptr<Lock<RedlockBackend>>> locks;  // outlive the io_context (docs/async.md)
    asio::io_context io;
    Lock<RedlockBackend> warm(redlock(), "warm", o);
    std::optional<bool> warmed;
    warm.async_try_lock_for(1s, asio::bind_executor(io, [&](boost::system::error_code, bool ok) { warmed = ok; }));
    io.run_for(2s);
    ASSERT_TRUE(warmed && *warmed);
    io.restart();
    ASSERT_TRUE(holder.try_lock());
    for (auto& a : admin) ASSERT_EQ(a->command({"CLIENT", "PAUSE", "600", "ALL"}).str, "OK");
    for (int i = 0; i < 20; ++i) {
      // Free names (a round in flight) and the held one (a waiter, subscribed).
      locks.push_back(
          std::make_unique<Lock<RedlockBackend>>(redlock(), i % 4 == 0 ? "held" : "f" + std::to_string(i), o));
      locks.back()->async_try_lock_for(5s, asio::bind_executor(io, [&](boost::system::error_code, bool) {
                                         ++ran;
                                         if (destroyed) ++ran_after;
                                       }));
    }
    io.run_for(100ms);  // the rounds are written; the paused nodes hold their replies
    destroyed = true;
  }
  holder.unlock();
  backend_.reset();
  for (auto& a : admin) EXPECT_EQ(a->command({"PING"}).str, "PONG");  // after the pause
  for (auto& a : admin) EXPECT_EQ(a->command({"PING"}).str, "PONG");
  EXPECT_EQ(ran_after, 0) << "a handler ran after its io_context was destroyed";
  EXPECT_EQ(ran, 0) << "the paused nodes answered before the io_context was destroyed: nothing was in flight";
}

}  // namespace
