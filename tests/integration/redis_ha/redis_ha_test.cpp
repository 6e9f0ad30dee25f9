// Redis high availability against real deployments on loopback (issue 14):
//   - Cluster (3 primaries + 3 replicas): the real CLUSTER SLOTS / SHARDS
//     reply parsed into a slot map that routes every key to the node that
//     accepts it (the lock script runs there: its keys share a slot); a real
//     slot migration gives ASK, TRYAGAIN and MOVED, each recognised by
//     after_error();
//   - Sentinel (1 primary, 2 replicas, 3 sentinels): get-master-addr-by-name,
//     ROLE of each kind, and +switch-master after SENTINEL FAILOVER parsed;
//     a replica answers READONLY, which after_error() retries;
//   - failover-safe fencing with today's RedisBackend: a replica whose link
//     was cut is promoted after the primary dies; its first token exceeds
//     every token the old primary issued, while a counter that is only seeded
//     when missing goes backwards;
//   - what `WAIT 1` after each grant costs.
// Each suite starts its own servers (skipped with DLOCK_TEST_REDIS).
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_sentinel.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using namespace dlock::detail::redis_proto;
using dlock::test::acquire_request;
using dlock::test::ClusterSetup;
using dlock::test::eventually;
using dlock::test::RespConn;
using dlock::test::SentinelSetup;

namespace {

constexpr std::string_view prefix = "ha:";

std::string owner_text(int i) { return "owner-" + std::to_string(i); }

// ---- Cluster ----

class RedisClusterIt : public dlock::test::ClusterSuite {
 protected:
  RespConn& conn(int port) {
    auto& c = conns_[port];
    if (!c) c = std::make_unique<RespConn>(port);
    return *c;
  }
  static std::string node_id(int port) { return dlock::test::redis_command(port, {"CLUSTER", "MYID"}).str; }

