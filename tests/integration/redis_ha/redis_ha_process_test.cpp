// Failover under lock traffic from several processes (issue 14, Tests):
// forked workers (ha_processes.hpp), each with its own RedisBackend, share a
// fenced resource and per-name counters in shared memory.
//   - Sentinel (one primary, two replicas, three sentinels, down-after 500
//     ms): 4 processes while the primary is SIGKILLed; and 4 processes while
//     the primary is paused (SIGSTOP) past down-after-milliseconds, failed
//     over, then resumed and demoted (disabled: it finds a defect, see there);
//   - Cluster (3 primaries + 3 replicas, cluster-node-timeout 1000 ms): 8
//     processes over 48 names on every shard while one primary is SIGKILLed
//     and its replica promoted.
// In every case locking resumes, no process fails or crashes, the fenced
// resource never receives a token at or below one it accepted, and the
// counters are exact (no two holders of a name at once).
// Skipped with DLOCK_TEST_REDIS (the tests start their own servers).
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "redis_ha/ha_processes.hpp"
#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using dlock::RedisBackend;
using dlock::test::ClusterSetup;
using dlock::test::eventually;
using dlock::test::ProcessTraffic;
using dlock::test::sentinel_primary_port;
using dlock::test::SentinelSetup;

namespace {

long long ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t).count();
}

ProcessTraffic::MakeBackend sentinel_backends(SentinelSetup& setup) {
  return [uri = dlock::test::sentinel_uri(setup)] {
    return std::make_unique<RedisBackend>(uri, dlock::test::sentinel_test_options("procs:"));
  };
}

void expect_clean(ProcessTraffic& traffic) {
  EXPECT_TRUE(traffic.errors().empty()) << traffic.errors();
  EXPECT_EQ(traffic.stale_tokens(), 0) << "the fenced resource received a token at or below one it had accepted";
  EXPECT_EQ(traffic.lost_updates(), 0) << "two holders of one name at once";
}

TEST(RedisSentinelProcesses, FourProcessesLockThroughASigkilledPrimary) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  ProcessTraffic traffic(4, {"p0", "p1", "p2"}, sentinel_backends(setup));
  ASSERT_TRUE(traffic.progressed(100, 15s)) << traffic.errors();
  const auto killed = std::chrono::steady_clock::now();
  setup.primary().kill();
  // More cycles than the processes had in flight at the kill: some ran on the new primary.
  const bool resumed = traffic.progressed(8, 30s);
  const long long took = ms_since(killed);
  const bool more = resumed && traffic.progressed(100, 15s);
  traffic.stop();
  EXPECT_TRUE(resumed && more) << "locking did not resume after the primary was killed";
  expect_clean(traffic);
  std::printf("sentinel, 4 processes: 8 cycles done %lld ms after SIGKILL of the primary; %ld cycles\n", took,
              traffic.cycles());
}

// It found a defect (ha2, issue 14): on a loaded machine, 45 tokens at or
// below one the resource had accepted and 4 942 lost counter updates in
// 38 103 cycles (1 stale token and 10 lost updates in 1 of 3 runs here): a
// process used the first sentinel's answer, from a sentinel that had not yet
// learned the failover, and locked on the resumed old primary (ROLE still
// master until the sentinels demote it) beside the promoted replica. Fixed by
// choosing the primary of the highest configuration epoch a majority of
// sentinels report (redis_proto::choose_primary); the next test forces the
// lagging sentinel.
TEST(RedisSentinelProcesses, FourProcessesLockThroughAPrimaryPausedPastDownAfter) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  const int old_primary = setup.primary().port();
  ProcessTraffic traffic(4, {"p0", "p1", "p2"}, sentinel_backends(setup));
  ASSERT_TRUE(traffic.progressed(100, 15s)) << traffic.errors();
  const auto paused = std::chrono::steady_clock::now();
  setup.primary().pause();
  // Paused past down-after-milliseconds (500): the sentinels promote a replica.
  const bool failed_over = eventually(
      [&] {
        const int p = sentinel_primary_port(setup);
        return p != 0 && p != old_primary;
      },
      30s);
  const long long failover_ms = ms_since(paused);
  const bool resumed = failed_over && traffic.progressed(50, 20s);
  setup.primary().resume();
  const bool after_return = resumed && traffic.progressed(100, 15s);
  const bool demoted =
      eventually([&] { return dlock::test::info_field(old_primary, "replication", "role") == "slave"; }, 20s);
  const bool after_demotion = after_return && traffic.progressed(50, 15s);
  traffic.stop();
  EXPECT_TRUE(failed_over) << "the sentinels did not fail the paused primary over";
  EXPECT_TRUE(resumed && after_return && after_demotion) << "locking did not go on through the pause";
  EXPECT_TRUE(demoted) << "the sentinels did not demote the old primary";
  expect_clean(traffic);
  std::printf("sentinel pause, 4 processes: failed over %lld ms after SIGSTOP; %ld cycles\n", failover_ms,
              traffic.cycles());
}

