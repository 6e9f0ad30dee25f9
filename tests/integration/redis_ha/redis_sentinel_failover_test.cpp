// RedisBackend through Redis Sentinel, end to end (issue 14 item 2): one
// primary, two replicas, three sentinels (down-after-milliseconds 500) from
// tests/integration/support/redis_ha.hpp; the backend is given only the
// redis+sentinel:// URI. Four threads lock while the primary is SIGKILLed:
// acquires resume on the promoted replica, nothing is thrown, the
// +switch-master announcement reached the backend, a fenced resource never
// receives a token at or below one it saw, and the release subscriber
// follows the primary (a waiter with a long backoff is woken by a release).
// The same traffic while the primary is paused (SIGSTOP) past
// down-after-milliseconds, failed over, and then resumed and demoted.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::test::eventually;
using dlock::test::LockTraffic;
using dlock::test::Quiet;
using dlock::test::RespConn;
using dlock::test::sentinel_uri;
using dlock::test::sentinels_ready;
using dlock::test::SentinelSetup;

namespace {

dlock::RedisOptions base_options() {
  dlock::RedisOptions base;
  base.key_prefix = "sentinel:";
  base.connect_timeout = 500ms;
  base.command_timeout = 1s;
  return base;
}

TEST(RedisSentinelBackend, LockingResumesOnThePromotedReplicaAfterSigkillWithFencingTokensThatOnlyIncrease) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(sentinels_ready(setup));
  RedisBackend redis(sentinel_uri(setup), base_options());
  ASSERT_TRUE(redis.options().sentinel);
  const int old_primary = setup.primary().port();
  const auto quiet = std::make_shared<Quiet>();
  LockTraffic traffic(redis);
  const auto progressed = [&](int by, std::chrono::seconds within) { return traffic.progressed(by, within); };

  ASSERT_TRUE(progressed(100, 15s)) << traffic.error();
  const auto killed = std::chrono::steady_clock::now();
  setup.primary().kill();
  const bool resumed = progressed(1, 30s);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  const bool more = resumed && progressed(100, 15s);
  traffic.stop();
  EXPECT_TRUE(traffic.error().empty()) << traffic.error();
  ASSERT_TRUE(resumed && more) << "locking did not resume after the primary was killed";
  EXPECT_EQ(traffic.violations(), 0) << "a fenced resource saw a token at or below one it had seen";
  EXPECT_TRUE(eventually([&] { return redis.node().failovers_seen() >= 1; }, 5s)) << "no +switch-master reached it";
  const auto now_at = redis.node().current_server();
  ASSERT_TRUE(now_at);
  EXPECT_NE(now_at->port, old_primary);
  std::printf(
      "sentinel: the first lock cycle completed %lld ms after SIGKILL of the primary (down-after-milliseconds 500)\n",
      static_cast<long long>(took.count()));

  // The release subscriber follows the primary: a waiter whose backoff is
  // long is woken by the release, not by its next attempt.
  Lock<RedisBackend> holder(redis, "wake", {.ttl = 10s, .observer = quiet});
  ASSERT_TRUE(eventually([&] { return holder.try_lock(); }, 5s));
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    Lock<RedisBackend> w(redis, "wake",
                         {.ttl = 10s,
                          .retry = {.initial_delay = 4s, .max_delay = 4s, .jitter = dlock::Jitter::none},
                          .acquire_timeout = 15s,
                          .observer = quiet});
    try {
      w.lock();
      got = true;
    } catch (const std::exception&) {  // got stays false
    }
  });
  // The waiter found the lock held and subscribed: on the new primary (the
  // subscriber's connection to the killed one was lost; it reconnects to
  // the primary the pool found, within its one-second reconnect backoff).
  // The primary is asked for anew each time: under load the sentinels may
  // judge the promoted replica down too and fail over once more, and the
  // subscriber follows to the third server (the likely cause of one CI
  // failure, when the test kept asking the second; seen once more in about
  // 260 runs under load, before this; a failure now lists every server's count).
  const auto numsub = [](int port) {
    try {
      const auto n = RespConn(port).command({"PUBSUB", "NUMSUB", "sentinel:{wake}:released"});
      return n.elements.size() == 2 ? n.elements[1].integer : -1LL;
    } catch (const std::exception&) {
      return -2LL;  // down
    }
  };
  const auto primary_port = [&] {
    const auto at = redis.node().current_server();
    return at ? at->port : 0;
  };
  EXPECT_TRUE(eventually([&] { return numsub(primary_port()) == 1; }, 10s))
      << "the release subscriber did not subscribe on the new primary; " << [&] {
           std::string s = "the client's primary: " + std::to_string(primary_port()) + " (first " +
                           std::to_string(now_at->port) + "), +switch-master seen " +
                           std::to_string(redis.node().failovers_seen()) + "; subscribers:";
           for (std::size_t i = 0; i < 2; ++i) {
             const int port = setup.replica(i).port();
             s += " " + std::to_string(port) + ": " + std::to_string(numsub(port)) + ";";
           }
           return s;
         }();
  const auto released = std::chrono::steady_clock::now();
  (void)holder.release();
  waiter.join();
  const auto woke = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - released);
  EXPECT_TRUE(got);
  EXPECT_LT(woke, 2s) << "the waiter was not woken by the release "
                         "(its backoff is 4 s)";
}