  std::map<int, std::unique_ptr<RespConn>> conns_;
};

TEST_F(RedisClusterIt, ClusterSlotsRoutesEveryKeyToTheNodeThatAcceptsIt) {
  const SlotMap map = slot_map(cluster_->node(0).port());
  EXPECT_EQ(map.served_slots(), 16384u);
  const auto primaries = map.primaries();
  ASSERT_EQ(primaries.size(), 3u);
  for (const auto& p : primaries) {
    EXPECT_EQ(p.host, "127.0.0.1");
    EXPECT_NE(cluster_->by_port(p.port), nullptr);
    EXPECT_EQ(p.id, node_id(p.port));
  }
  // CLUSTER SHARDS tells the same story.
  auto shards =
      SlotMap::from_cluster_shards(conn(cluster_->node(1).port()).command({"CLUSTER", "SHARDS"}), "127.0.0.1");
  ASSERT_TRUE(std::holds_alternative<SlotMap>(shards)) << std::get<std::string>(shards);
  for (std::uint32_t s = 0; s < cluster_slot_count; s += 97) {
    const auto slot = static_cast<std::uint16_t>(s);
    EXPECT_EQ(std::get<SlotMap>(shards).primary_for_slot(slot)->endpoint(), map.primary_for_slot(slot)->endpoint());
  }

  std::map<int, int> per_node;
  for (int i = 0; i < 300; ++i) {
    const std::string name = "route-" + std::to_string(i);
    const auto keys = dlock::detail::redis_keys(prefix, name);
    const std::uint16_t slot = hash_slot(keys.lock);
    const ClusterNode* node = map.primary_for_slot(slot);
    ASSERT_NE(node, nullptr);
    if (i < 40) {
      const Reply k = conn(node->port).command({"CLUSTER", "KEYSLOT", keys.fence});
      EXPECT_EQ(k.integer, slot) << name;
    }
    // The lock script (lock and fence keys) runs on the routed node: no MOVED, no CROSSSLOT.
    const auto reply = conn(node->port).call(acquire_request(keys, owner_text(i))).front();
    const auto acquired = parse_acquire(reply);
    ASSERT_TRUE(std::holds_alternative<AcquireReply>(acquired)) << name << ": " << reply.str;
    EXPECT_TRUE(std::get<AcquireReply>(acquired).acquired);
    ++per_node[node->port];
    // Any other primary redirects there, and after_error() says so.
    const ClusterNode& other =
        primaries[(std::find(primaries.begin(), primaries.end(), *node) - primaries.begin() + 1) % primaries.size()];
    const Reply wrong = conn(other.port).command({"GET", keys.lock});
    ASSERT_TRUE(wrong.is_error());
    const HaDecision d = after_error(wrong.str, other.host);
    EXPECT_EQ(d.step, HaStep::follow_moved) << wrong.str;
    ASSERT_TRUE(d.redirect);
    EXPECT_EQ(d.redirect->slot, slot);
    EXPECT_EQ(d.redirect->port, node->port);
  }
  EXPECT_EQ(per_node.size(), 3u);  // names spread over every shard
}

// A real migration of one slot from primary A to primary B, step by step
// (the CLUSTER SETSLOT / MIGRATE sequence redis-cli --cluster reshard runs).
TEST_F(RedisClusterIt, ASlotMigrationGivesAskTryagainAndMovedThatAreRecognised) {
  SlotMap map = slot_map(cluster_->node(0).port());
  const auto held = dlock::detail::redis_keys(prefix, "migrating");  // locked before the migration
  const std::uint16_t slot = hash_slot(held.lock);
  // A second lock name in the same slot, not yet locked.
  std::string fresh_name;
  for (int i = 0; fresh_name.empty(); ++i) {
    const std::string n = "fresh-" + std::to_string(i);
    if (hash_slot(dlock::detail::redis_keys(prefix, n).lock) == slot) fresh_name = n;
  }
  const auto fresh = dlock::detail::redis_keys(prefix, fresh_name);
  const ClusterNode a = *map.primary_for_slot(slot);
  const auto primaries = map.primaries();
  const ClusterNode b =
      *std::find_if(primaries.begin(), primaries.end(), [&](const ClusterNode& n) { return !(n == a); });
  RespConn& ca = conn(a.port);
  RespConn& cb = conn(b.port);
  ASSERT_TRUE(std::get<AcquireReply>(parse_acquire(ca.call(acquire_request(held, "holder")).front())).acquired);

  const std::string s = std::to_string(slot);
  ASSERT_EQ(cb.command({"CLUSTER", "SETSLOT", s, "IMPORTING", a.id}).str, "OK");
  ASSERT_EQ(ca.command({"CLUSTER", "SETSLOT", s, "MIGRATING", b.id}).str, "OK");

  // A's keys are still on A: A serves that lock (a holder's retry, extend, release).
  const auto again = parse_acquire(ca.call(acquire_request(held, "other")).front());
  EXPECT_FALSE(std::get<AcquireReply>(again).acquired);
  // The fresh lock's keys are on neither node: A answers ASK for B.
  const Reply ask = ca.call(acquire_request(fresh, "new")).front();
  ASSERT_TRUE(ask.is_error());
  const HaDecision d = after_error(ask.str, a.host);
  ASSERT_EQ(d.step, HaStep::follow_ask) << ask.str;
  EXPECT_FALSE(d.refresh_map);
  EXPECT_EQ(d.redirect, (Redirect{slot, b.host, b.port}));
  // B without ASKING: MOVED back to A (the map is still right).
  const Reply no_asking = cb.command({"GET", fresh.lock});
  EXPECT_EQ(after_error(no_asking.str, b.host).redirect->port, a.port) << no_asking.str;
  // ASKING + a single-key command: served by B.
  Request asking_get;
  push_asking(asking_get);
  asking_get.push({"GET", fresh.lock});
  const auto served = cb.call(asking_get);
  EXPECT_EQ(served[0].str, "OK");
  EXPECT_EQ(served[1].type, Reply::Type::nil);
  // ASKING + the two-key lock script while its keys are missing: TRYAGAIN,
  // a transient state (a fresh lock in a migrating slot waits for the move).
  Request asking_acquire;
  push_asking(asking_acquire);
  asking_acquire.append(acquire_request(fresh, "new"));
  const auto tryagain = cb.call(asking_acquire);
  ASSERT_TRUE(tryagain[1].is_error());
  EXPECT_EQ(classify_error(tryagain[1].str).kind, ErrorKind::tryagain) << tryagain[1].str;
  EXPECT_EQ(after_error(tryagain[1].str, b.host).step, HaStep::retry_later);

  // Move the held lock's keys, then hand the slot to B on every primary.
  const Reply migrated =
      ca.command({"MIGRATE", "127.0.0.1", std::to_string(b.port), "", "0", "5000", "KEYS", held.lock, held.fence});
  ASSERT_EQ(migrated.str, "OK") << migrated.str;
  ASSERT_EQ(cb.command({"CLUSTER", "SETSLOT", s, "NODE", b.id}).str, "OK");
  for (const auto& p : primaries)
    if (!(p == b)) {
      ASSERT_EQ(conn(p.port).command({"CLUSTER", "SETSLOT", s, "NODE", b.id}).str, "OK");
    }

  // A now answers MOVED for good; the decision refreshes the map and goes to B.
  const Reply moved = ca.call(acquire_request(fresh, "new")).front();
  const HaDecision m = after_error(moved.str, a.host);
  ASSERT_EQ(m.step, HaStep::follow_moved) << moved.str;
  EXPECT_TRUE(m.refresh_map);
  EXPECT_EQ(m.redirect, (Redirect{slot, b.host, b.port}));
  map.apply_moved(*m.redirect, a.host);
  EXPECT_EQ(map.primary_for_slot(slot)->port, b.port);
  EXPECT_EQ(slot_map(b.port).primary_for_slot(slot)->port, b.port);  // the refresh agrees
  // On B: the fresh lock is granted; the migrated lock kept its holder.
  EXPECT_TRUE(std::get<AcquireReply>(parse_acquire(cb.call(acquire_request(fresh, "new")).front())).acquired);
  EXPECT_FALSE(std::get<AcquireReply>(parse_acquire(cb.call(acquire_request(held, "other")).front())).acquired);
  EXPECT_EQ(cb.command({"GET", held.lock}).str, "holder");
}

// Subscribes `table` to +switch-master on `conn` and waits for the confirmation.
bool subscribe_switch_master(RespConn& conn, SubscriptionTable& table) {
  table.want(switch_master_channel);
  conn.send(table.take_commands());
  const auto r = conn.read(2s);
  return r && table.on_reply(*r).kind == PubSubEvent::Kind::subscribed;
}

// The next +switch-master announcement on `conn`, or nullopt after `timeout`.
std::optional<SwitchMaster> next_switch_master(RespConn& conn, SubscriptionTable& table,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto reply = conn.read(1s);
    if (!reply) continue;
    if (const PubSubEvent e = table.on_reply(*reply); e.kind == PubSubEvent::Kind::message)
      return parse_switch_master(e.payload);
  }
  return std::nullopt;
}

