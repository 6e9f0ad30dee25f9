// Failover-safe fencing tokens through Sentinel (issue 14, the case that
// broke the old rule): the sentinels promote a replica that lagged.
//
// One primary, two replicas, three sentinels (support/redis_ha.hpp). A
// RedisBackend given only the redis+sentinel:// URI issues tokens the
// replicas receive; then both replicas' links are cut (REPLICAOF a loopback
// socket that never answers: each keeps its data and receives nothing
// more), so whichever replica the sentinels promote lags; more tokens are
// issued on the primary alone, and the primary is SIGKILLed. The sentinels
// promote one of the lagging replicas (a replica whose link has been down
// for less than down-after-milliseconds x 10 is still eligible, and the
// sentinels leave a replica that changed primaries alone for
// failover-timeout, 2 s, which the cut-to-kill window stays well inside),
// and the same backend, following +switch-master, must hand out a token
// above every token issued before. Next to it, the counter that is only
// seeded from the clock when missing (dlock::test::seeded_when_missing) shows
// the check failing: it resumes from the promoted replica's stale value.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::test::eventually;
using dlock::test::info_field;
using dlock::test::old_rule_token;
using dlock::test::RespConn;
using dlock::test::SentinelSetup;

namespace {

TEST(RedisSentinelFencing, ThePromotedLaggingReplicaIssuesTokensAboveEveryEarlierOne) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  RedisBackend redis(dlock::test::sentinel_uri(setup), dlock::test::sentinel_test_options("lag:"));
  const auto quiet = std::make_shared<dlock::test::Quiet>();
  Lock<RedisBackend> lock(redis, "f", {.ttl = 10s, .observer = quiet});
  const int old_primary = setup.primary().port();

  std::uint64_t highest = 0, old_highest = 0;
  {
    RespConn p(old_primary);
    // Phase 1: tokens both replicas receive.
    dlock::test::issue_tokens(lock, p, 3, highest, old_highest);
    ASSERT_EQ(p.command({"WAIT", "2", "2000"}).integer, 2) << "the replicas did not acknowledge phase 1";
    // Cut both replicas' links: whichever is promoted lags.
    dlock::test::BlackHole nowhere;
    for (std::size_t i = 0; i < 2; ++i)
      ASSERT_EQ(
          RespConn(setup.replica(i).port()).command({"REPLICAOF", "127.0.0.1", std::to_string(nowhere.port())}).str,
          "OK");
    ASSERT_TRUE(eventually([&] { return info_field(old_primary, "replication", "connected_slaves") == "0"; }, 5s));
    // Phase 2: tokens only the primary sees.
    dlock::test::issue_tokens(lock, p, 5, highest, old_highest);
    setup.primary().kill();  // SIGKILL: phase 2 exists nowhere else
  }

  // The same backend follows the sentinels to the promoted replica.
  std::uint64_t first = 0;
  ASSERT_TRUE(eventually(
      [&] {
        try {
          if (!lock.try_lock()) return false;
        } catch (const dlock::ConnectionError&) {
          return false;  // the old primary is gone and no replica is promoted yet
        } catch (const dlock::TimeoutError&) {
          return false;
        }
        first = lock.fencing_token();
        lock.unlock();
        return true;
      },
      30s))
      << "no acquire succeeded after the primary was killed";
  const auto now_at = redis.node().current_server();
  ASSERT_TRUE(now_at);
  ASSERT_NE(now_at->port, old_primary);
  EXPECT_TRUE(now_at->port == setup.replica(0).port() || now_at->port == setup.replica(1).port());
  EXPECT_GT(first, highest) << "a fencing token went backwards across the Sentinel failover";

  // The counter-example on the promoted replica: seeded only when missing,
  // the counter resumes from the stale value, at or below tokens handed out.
  RespConn promoted(now_at->port);
  const std::uint64_t old_first = old_rule_token(promoted);
  EXPECT_LE(old_first, old_highest) << "expected the seeded-when-missing counter to go backwards (it did not: "
                                       "did the promoted replica receive phase 2?)";
  std::printf(
      "sentinel lagging replica: highest token before %llu, first after %llu (floored rule); seeded-when-missing "
      "rule: highest before %llu, first after %llu\n",
      static_cast<unsigned long long>(highest), static_cast<unsigned long long>(first),
      static_cast<unsigned long long>(old_highest), static_cast<unsigned long long>(old_first));
}

}  // namespace
