// RedlockBackend's AsyncBackend operations on three real servers (issue 13):
// 200 coroutines on one io_context thread contend for 4 locks without
// blocking it (all nodes asked at once, each asynchronously), cancellation at
// random points leaves no lock held on any node, a majority of nodes stopped
// mid-wait gives errc::connection at the deadline, and a release's PUBLISH
// wakes a waiter with a long backoff.
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>

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
    backend_ = std::make_unique<RedlockBackend>(o);
  }
  void TearDown() override { cluster().heal(); }
  static RedlockCluster& cluster() { return *RedlockCluster::instance(); }
  RedlockBackend& redlock() { return *backend_; }

  std::string prefix_;
  std::unique_ptr<RedlockBackend> backend_;
};

TEST_F(RedlockAsync, TwoHundredCoroutinesOnOneThreadContendForFourLocks) {
  dlock::test::expect_coroutines_exclude_each_other(
      redlock(), "job", 200, 5, 4, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
}

TEST_F(RedlockAsync, CancellationAtRandomPointsLeavesNoLockOnTheServers) {
  dlock::test::expect_cancellation_leaves_nothing(redlock(), "cancel", 60, 11);
}

TEST_F(RedlockAsync, AWaiterWithALongBackoffIsWokenByTheRelease) {
  asio::io_context io;
  Lock<RedlockBackend> holder(redlock(), "woken", LockOptions{.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  Lock<RedlockBackend> waiter(
      redlock(), "woken",
      LockOptions{.ttl = 10s, .retry = {.initial_delay = 30s, .max_delay = 30s, .jitter = dlock::Jitter::none}});
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

TEST_F(RedlockAsync, ExtendAndReleaseCompleteOnTheExecutor) {
  asio::io_context io;
  Lock<RedlockBackend> lock(redlock(), "ext", LockOptions{.ttl = 2s});
  boost::system::error_code extend_ec, release_ec;
  dlock::ReleaseResult released = dlock::ReleaseResult::not_held;
  ASSERT_TRUE(lock.try_lock());
  const auto before = lock.valid_until();
  lock.async_extend(
      20s, asio::bind_executor(io, [&](boost::system::error_code ec) {
        extend_ec = ec;
        EXPECT_GT(lock.valid_until(), before + 10s);
        lock.async_release(asio::bind_executor(io, [&](boost::system::error_code e, dlock::ReleaseResult r) {
          release_ec = e;
          released = r;
        }));
      }));
  io.run_for(3s);
  EXPECT_FALSE(extend_ec) << extend_ec.message();
  EXPECT_FALSE(release_ec) << release_ec.message();
  EXPECT_EQ(released, dlock::ReleaseResult::released);
  dlock::test::expect_free(redlock(), "ext");
}

// Two of the three nodes stopped: no quorum can answer.
TEST_F(RedlockAsync, AMajorityStoppedMidWaitGivesAConnectionErrorAtTheDeadline) {
  dlock::test::expect_stopped_server_gives_connection_error(redlock(), "stopped", [&] {
    cluster().server(0).stop();
    cluster().server(1).stop();
  });
}

}  // namespace