// ---- Sentinel ----

TEST(RedisSentinelIt, DiscoveryRoleAndSwitchMasterAfterAFailover) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  const int old_primary = setup.primary().port();
  std::vector<int> replica_ports{setup.replica(0).port(), setup.replica(1).port()};

  for (std::size_t i = 0; i < setup.sentinels(); ++i) {
    RespConn s(setup.sentinel(i).port());
    Request r;
    push_get_master_addr(r, SentinelSetup::master_name);
    const auto addr = parse_master_addr(s.call(r).front());
    ASSERT_TRUE(std::holds_alternative<NodeAddress>(addr));
    EXPECT_EQ(std::get<NodeAddress>(addr), (NodeAddress{"127.0.0.1", static_cast<std::uint16_t>(old_primary)}));
    Request unknown;
    push_get_master_addr(unknown, "no-such-master");
    EXPECT_TRUE(std::holds_alternative<MasterUnknown>(parse_master_addr(s.call(unknown).front())));
  }
  Request role;
  push_role(role);
  const auto primary_role = std::get<RoleInfo>(parse_role(RespConn(old_primary).call(role).front()));
  EXPECT_EQ(primary_role.role, RoleInfo::Role::master);
  ASSERT_EQ(primary_role.replicas.size(), 2u);
  for (const auto& r : primary_role.replicas)
    EXPECT_NE(std::find(replica_ports.begin(), replica_ports.end(), r.port), replica_ports.end());
  const auto replica_role = std::get<RoleInfo>(parse_role(RespConn(replica_ports[0]).call(role).front()));
  EXPECT_EQ(replica_role.role, RoleInfo::Role::replica);
  EXPECT_EQ(replica_role.master->port, old_primary);
  EXPECT_EQ(replica_role.link_state, "connected");
  const auto sentinel_role = std::get<RoleInfo>(parse_role(RespConn(setup.sentinel(0).port()).call(role).front()));
  EXPECT_EQ(sentinel_role.role, RoleInfo::Role::sentinel);
  EXPECT_EQ(sentinel_role.masters, std::vector<std::string>{std::string(SentinelSetup::master_name)});

  // +switch-master on one sentinel, through the subscription table.
  RespConn watch(setup.sentinel(1).port());
  SubscriptionTable table;
  ASSERT_TRUE(subscribe_switch_master(watch, table));

  // The sentinels learnt the replicas from the primary's INFO; fail over by hand.
  RespConn s0(setup.sentinel(0).port());
  ASSERT_TRUE(eventually([&] { return s0.command({"SENTINEL", "FAILOVER", "mymaster"}).str == "OK"; }, 10s));
  const std::optional<SwitchMaster> sw = next_switch_master(watch, table, 20s);
  ASSERT_TRUE(sw.has_value()) << "no +switch-master within 20 s";
  EXPECT_EQ(sw->master_name, SentinelSetup::master_name);
  EXPECT_EQ(sw->from, (NodeAddress{"127.0.0.1", static_cast<std::uint16_t>(old_primary)}));
  EXPECT_NE(std::find(replica_ports.begin(), replica_ports.end(), sw->to.port), replica_ports.end());
  Request again;
  push_get_master_addr(again, SentinelSetup::master_name);
  EXPECT_EQ(std::get<NodeAddress>(parse_master_addr(s0.call(again).front())), sw->to);
  EXPECT_TRUE(eventually(
      [&] {
        const auto r = parse_role(RespConn(sw->to.port).call(role).front());
        return std::holds_alternative<RoleInfo>(r) && std::get<RoleInfo>(r).role == RoleInfo::Role::master;
      },
      10s));
  // The replica that was not promoted answers a write with READONLY, which is
  // retried after resolving the primary again. (The old primary is demoted
  // only when a sentinel next reads its INFO, up to 10 s later: until then
  // ROLE still says master there, which is why a client checks ROLE against
  // what the sentinels say, and follows +switch-master.)
  const int other = replica_ports[0] == sw->to.port ? replica_ports[1] : replica_ports[0];
  const Reply readonly = RespConn(other).command({"SET", "ha:x", "1"});
  ASSERT_TRUE(readonly.is_error());
  const HaDecision d = after_error(readonly.str, "127.0.0.1");
  EXPECT_EQ(d.step, HaStep::reconnect_and_retry) << readonly.str;
  EXPECT_TRUE(d.drop_connection);
}

