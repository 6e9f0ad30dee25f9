// RedisBackend's AsyncBackend operations on a real server (issue 13): 200
// coroutines on one io_context thread contend for 4 locks without blocking it,
// cancellation at random points leaves no lock held, a server stopped
// mid-wait gives errc::connection at the deadline, and a waiter with a long
// backoff is woken by the release's PUBLISH (AsyncNotifiesRelease).
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <utility>
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
