// The node a lock lives on, through Sentinel (issue 14 item 5): RedisAdmin
// (and so `dlockctl redis list/inspect`, which print RedisAdmin::reached())
// names the primary actually reached, before and after a failover, and the
// metrics' per-node series count the lock under the primary that granted it
// (RedisBackend::endpoint_of: "host:port", one label value per primary), for
// the whole hold: its release after the failover goes to the same series.
#include <dlock/dlock.hpp>
#include <dlock/metrics.hpp>
#include <dlock/redis.hpp>
#include <dlock/redis_admin.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using dlock::test::eventually;
using dlock::test::SentinelSetup;

namespace {

bool lists(dlock::RedisAdmin& admin, const std::string& name) {
  try {
    for (const auto& l : admin.list({}).locks)
      if (l.name == name) return true;
  } catch (const dlock::Error&) {  // the old primary is gone and none is promoted yet
  }
  return false;
}

TEST(RedisSentinelAdmin, NamesThePrimaryReachedBeforeAndAfterAFailover) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  dlock::RedisBackend redis(dlock::test::sentinel_uri(setup), dlock::test::sentinel_test_options("admin:"));
  auto metrics = std::make_shared<dlock::MetricsRegistry>();
  dlock::RedisAdmin admin(redis);
  const std::string primary = "127.0.0.1:" + std::to_string(setup.primary().port());
  {
    dlock::Lock<dlock::RedisBackend> lock(redis, "jobs:1", {.ttl = 30s, .observer = metrics});
    lock.lock();
    ASSERT_TRUE(lists(admin, "jobs:1"));
    EXPECT_EQ(admin.reached(), primary + " (" + std::string(redis.endpoint()) + ")");
    EXPECT_EQ(metrics->endpoint_series("redis", primary).held, 1);
    EXPECT_EQ(redis.endpoint_of("jobs:1"), primary);
    {  // the primitives' series name the primary too (issue 14 item 5)
      auto prims = std::make_shared<dlock::MetricsRegistry>();
      dlock::Semaphore<dlock::RedisBackend> sem(redis, "jobs:2", 2, {.ttl = 30s, .observer = prims});
      ASSERT_TRUE(sem.try_acquire());
      dlock::RwLock<dlock::RedisBackend> rw(redis, "jobs:3", {.ttl = 30s, .observer = prims});
      ASSERT_TRUE(rw.try_lock_shared());
      EXPECT_EQ(prims->endpoint_series("redis", primary).held, 2);
      EXPECT_EQ(prims->endpoint_series("redis", redis.endpoint()).held, 0);
      sem.release();
      rw.unlock_shared();
      EXPECT_EQ(prims->endpoint_series("redis", primary).held, 0);
    }
    ASSERT_EQ(dlock::test::RespConn(setup.primary().port()).command({"WAIT", "2", "2000"}).integer, 2);
    setup.primary().kill();
    // The lock is on the promoted replica now; the admin follows the sentinels.
    ASSERT_TRUE(eventually([&] { return lists(admin, "jobs:1"); }, 30s)) << admin.reached();
    const std::string now = admin.reached();
    EXPECT_EQ(now.find(primary), std::string::npos) << now;
    EXPECT_TRUE(now.starts_with("127.0.0.1:" + std::to_string(setup.replica(0).port()) + " (") ||
                now.starts_with("127.0.0.1:" + std::to_string(setup.replica(1).port()) + " ("))
        << now;
  }
  EXPECT_EQ(metrics->endpoint_series("redis", primary).held, 0);  // released under the label it was granted under
  const std::string text = metrics->prometheus_text();
  EXPECT_NE(text.find("dlock_endpoint_acquisitions_total{backend=\"redis\",endpoint=\"" + primary + "\"} 1\n"),
            std::string::npos)
      << text;
  // The first attempt ran before any primary was found: only it has the deployment's name.
  EXPECT_EQ(metrics->endpoint_series("redis", redis.endpoint()).acquisitions, 0u) << text;
}

}  // namespace
