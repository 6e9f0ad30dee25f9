// RedisBackend's AsyncBackend operations on a real server (issue 13): 200
// coroutines on one io_context thread contend for 4 locks without blocking it,
// cancellation at random points leaves no lock held, a server stopped
// mid-wait gives errc::connection at the deadline, and a waiter with a long
// backoff is woken by the release's PUBLISH (AsyncNotifiesRelease).
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>

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

// The waiter's backoff is 30 s: only the release's PUBLISH can end its wait in time.
TEST_F(RedisAsync, AWaiterWithALongBackoffIsWokenByTheRelease) {
  asio::io_context io;
  Lock<RedisBackend> holder(redis(), "woken", LockOptions{.ttl = 10s});
  ASSERT_TRUE(holder.try_lock());
  Lock<RedisBackend> waiter(
      redis(), "woken",
      LockOptions{.ttl = 10s, .retry = {.initial_delay = 30s, .max_delay = 30s, .jitter = dlock::Jitter::none}});
  bool acquired = false;
  Clock::time_point got{};
  waiter.async_try_lock_for(20s, asio::bind_executor(io, [&](boost::system::error_code ec, bool ok) {
                              EXPECT_FALSE(ec) << ec.message();
                              acquired = ok;
                              got = Clock::now();
                            }));
  asio::steady_timer release(io, 300ms);
  Clock::time_point released{};
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

TEST_F(RedisAsync, ExtendAndReleaseCompleteOnTheExecutor) {
  asio::io_context io;
  Lock<RedisBackend> lock(redis(), "ext", LockOptions{.ttl = 2s});
  boost::system::error_code extend_ec, release_ec;
  dlock::ReleaseResult released = dlock::ReleaseResult::not_held;
  ASSERT_TRUE(lock.try_lock());
  lock.async_extend(
      20s, asio::bind_executor(io, [&](boost::system::error_code ec) {
        extend_ec = ec;
        lock.async_release(asio::bind_executor(io, [&](boost::system::error_code e, dlock::ReleaseResult r) {
          release_ec = e;
          released = r;
        }));
      }));
  io.run_for(3s);
  EXPECT_FALSE(extend_ec) << extend_ec.message();
  EXPECT_FALSE(release_ec) << release_ec.message();
  EXPECT_EQ(released, dlock::ReleaseResult::released);
  dlock::test::expect_free(redis(), "ext");
}

}  // namespace
