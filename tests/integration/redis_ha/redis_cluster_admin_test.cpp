// RedisAdmin on a Redis Cluster (issue 14 items 1 and 5): three primaries
// and three replicas on loopback (support/redis_ha.hpp ClusterSetup).
//   - list() walks every primary of the slot map (SCAN per node, merged, the
//     limit honoured), so names spread over all shards are all listed;
//   - inspect(), inspect_mutexes() and force_release() reach the shard of
//     each name's slot; wait_records() reads every node;
//   - each lock names the node it lives on (RedisLockInfo::node).
// With dlockctl built (redis_ha_tools_test), `dlockctl redis list` against a
// redis+cluster:// URI lists the names of all shards too.
// Skipped with DLOCK_TEST_REDIS (the suite starts its own servers).
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_waits.hpp>
#include <dlock/dlock.hpp>
#include <dlock/metrics.hpp>
#include <dlock/redis.hpp>
#include <dlock/redis_admin.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "support/redis_ha.hpp"
#ifdef DLOCKCTL
#include "tools/tool_support.hpp"
#endif

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::detail::redis_proto::SlotMap;

namespace {

class RedisClusterAdminIt : public dlock::test::ClusterSuite {
 protected:
  static constexpr int names = 30;
  static std::string uri() { return "redis+cluster://127.0.0.1:" + std::to_string(cluster_->node(0).port()); }
  static std::string name(int i) { return "adm-" + std::to_string(i); }
  // The "127.0.0.1:port" of the primary holding lock `n` (prefix "dlock:").
  static std::string node_of(const SlotMap& map, const std::string& n) {
    return map.primary_for_key(dlock::detail::redis_keys("dlock:", n).lock)->endpoint();
  }

  void SetUp() override {
    dlock::test::ClusterSuite::SetUp();
    if (IsSkipped()) return;
    redis_ = std::make_unique<RedisBackend>(uri());
    map_ = slot_map(cluster_->node(0).port());
    std::set<std::string> shards;
    for (int i = 0; i < names; ++i) {
      locks_.push_back(std::make_unique<Lock<RedisBackend>>(
          *redis_, name(i), dlock::LockOptions{.ttl = 60s, .observer = std::make_shared<dlock::test::Quiet>()}));
      locks_.back()->lock();
      shards.insert(node_of(map_, name(i)));
    }
    ASSERT_EQ(shards.size(), 3u);  // the names cover every shard
  }
  void TearDown() override {
    locks_.clear();
    redis_.reset();
  }