// A failover whose old primary keeps running (SENTINEL FAILOVER here; under
// load, sentinels that judge a busy new primary down fail over again while it
// runs): the release subscriber's connection to the old primary is not lost,
// so it must move to the new primary when the client learns of the switch.
// Before: it stayed on the old one (no subscription on the new primary for
// 10 s; after a second failover an asynchronous waiter heard no release).
TEST(RedisSentinelBackend, TheReleaseSubscriberMovesToTheNewPrimaryWhenTheOldOneStillRuns) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(sentinels_ready(setup));
  RedisBackend redis(sentinel_uri(setup), base_options());
  const int old_primary = setup.primary().port();
  const auto quiet = std::make_shared<Quiet>();
  const auto numsub = [](int port) {
    const auto n = RespConn(port).command({"PUBSUB", "NUMSUB", "sentinel:{moving}:released"});
    return n.elements.size() == 2 ? n.elements[1].integer : -1;
  };
  Lock<RedisBackend> holder(redis, "moving", {.ttl = 30s, .observer = quiet});
  ASSERT_TRUE(holder.try_lock());
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    Lock<RedisBackend> w(redis, "moving",
                         {.ttl = 10s,
                          .retry = {.initial_delay = 8s, .max_delay = 8s, .jitter = dlock::Jitter::none},
                          .acquire_timeout = 25s,
                          .observer = quiet});
    try {
      w.lock();
      got = true;
    } catch (const std::exception&) {  // got stays false
    }
  });
  ASSERT_TRUE(eventually([&] { return numsub(old_primary) == 1; }, 5s)) << "the waiter did not subscribe";
  const auto answer =
      RespConn(setup.sentinel(0).port()).command({"SENTINEL", "FAILOVER", std::string(SentinelSetup::master_name)});
  ASSERT_EQ(answer.str, "OK") << "SENTINEL FAILOVER refused";
  // The client learns of the switch (+switch-master, or its next discovery).
  ASSERT_TRUE(eventually(
      [&] {
        const auto at = redis.node().current_server();
        return at && at->port != old_primary;
      },
      15s))
      << "the client did not learn of the failover";
  const int new_primary = redis.node().current_server()->port;
  EXPECT_TRUE(eventually([&] { return numsub(new_primary) == 1 && numsub(old_primary) == 0; }, 5s))
      << "the release subscriber stayed on the old primary: " << numsub(old_primary) << " there, "
      << numsub(new_primary) << " on the new one";
  // The holder's lock was replicated before the switch: its release on the
  // new primary wakes the waiter (whose backoff is 8 s).
  EXPECT_EQ(holder.release(), dlock::ReleaseResult::released);
  const auto released = std::chrono::steady_clock::now();
  waiter.join();
  EXPECT_TRUE(got);
  EXPECT_LT(std::chrono::steady_clock::now() - released, 4s) << "the waiter was not woken by the release";
}

// The primary paused (SIGSTOP) past down-after-milliseconds: the pooled
// requests to it time out (retried), the sentinels promote a replica, and
// +switch-master retires the old connections. When the old primary comes
// back it still believes it is the primary until the sentinels demote it:
// nothing of dlock's may reach it meanwhile.
// Before the epoch rule (docs/safety.md, "Sentinel: the primary of the
// highest configuration epoch") this failed about 1 run in 2 on a loaded
// machine with 1-2 tokens at or below one the resource had seen.
TEST(RedisSentinelBackend, APrimaryPausedPastDownAfterIsFailedOverAndItsReturnIsHarmless) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(sentinels_ready(setup));
  RedisBackend redis(sentinel_uri(setup), base_options());
  const int old_primary = setup.primary().port();
  LockTraffic traffic(redis);
  ASSERT_TRUE(traffic.progressed(100, 15s)) << traffic.error();
  const auto paused = std::chrono::steady_clock::now();
  setup.primary().pause();
  const bool failed_over = eventually([&] { return redis.node().failovers_seen() >= 1; }, 30s);
  const auto failed_over_at = std::chrono::steady_clock::now();
  const bool resumed = failed_over && traffic.progressed(50, 20s);
  setup.primary().resume();
  const auto resumed_at = std::chrono::steady_clock::now();
  const bool after_return = resumed && traffic.progressed(100, 15s);
  const bool demoted =
      eventually([&] { return dlock::test::info_field(old_primary, "replication", "role") == "slave"; }, 20s);
  const auto demoted_at = std::chrono::steady_clock::now();
  const bool after_demotion = after_return && traffic.progressed(50, 15s);
  std::printf(
      "sentinel pause: failed over %lld ms after SIGSTOP; old primary demoted %lld ms after SIGCONT\n",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(failed_over_at - paused).count()),
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(demoted_at - resumed_at).count()));
  traffic.stop();
  EXPECT_TRUE(traffic.error().empty()) << traffic.error();
  EXPECT_TRUE(failed_over) << "no +switch-master reached the backend";
  EXPECT_TRUE(resumed && after_return && after_demotion) << "locking did not go on through the pause";
  EXPECT_TRUE(demoted) << "the sentinels did not demote the old primary";
  EXPECT_EQ(traffic.violations(), 0) << "a fenced resource saw a token at or below one it had seen";
  const auto now_at = redis.node().current_server();
  ASSERT_TRUE(now_at);
  EXPECT_NE(now_at->port, old_primary);
}

}  // namespace