// The pause test's defect made deterministic: a sentinel that lags. After
// the failover (the primary paused past down-after) and the old primary's
// return (ROLE says master there until the sentinels demote it), a fourth
// sentinel is started with the old configuration: it names the old primary
// at epoch 0 until a hello message (every 2 s) tells it the new one. A
// holder locks through the three up-to-date sentinels on the new primary; a
// client that asks the fourth sentinel first must find the name held. Before
// the fix (the first answer used) it was granted the name on the old
// primary: two holders at once.
TEST(RedisSentinelProcesses, AClientWhoseFirstSentinelLagsLocksOnTheNewPrimary) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  dlock::test::StaleSentinelScenario scenario(setup);
  ASSERT_TRUE(scenario.fail_over()) << "the sentinels did not fail the paused primary over";
  RedisBackend up_to_date(scenario.up_to_date_uri(), dlock::test::sentinel_test_options("lag:"));
  dlock::Lock<RedisBackend> holder(up_to_date, "x", {.ttl = 30s});
  ASSERT_TRUE(scenario.eventually_granted<dlock::ConnectionError>([&] { return holder.try_lock(); }));
  ASSERT_EQ(up_to_date.endpoint_of("x"), "127.0.0.1:" + std::to_string(scenario.new_primary()));
  ASSERT_TRUE(scenario.start_stale_sentinel());
  // The window this test is about: the old primary still says master.
  const bool old_still_master = scenario.old_still_master();
  RedisBackend lagging_first(scenario.lagging_first_uri(), dlock::test::sentinel_test_options("lag:"));
  dlock::Lock<RedisBackend> other(lagging_first, "x", {.ttl = 30s});
  // No primary that may be used (ConnectionError): not granted.
  const bool granted = scenario.granted<dlock::ConnectionError>([&] { return other.try_lock(); });
  EXPECT_FALSE(granted) << "granted a name held on the new primary: two holders at once (at "
                        << lagging_first.endpoint_of("x") << ")";
  std::printf("lagging first sentinel: old primary %s when asked; granted: %s\n",
              old_still_master ? "still master" : "already demoted", granted ? "yes" : "no");
}

TEST(RedisClusterProcesses, EightProcessesOverEveryShardLockThroughAKilledPrimary) {
  DLOCK_REQUIRE_OWN_REDIS();
  ClusterSetup cluster;
  const int seed = cluster.node(0).port();
  const auto map = dlock::test::ClusterSuite::slot_map(seed);
  std::vector<std::string> names;
  std::set<int> shards;
  for (int i = 0; i < 48; ++i) {
    names.push_back("c" + std::to_string(i));
    shards.insert(map.primary_for_key(dlock::detail::redis_keys("dlock:", names.back()).lock)->port);
  }
  ASSERT_EQ(shards.size(), 3u);
  const int victim = map.primary_for_key(dlock::detail::redis_keys("dlock:", names[0]).lock)->port;
  ASSERT_NE(cluster.by_port(victim), nullptr);
  std::vector<std::size_t> on_victim;
  for (std::size_t i = 0; i < names.size(); ++i)
    if (map.primary_for_key(dlock::detail::redis_keys("dlock:", names[i]).lock)->port == victim) on_victim.push_back(i);

  ProcessTraffic traffic(8, names, [uri = "redis+cluster://127.0.0.1:" + std::to_string(seed)] {
    return std::make_unique<RedisBackend>(uri);
  });
  ASSERT_TRUE(traffic.progressed(200, 20s)) << traffic.errors();
  long before = 0;
  for (std::size_t i : on_victim) before += traffic.counter(i);
  const auto killed = std::chrono::steady_clock::now();
  cluster.by_port(victim)->kill();
  // The names of the killed shard are locked again (on its promoted replica).
  const bool resumed = eventually(
      [&] {
        long now = 0;
        for (std::size_t i : on_victim) now += traffic.counter(i);
        return now >= before + 8 || !traffic.errors().empty();
      },
      40s);
  const long long took = ms_since(killed);
  const bool more = resumed && traffic.progressed(200, 20s);
  traffic.stop();
  EXPECT_TRUE(resumed && more) << "locking on the killed shard's names did not resume";
  expect_clean(traffic);
  std::printf(
      "cluster, 8 processes x 48 names: the killed shard's names locked again %lld ms after SIGKILL; %ld "
      "cycles\n",
      took, traffic.cycles());
}

}  // namespace
