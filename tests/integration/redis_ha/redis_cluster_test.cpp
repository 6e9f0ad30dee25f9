// RedisBackend on a Redis Cluster (issue 14 item 3): three primaries and
// three replicas on loopback (support/redis_ha.hpp ClusterSetup), reached
// through `redis+cluster://` with one seed:
//   - 8 threads lock 64 names spread over every shard: exact counters and
//     increasing fencing tokens per name;
//   - a release wakes a waiter through plain pub/sub whichever shard the
//     lock lives on (the subscriber listens on one node);
//   - lock_all over names on three shards;
//   - a slot migrated under a held lock: ASK (ASKING + the script on the
//     importing node) and then MOVED are followed, tokens keep increasing;
//   - a primary killed (SIGKILL) under 4 locking threads: its replica is
//     promoted, the router finds it, locking resumes, and a fenced resource
//     never sees a token go backwards (a cluster of its own);
//   - the node the release subscriber listens on killed: it moves to a live
//     node although the router's map still names the dead one.
// Skipped with DLOCK_TEST_REDIS (the suite starts its own servers).
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "redis/release_waiter.hpp"
#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using namespace dlock::detail::redis_proto;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::test::ClusterSetup;
using dlock::test::eventually;
using dlock::test::LockTraffic;
using dlock::test::RespConn;

namespace {

class RedisClusterBackendIt : public dlock::test::ClusterSuite {
 protected:
  static std::string uri() { return "redis+cluster://127.0.0.1:" + std::to_string(cluster_->node(0).port()); }
  static SlotMap slot_map() { return ClusterSuite::slot_map(cluster_->node(0).port()); }
  // The port of the primary holding lock `name` (default key prefix).
  static int port_of(const SlotMap& map, std::string_view name) {
    return map.primary_for_key(dlock::detail::redis_keys("dlock:", name).lock)->port;
  }
  // A name on each of the three primaries, `stem` + a number.
  static std::vector<std::string> one_per_shard(const SlotMap& map, std::string_view stem) {
    std::map<int, std::string> by_port;
    for (int i = 0; by_port.size() < 3; ++i) {
      std::string n = std::string(stem) + std::to_string(i);
      by_port.emplace(port_of(map, n), n);
    }
    std::vector<std::string> out;
    for (auto& [port, n] : by_port) out.push_back(n);
    return out;
  }
  static std::shared_ptr<dlock::Observer> quiet() { return std::make_shared<dlock::test::Quiet>(); }
};

TEST_F(RedisClusterBackendIt, EightThreadsOverEveryShardKeepExactCountersAndIncreasingTokens) {
  RedisBackend redis(uri());
  EXPECT_EQ(redis.endpoint(), "Redis Cluster (seeds 127.0.0.1:" + std::to_string(cluster_->node(0).port()) + ")");
  const SlotMap map = slot_map();
  constexpr int names = 64;
  constexpr int threads = 8;
  constexpr int rounds = 60;
  std::set<int> shards;
  for (int n = 0; n < names; ++n) shards.insert(port_of(map, "count-" + std::to_string(n)));
  ASSERT_EQ(shards.size(), 3u);  // the names cover every shard

  struct PerName {
    std::atomic<long> count{0};           // read-modify-write under the lock only: a lost update shows
    std::atomic<std::uint64_t> token{0};  // the last token seen
  };
  std::vector<PerName> per(names);
  std::atomic<int> backwards{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      for (int i = 0; i < rounds; ++i) {
        const int n = (t * 7 + i * 13) % names;
        try {
          Lock<RedisBackend> lock(redis, "count-" + std::to_string(n),
                                  {.ttl = 10s,
                                   .retry = {.initial_delay = 1ms, .max_delay = 20ms},
                                   .acquire_timeout = 20s,
                                   .observer = quiet()});
          lock.lock();
          if (lock.fencing_token() <= per[n].token.load()) ++backwards;
          per[n].token = lock.fencing_token();
          const long c = per[n].count.load();
          std::this_thread::yield();
          per[n].count.store(c + 1);
          lock.unlock();
        } catch (const std::exception& e) {
          ADD_FAILURE() << e.what();
          ++errors;
        }
      }
    });
  for (auto& w : workers) w.join();
  long total = 0;
  for (auto& p : per) total += p.count.load();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(backwards.load(), 0);
  EXPECT_EQ(total, long{threads} * rounds);
  // Each node holds the keys of its own names only (no proxying through one node).
  for (int port : shards) {
    const auto keys = RespConn(port).command({"KEYS", "dlock:{count-*}:fence"});
    EXPECT_FALSE(keys.elements.empty()) << port;
  }
}