// Losing the primary (SIGKILL): the sentinels agree it is down after
// down-after-milliseconds (500 ms here), elect a leader and promote a
// replica. Prints the time from the kill to +switch-master.
TEST(RedisSentinelIt, KillingThePrimaryPromotesAReplicaAndAnnouncesIt) {
  DLOCK_REQUIRE_OWN_REDIS();
  SentinelSetup setup;
  const int old_primary = setup.primary().port();
  RespConn watch(setup.sentinel(2).port());
  SubscriptionTable table;
  ASSERT_TRUE(subscribe_switch_master(watch, table));
  // A sentinel needs the others (hello messages every 2 s) to reach quorum.
  RespConn s0(setup.sentinel(0).port());
  ASSERT_TRUE(eventually(
      [&] {
        const Reply r = s0.command({"SENTINEL", "SENTINELS", "mymaster"});
        return r.type == Reply::Type::array && r.elements.size() == 2;
      },
      10s));

  const auto killed = std::chrono::steady_clock::now();
  setup.primary().kill();
  const std::optional<SwitchMaster> sw = next_switch_master(watch, table, 30s);
  ASSERT_TRUE(sw.has_value()) << "no +switch-master within 30 s of the kill";
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  EXPECT_EQ(sw->from.port, old_primary);
  EXPECT_TRUE(sw->to.port == setup.replica(0).port() || sw->to.port == setup.replica(1).port());
  Request role;
  push_role(role);
  EXPECT_EQ(std::get<RoleInfo>(parse_role(RespConn(sw->to.port).call(role).front())).role, RoleInfo::Role::master);
  std::printf(
      "sentinel failover after SIGKILL of the primary: +switch-master after %lld ms "
      "(down-after-milliseconds 500)\n",
      static_cast<long long>(took.count()));
}

}  // namespace