  std::unique_ptr<RedisBackend> redis_;
  SlotMap map_;
  std::vector<std::unique_ptr<Lock<RedisBackend>>> locks_;
};

TEST_F(RedisClusterAdminIt, ListWalksEveryPrimaryAndHonoursTheLimit) {
  dlock::RedisAdmin admin(uri());
  const auto all = admin.list();
  EXPECT_FALSE(all.truncated);
  std::map<std::string, const dlock::RedisLockInfo*> seen;
  for (const auto& l : all.locks) seen[l.name] = &l;
  ASSERT_EQ(seen.size(), std::size_t{names});
  for (int i = 0; i < names; ++i) {
    const auto it = seen.find(name(i));
    ASSERT_NE(it, seen.end()) << name(i) << " (on " << node_of(map_, name(i)) << ") was not listed";
    EXPECT_EQ(it->second->owner, std::string(locks_[static_cast<std::size_t>(i)]->owner_id()));
    EXPECT_EQ(it->second->token, std::to_string(locks_[static_cast<std::size_t>(i)]->fencing_token()));
    EXPECT_EQ(it->second->node, node_of(map_, name(i))) << name(i);
  }
  // Sorted by name over all shards.
  for (std::size_t i = 1; i < all.locks.size(); ++i) EXPECT_LT(all.locks[i - 1].name, all.locks[i].name);

  const auto some = admin.list({.match = "*", .limit = 10});
  EXPECT_TRUE(some.truncated);
  EXPECT_EQ(some.locks.size(), 10u);
  const auto one = admin.list({.match = "adm-1?", .limit = 0});
  EXPECT_EQ(one.locks.size(), 10u);  // adm-10 .. adm-19, on whichever shards
}

TEST_F(RedisClusterAdminIt, InspectAndForceReleaseReachTheShardOfTheName) {
  dlock::RedisAdmin admin(*redis_);
  std::vector<std::string> all;
  for (int i = 0; i < names; ++i) all.push_back(name(i));
  const auto mutexes = admin.inspect_mutexes(all);
  ASSERT_EQ(mutexes.size(), all.size());
  for (int i = 0; i < names; ++i) {
    const auto& m = mutexes[static_cast<std::size_t>(i)];
    EXPECT_EQ(m.owner, std::string(locks_[static_cast<std::size_t>(i)]->owner_id())) << name(i);
    EXPECT_EQ(m.node, node_of(map_, name(i))) << name(i);
  }
  // One name per shard: inspect, then force-release it.
  std::map<std::string, int> per_shard;
  for (int i = 0; i < names; ++i) per_shard.emplace(node_of(map_, name(i)), i);
  ASSERT_EQ(per_shard.size(), 3u);
  for (const auto& [node, i] : per_shard) {
    const auto info = admin.inspect(name(i));
    ASSERT_EQ(info.size(), 1u) << name(i) << " on " << node;
    EXPECT_EQ(info[0].owner, std::string(locks_[static_cast<std::size_t>(i)]->owner_id()));
    const auto released = admin.force_release(name(i));
    ASSERT_TRUE(released.has_value()) << name(i) << " on " << node;
    EXPECT_EQ(released->owner, std::string(locks_[static_cast<std::size_t>(i)]->owner_id()));
    EXPECT_TRUE(admin.inspect(name(i)).empty()) << name(i);
  }
  EXPECT_EQ(admin.list().locks.size(), std::size_t{names} - 3);
}

TEST_F(RedisClusterAdminIt, WaitRecordsAreReadFromEveryNode) {
  dlock::RedisAdmin admin(*redis_);
  // Wait records whose keys land on several shards (each key is its own slot).
  std::set<std::string> nodes;
  for (int i = 0; i < 12; ++i) {
    const std::string waiter = "w-" + std::to_string(i);
    const std::string key = dlock::detail::redis_waiting_key("dlock:", waiter);
    nodes.insert(map_.primary_for_key(key)->endpoint());
    const auto r = redis_->node().command(
        {"SET", key, dlock::detail::encode_wait_record({"h:1:2", waiter, name(i), {}, 10s}), "PX", "30000"});
    ASSERT_EQ(r.str, "OK") << r.str;
  }
  ASSERT_GE(nodes.size(), 2u);
  const auto w = admin.wait_records();
  EXPECT_EQ(w.records.size(), 12u);
  EXPECT_EQ(w.malformed, 0u);
}

// Item 5 of the issue: the metrics' per-node series name the shard's primary.
TEST_F(RedisClusterAdminIt, MetricsCountEachLockUnderItsShardsPrimary) {
  auto metrics = std::make_shared<dlock::MetricsRegistry>();
  std::map<std::string, int> per_node;
  std::vector<std::unique_ptr<Lock<RedisBackend>>> held;
  for (int i = 0; i < 9; ++i) {
    const std::string n = "metric-" + std::to_string(i);
    held.push_back(
        std::make_unique<Lock<RedisBackend>>(*redis_, n, dlock::LockOptions{.ttl = 30s, .observer = metrics}));
    held.back()->lock();
    ++per_node[node_of(map_, n)];
    EXPECT_EQ(redis_->endpoint_of(n), node_of(map_, n)) << n;
  }
  ASSERT_GE(per_node.size(), 2u);
  for (const auto& [node, count] : per_node) {
    EXPECT_EQ(metrics->endpoint_series("redis", node).held, count) << node;
    EXPECT_EQ(metrics->endpoint_series("redis", node).acquisitions, static_cast<std::uint64_t>(count)) << node;
  }
  EXPECT_EQ(metrics->endpoint_series("redis", redis_->endpoint()).held, 0);  // not the deployment's name
  held.clear();
  for (const auto& [node, count] : per_node) EXPECT_EQ(metrics->endpoint_series("redis", node).held, 0) << node;
}

// The same for the primitives (a Lock over a BackendView): a read and a
// write lease, a permit and a leadership each count under the primary of
// their name's slot, not under the deployment's name.
TEST_F(RedisClusterAdminIt, MetricsCountEachPrimitiveUnderItsShardsPrimary) {
  auto metrics = std::make_shared<dlock::MetricsRegistry>();
  const dlock::LockOptions options{.ttl = 30s, .observer = metrics};
  std::map<std::string, int> per_node;
  std::vector<std::unique_ptr<dlock::RwLock<RedisBackend>>> readers, writers;
  std::vector<std::unique_ptr<dlock::Semaphore<RedisBackend>>> semaphores;
  std::vector<std::unique_ptr<dlock::Election<RedisBackend>>> elections;
  for (int i = 0; i < 6; ++i) {
    const std::string r = "prim-r" + std::to_string(i), w = "prim-w" + std::to_string(i),
                      s = "prim-s" + std::to_string(i), e = "prim-e" + std::to_string(i);
    readers.push_back(std::make_unique<dlock::RwLock<RedisBackend>>(*redis_, r, options));
    ASSERT_TRUE(readers.back()->try_lock_shared()) << r;
    writers.push_back(std::make_unique<dlock::RwLock<RedisBackend>>(*redis_, w, options));
    ASSERT_TRUE(writers.back()->try_lock()) << w;
    semaphores.push_back(std::make_unique<dlock::Semaphore<RedisBackend>>(*redis_, s, 2, options));
    ASSERT_TRUE(semaphores.back()->try_acquire()) << s;
    elections.push_back(std::make_unique<dlock::Election<RedisBackend>>(*redis_, e, "me", options));
    ASSERT_TRUE(elections.back()->try_campaign()) << e;
    for (const std::string& n : {r, w, s, e}) ++per_node[node_of(map_, n)];
  }
  ASSERT_GE(per_node.size(), 2u);
  for (const auto& [node, count] : per_node) EXPECT_EQ(metrics->endpoint_series("redis", node).held, count) << node;
  EXPECT_EQ(metrics->endpoint_series("redis", redis_->endpoint()).held, 0);  // not the deployment's name
}

#ifdef DLOCKCTL
TEST_F(RedisClusterAdminIt, DlockctlListsTheNamesOfEveryShard) {
  const auto r =
      dlock::test::tools::run_program(DLOCKCTL, {"redis", "list", "--json", "--redis", uri(), "--timeout", "2"});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const auto doc = dlock::test::tools::parse_json(r.out);
  std::set<std::string> listed;
  for (const auto& l : doc["locks"].items) {
    listed.insert(l["name"].text);
    EXPECT_EQ(l["node"].text, node_of(map_, l["name"].text)) << l["name"].text;
  }
  EXPECT_EQ(listed.size(), std::size_t{names}) << r.out;

  const auto text = dlock::test::tools::run_program(DLOCKCTL, {"redis", "list", "--redis", uri(), "--timeout", "2"});
  ASSERT_EQ(text.rc, 0) << text.out << text.err;
  EXPECT_NE(text.out.find(std::to_string(names) + " locks"), std::string::npos) << text.out;
  for (int i = 0; i < names; ++i) EXPECT_NE(text.out.find(name(i) + " "), std::string::npos) << name(i);
}
#endif

}  // namespace