TEST_F(RedisClusterBackendIt, AReleaseWakesAWaiterOnEveryShard) {
  RedisBackend redis(uri());
  for (const std::string& name : one_per_shard(slot_map(), "wake-")) {
    Lock<RedisBackend> holder(redis, name, {.ttl = 60s, .observer = quiet()});
    holder.lock();
    std::optional<std::chrono::steady_clock::time_point> acquired_at;
    std::thread waiter([&] { acquired_at = dlock::test::acquire_after_release(redis, name, quiet()); });
    // The waiter's wait record is written after its subscription is confirmed.
    ASSERT_TRUE(eventually(
        [&] {
          for (std::size_t i = 0; i < cluster_->size(); ++i)
            if (!RespConn(cluster_->node(i).port()).command({"KEYS", "dlock:waiting:*"}).elements.empty()) return true;
          return false;
        },
        10s));
    const auto released_at = std::chrono::steady_clock::now();
    holder.unlock();
    waiter.join();
    ASSERT_TRUE(acquired_at.has_value()) << name;
    // Its backoff is 5 s: sooner means the release's PUBLISH woke it.
    EXPECT_LT(*acquired_at - released_at, 2s) << name;
  }
}

TEST_F(RedisClusterBackendIt, LockAllTakesLocksOnThreeShards) {
  RedisBackend redis(uri());
  const SlotMap map = slot_map();
  const auto names = one_per_shard(map, "all-");
  Lock<RedisBackend> a(redis, names[0], {.ttl = 30s, .observer = quiet()});
  Lock<RedisBackend> b(redis, names[1], {.ttl = 30s, .observer = quiet()});
  Lock<RedisBackend> c(redis, names[2], {.ttl = 30s, .observer = quiet()});
  {
    auto all = dlock::lock_all(c, a, b);
    for (const auto& n : names) {
      const auto v = RespConn(port_of(map, n)).command({"GET", dlock::detail::redis_keys("dlock:", n).lock});
      EXPECT_EQ(v.type, Reply::Type::string) << n;  // held, on its own shard
    }
    // Another client cannot take any of them meanwhile.
    RedisBackend other(uri());
    for (const auto& n : names) {
      Lock<RedisBackend> l(other, n, {.ttl = 30s, .observer = quiet()});
      EXPECT_FALSE(l.try_lock()) << n;
    }
  }
  for (const auto& n : names) {
    const auto v = RespConn(port_of(map, n)).command({"EXISTS", dlock::detail::redis_keys("dlock:", n).lock});
    EXPECT_EQ(v.integer, 0) << n;  // all released
  }
}

// The CLUSTER SETSLOT / MIGRATE sequence of `redis-cli --cluster reshard`,
// one slot, with a lock held in it.
TEST_F(RedisClusterBackendIt, ASlotMigratedUnderAHeldLockGivesAskThenMovedThatAreFollowed) {
  RedisBackend redis(uri());
  const SlotMap map = slot_map();
  const std::string name = "migrate-me";
  const auto keys = dlock::detail::redis_keys("dlock:", name);
  const std::uint16_t slot = hash_slot(keys.lock);
  const ClusterNode a = *map.primary_for_slot(slot);
  const auto primaries = map.primaries();
  const ClusterNode b =
      *std::find_if(primaries.begin(), primaries.end(), [&](const ClusterNode& n) { return !(n == a); });
  auto* router = redis.node().cluster();
  ASSERT_NE(router, nullptr);

  Lock<RedisBackend> holder(redis, name, {.ttl = 60s, .observer = quiet()});
  holder.lock();
  const std::uint64_t first_token = holder.fencing_token();

  RespConn ca(a.port);
  RespConn cb(b.port);
  const std::string s = std::to_string(slot);
  ASSERT_EQ(cb.command({"CLUSTER", "SETSLOT", s, "IMPORTING", a.id}).str, "OK");
  ASSERT_EQ(ca.command({"CLUSTER", "SETSLOT", s, "MIGRATING", b.id}).str, "OK");
  const Reply migrated =
      ca.command({"MIGRATE", "127.0.0.1", std::to_string(b.port), "", "0", "5000", "KEYS", keys.lock, keys.fence});
  ASSERT_EQ(migrated.str, "OK") << migrated.str;

  // A no longer has the keys: ASK to B, where ASKING + the script finds the holder.
  Lock<RedisBackend> contender(redis, name, {.ttl = 60s, .observer = quiet()});
  EXPECT_FALSE(contender.try_lock());
  EXPECT_GE(router->ask_followed(), 1u);
  EXPECT_EQ(router->moved_followed(), 0u);
  // The holder's extend and release go the same way.
  EXPECT_NO_THROW(holder.extend(60s));
  holder.unlock();
  EXPECT_EQ(cb.command({"EXISTS", keys.lock}).integer, 0);

  // The slot now belongs to B everywhere; the router's map still says A: MOVED.
  for (const auto& p : primaries)
    ASSERT_EQ(RespConn(p.port).command({"CLUSTER", "SETSLOT", s, "NODE", b.id}).str, "OK");
  ASSERT_TRUE(contender.try_lock());
  EXPECT_GE(router->moved_followed(), 1u);
  EXPECT_GT(contender.fencing_token(), first_token);
  EXPECT_EQ(cb.command({"GET", keys.lock}).type, Reply::Type::string);  // granted on B
  contender.unlock();
  // Later calls go straight to B (the map was refreshed).
  const auto moved = router->moved_followed();
  ASSERT_TRUE(contender.try_lock());
  contender.unlock();
  EXPECT_EQ(router->moved_followed(), moved);
}

// Its own cluster: the primary it kills is gone for good.
TEST(RedisClusterFailoverIt, APrimaryKilledUnderLockTrafficIsReplacedByItsReplica) {
  DLOCK_REQUIRE_OWN_REDIS();
  ClusterSetup cluster;
  RedisBackend redis("redis+cluster://127.0.0.1:" + std::to_string(cluster.node(0).port()));
  const SlotMap map = dlock::test::ClusterSuite::slot_map(cluster.node(0).port());
  // LockTraffic cycles through s0, s1, s2 in every thread: kill the shard of s0.
  const int victim = map.primary_for_key(dlock::detail::redis_keys("dlock:", "s0").lock)->port;
  ASSERT_NE(cluster.by_port(victim), nullptr);

  LockTraffic traffic(redis);
  ASSERT_TRUE(traffic.progressed(100, 15s)) << traffic.error();
  const auto killed = std::chrono::steady_clock::now();
  cluster.by_port(victim)->kill();
  // 100 more cycles: every thread locks s0 every third cycle, so s0 is granted again.
  const bool resumed = traffic.progressed(100, 40s);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  traffic.stop();
  EXPECT_TRUE(traffic.error().empty()) << traffic.error();
  ASSERT_TRUE(resumed) << "locking did not resume after the primary was killed";
  EXPECT_EQ(traffic.violations(), 0) << "a fenced resource saw a token at or below one it had seen";
  std::printf("cluster failover: 100 lock cycles over the 3 shards %lld ms after the SIGKILL\n",
              static_cast<long long>(took.count()));
  // The killed node no longer serves s0's slot in the router's map.
  EXPECT_NE(redis.node().cluster()->node_for_key(dlock::detail::redis_keys("dlock:", "s0").lock).options().port,
            victim);
}

// The release subscriber listens on one node of a cluster (a PUBLISH reaches
// every node). When that node dies, it must move to a live one: a router
// whose lock traffic avoids the dead node's slots never refreshes its map,
// so the node it names stays the dead one. Before: the subscriber retried the
// dead node forever (no subscription anywhere for 10 s; the waiter slept out
// its 5 s backoff).
TEST(RedisClusterFailoverIt, TheReleaseSubscriberLeavesAKilledNodeForALiveOne) {
  DLOCK_REQUIRE_OWN_REDIS();
  ClusterSetup cluster;
  RedisBackend redis("redis+cluster://127.0.0.1:" + std::to_string(cluster.node(0).port()));
  const SlotMap map = dlock::test::ClusterSuite::slot_map(cluster.node(0).port());
  const auto port_of = [&](const std::string& name) {
    return map.primary_for_key(dlock::detail::redis_keys("dlock:", name).lock)->port;
  };
  const auto numsub = [&](int port, const std::string& channel) {
    return RespConn(port).command({"PUBSUB", "NUMSUB", channel}).elements.at(1).integer;
  };
  const auto quiet = std::make_shared<dlock::test::Quiet>();
  {
    Lock<RedisBackend> warm(redis, "warm", {.ttl = 10s, .observer = quiet});  // the router loads its map
    ASSERT_TRUE(warm.try_lock());
  }
  // The node the subscriber listens on.
  int victim = 0;
  {
    auto sub = redis.subscribe_release("probe");
    const std::string channel = dlock::detail::redis_keys("dlock:", "probe").channel;
    for (std::size_t i = 0; i < cluster.size(); ++i)
      if (numsub(cluster.node(i).port(), channel) == 1) victim = cluster.node(i).port();
  }
  ASSERT_NE(victim, 0);
  std::string name;  // a lock whose slot is on another primary
  for (int i = 0; name.empty(); ++i)
    if (const std::string n = "live-" + std::to_string(i); port_of(n) != victim) name = n;
  cluster.by_port(victim)->kill();
  std::vector<int> live;
  for (std::size_t i = 0; i < cluster.size(); ++i)
    if (cluster.node(i).port() != victim) live.push_back(cluster.node(i).port());
  ASSERT_TRUE(eventually(
      [&] {
        for (int port : live)
          if (ClusterSetup::cluster_state(port) != "ok") return false;
        return true;
      },
      20s))
      << "the cluster did not recover from the loss of a primary";

  Lock<RedisBackend> holder(redis, name, {.ttl = 60s, .observer = quiet});
  ASSERT_TRUE(holder.try_lock());
  std::optional<std::chrono::steady_clock::time_point> acquired_at;
  std::thread waiter([&] { acquired_at = dlock::test::acquire_after_release(redis, name, quiet); });
  const std::string channel = dlock::detail::redis_keys("dlock:", name).channel;
  EXPECT_TRUE(eventually(
      [&] {
        for (int port : live)
          if (numsub(port, channel) == 1) return true;
        return false;
      },
      10s))
      << "the release subscriber did not subscribe on a live node";
  const auto released_at = std::chrono::steady_clock::now();
  holder.unlock();
  waiter.join();
  ASSERT_TRUE(acquired_at.has_value());
  // Its backoff is 5 s: sooner means the release's PUBLISH woke it.
  EXPECT_LT(*acquired_at - released_at, 2s);
}

}  // namespace
