// Redis high availability without a server (issue 14): CRC16 slots, slot
// maps from canned CLUSTER SLOTS / CLUSTER SHARDS bytes, the decision after
// an error reply, Sentinel and ROLE replies, and the HA options and URIs.
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_client.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/redis_sentinel.hpp>
#include <dlock/detail/redis_sentinel_client.hpp>
#include <dlock/error.hpp>
#include <dlock/redis_ha.hpp>
#include <dlock/redis_options.hpp>

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace {

using namespace dlock::detail::redis_proto;
using dlock::InvalidArgument;

// One reply from canned RESP bytes, through the protocol layer's parser.
Reply resp(std::string_view bytes) {
  ReplyParser p;
  p.feed(bytes);
  auto r = p.next();
  EXPECT_TRUE(r.has_value()) << (p.error() ? p.error()->message : "incomplete");
  EXPECT_EQ(p.buffered(), 0u);
  return r ? *r : Reply{};
}

// RESP helpers for writing replies readably.
std::string bulk(std::string_view s) { return "$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n"; }
std::string num(long long v) { return ":" + std::to_string(v) + "\r\n"; }
std::string arr(const std::vector<std::string>& e) {
  std::string out = "*" + std::to_string(e.size()) + "\r\n";
  for (const auto& x : e) out += x;
  return out;
}

// ---- CRC16 and slots ----

// The Redis Cluster specification: "The CRC16 ... output for '123456789' is 0x31C3".
TEST(RedisCluster, Crc16IsXmodemWithTheSpecificationsCheckValue) {
  EXPECT_EQ(crc16("123456789"), 0x31C3);
  EXPECT_EQ(crc16(""), 0);
}

// Slots as `CLUSTER KEYSLOT` answers them (checked on redis-server 7.0, and
// again against the live cluster in redis_ha_test), including the
// specification's hash tag examples.
TEST(RedisCluster, HashSlotMatchesClusterKeyslotAndHonoursHashTags) {
  EXPECT_EQ(hash_slot("123456789"), 12739);
  EXPECT_EQ(hash_slot("foo"), 12182);
  EXPECT_EQ(hash_slot("bar"), 5061);
  EXPECT_EQ(hash_slot("somekey"), 11058);
  EXPECT_EQ(hash_slot("foo{hash_tag}"), 2515);
  EXPECT_EQ(hash_slot("{user1000}.following"), hash_slot("{user1000}.followers"));
  EXPECT_EQ(hash_slot("foo{bar}{zap}"), hash_slot("bar"));   // the first tag only
  EXPECT_EQ(hash_slot("foo{}{bar}"), 8363);                  // empty tag: the whole key
  EXPECT_EQ(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));  // from the first '{' to the next '}'
  EXPECT_EQ(hash_slot("foo{{bar}}zap"), 4015);
}

// dlock's keys: lock, fence and channel of one name share a slot, for any
// prefix and for names with braces inside (validate_redis_lock_name refuses
// only a leading '}').
TEST(RedisCluster, ALocksKeyFenceAndChannelLandInOneSlot) {
  for (std::string_view prefix : {"dlock:", "", "app:locks:"}) {
    for (std::string_view name : {"orders", "a", "x{y", "x}y", "{", "{{}}", "émoji-🔒", "0123456789abcdef"}) {
      const auto k = dlock::detail::redis_keys(prefix, name);
      EXPECT_EQ(hash_slot(k.lock), hash_slot(k.fence)) << prefix << name;
      EXPECT_EQ(hash_slot(k.lock), hash_slot(k.channel)) << prefix << name;
    }
  }
  EXPECT_EQ(hash_slot("dlock:{orders}"), 105);  // CLUSTER KEYSLOT on redis-server 7.0
}

// ---- Slot maps ----

std::string node(std::string_view host, int port, std::string_view id) {
  return arr({bulk(host), num(port), bulk(id)});
}

// A 3-primary cluster with one replica each, as Redis 7 answers CLUSTER SLOTS
// (Redis 7 appends a metadata map to each node: ignored).
std::string three_shards() {
  return arr({
      arr({num(0), num(5460), node("127.0.0.1", 30001, "a1"), node("127.0.0.1", 30004, "a4")}),
      arr({num(10923), num(16383), node("127.0.0.1", 30003, "a3"),
           arr({bulk("127.0.0.1"), num(30006), bulk("a6"), arr({bulk("hostname"), bulk("n6")})})}),
      arr({num(5461), num(10922), node("127.0.0.1", 30002, "a2"), node("127.0.0.1", 30005, "a5")}),
  });
}

TEST(RedisCluster, SlotMapFromClusterSlotsRoutesEverySlot) {
  auto parsed = SlotMap::from_cluster_slots(resp(three_shards()), "10.0.0.9");
  ASSERT_TRUE(std::holds_alternative<SlotMap>(parsed)) << std::get<std::string>(parsed);
  const SlotMap& map = std::get<SlotMap>(parsed);
  EXPECT_EQ(map.served_slots(), 16384u);
  ASSERT_EQ(map.ranges().size(), 3u);
  EXPECT_EQ(map.ranges()[1].first, 5461);  // sorted by slot
  EXPECT_EQ(map.primary_for_slot(0)->port, 30001);
  EXPECT_EQ(map.primary_for_slot(5460)->port, 30001);
  EXPECT_EQ(map.primary_for_slot(5461)->port, 30002);
  EXPECT_EQ(map.primary_for_slot(16383)->port, 30003);
  EXPECT_EQ(map.primary_for_slot(16384), nullptr);
  EXPECT_EQ(map.primary_for_key("foo")->port, 30003);  // slot 12182
  EXPECT_EQ(map.primary_for_key("bar")->port, 30001);  // slot 5061
  EXPECT_EQ(map.primary_for_slot(0)->id, "a1");
  EXPECT_EQ(map.ranges()[2].replicas.at(0).port, 30006);
  const auto primaries = map.primaries();
  ASSERT_EQ(primaries.size(), 3u);
  EXPECT_EQ(primaries[0].endpoint(), "127.0.0.1:30001");
  EXPECT_EQ((ClusterNode{"::1", 7000, ""}.endpoint()), "[::1]:7000");
}

TEST(RedisCluster, SlotMapTakesTheAskedHostForAnEmptyOneAndLeavesGapsUnserved) {
  // A lone node before it met any other announces "" as its address.
  auto parsed = SlotMap::from_cluster_slots(resp(arr({arr({num(0), num(99), node("", 7000, "x")})})), "db.internal");
  ASSERT_TRUE(std::holds_alternative<SlotMap>(parsed));
  const SlotMap& map = std::get<SlotMap>(parsed);
  EXPECT_EQ(map.primary_for_slot(5)->host, "db.internal");
  EXPECT_EQ(map.primary_for_slot(100), nullptr);
  EXPECT_EQ(map.served_slots(), 100u);
}

TEST(RedisCluster, SlotMapRefusesWhatIsNotASlotTable) {
  const std::vector<std::string> bad = {
      "+OK\r\n",
      arr({num(0)}),
      arr({arr({num(0), num(16384), node("h", 1, "x")})}),        // slot out of range
      arr({arr({num(10), num(5), node("h", 1, "x")})}),           // first > last
      arr({arr({num(0), num(5), arr({bulk("h"), num(0)})})}),     // port 0
      arr({arr({num(0), num(5), arr({bulk("?"), num(7000)})})}),  // unknown endpoint
      arr({arr({num(0), num(10), node("h", 1, "x")}), arr({num(10), num(20), node("h", 2, "y")})}),  // overlap
      "-ERR This instance has cluster support disabled\r\n",
  };
  for (const auto& b : bad) {
    const auto parsed = SlotMap::from_cluster_slots(resp(b), "h");
    EXPECT_TRUE(std::holds_alternative<std::string>(parsed)) << b;
  }
}

std::string shard_node(std::string_view id, int port, std::string_view role, std::string_view health) {
  return arr({bulk("id"), bulk(id), bulk("port"), num(port), bulk("ip"), bulk("127.0.0.1"), bulk("endpoint"),
              bulk("127.0.0.1"), bulk("role"), bulk(role), bulk("replication-offset"), num(72156), bulk("health"),
              bulk(health)});
}

TEST(RedisCluster, SlotMapFromClusterShardsSkipsNodesThatAreNotOnline) {
  const std::string shards = arr({
      arr({bulk("slots"), arr({num(0), num(100), num(200), num(16383)}), bulk("nodes"),
           arr({shard_node("p1", 30001, "master", "online"), shard_node("r1", 30004, "replica", "online")})}),
      arr({bulk("slots"), arr({num(101), num(199)}), bulk("nodes"),
           arr({shard_node("p2", 30002, "master", "fail"), shard_node("r2", 30005, "replica", "online")})}),
  });
  auto parsed = SlotMap::from_cluster_shards(resp(shards), "127.0.0.1");
  ASSERT_TRUE(std::holds_alternative<SlotMap>(parsed)) << std::get<std::string>(parsed);
  const SlotMap& map = std::get<SlotMap>(parsed);
  EXPECT_EQ(map.primary_for_slot(0)->id, "p1");
  EXPECT_EQ(map.primary_for_slot(16383)->id, "p1");
  EXPECT_EQ(map.primary_for_slot(150), nullptr);  // its primary failed: unserved until the failover
  EXPECT_EQ(map.served_slots(), 16384u - 99u);
  EXPECT_EQ(map.ranges().at(0).replicas.at(0).id, "r1");
  EXPECT_TRUE(
      std::holds_alternative<std::string>(SlotMap::from_cluster_shards(resp(arr({arr({bulk("slots")})})), "h")));
}

TEST(RedisCluster, MovedPatchesOneSlotUntilTheNextRefresh) {
  auto map = std::get<SlotMap>(SlotMap::from_cluster_slots(resp(three_shards()), "h"));
  map.apply_moved(Redirect{.slot = 12182, .host = "127.0.0.1", .port = 30001}, "127.0.0.1");
  EXPECT_EQ(map.primary_for_key("foo")->port, 30001);
  EXPECT_EQ(map.primary_for_slot(12183)->port, 30003);
  map.apply_moved(Redirect{.slot = 12183, .host = "", .port = 30009}, "10.1.1.1");
  EXPECT_EQ(map.primary_for_slot(12183)->endpoint(), "10.1.1.1:30009");
  SlotMap empty;
  empty.apply_moved(Redirect{.slot = 1, .host = "h", .port = 1}, "h");
  EXPECT_EQ(empty.primary_for_slot(1)->host, "h");
  EXPECT_EQ(empty.primary_for_slot(2), nullptr);
}

// ---- Decisions after an error reply ----

TEST(RedisCluster, MovedRefreshesTheMapAndGoesToTheNamedNode) {
  const HaDecision d = after_error("MOVED 3999 127.0.0.1:6381", "127.0.0.1");
  EXPECT_EQ(d.step, HaStep::follow_moved);
  EXPECT_TRUE(d.refresh_map);
  EXPECT_FALSE(d.drop_connection);
  EXPECT_EQ(d.redirect, (Redirect{3999, "127.0.0.1", 6381}));
  // Redis 7 with an unknown endpoint: the sender's host.
  EXPECT_EQ(after_error("MOVED 3999 :6381", "10.0.0.2").redirect, (Redirect{3999, "10.0.0.2", 6381}));
}

TEST(RedisCluster, AskIsFollowedOnceWithoutTouchingTheMap) {
  const HaDecision d = after_error("ASK 3999 ::1:6381", "h");  // Redis writes IPv6 without brackets
  EXPECT_EQ(d.step, HaStep::follow_ask);
  EXPECT_FALSE(d.refresh_map);
  EXPECT_EQ(d.redirect, (Redirect{3999, "::1", 6381}));
  Request r;
  push_asking(r);
  EXPECT_EQ(r.payload(), "*1\r\n$6\r\nASKING\r\n");
}

TEST(RedisCluster, RedirectsStopAfterTheLimit) {
  EXPECT_EQ(after_error("MOVED 1 h:1", "h", max_redirects - 1).step, HaStep::follow_moved);
  // Out of redirects: a slot that is moving; retried later on a fresh map (issue 14).
  EXPECT_EQ(after_error("MOVED 1 h:1", "h", max_redirects).step, HaStep::retry_later);
  EXPECT_TRUE(after_error("MOVED 1 h:1", "h", max_redirects).refresh_map);
  EXPECT_FALSE(after_error("MOVED 1 h:1", "h", max_redirects).redirect.has_value());
  EXPECT_EQ(after_error("ASK 1 h:1", "h", max_redirects).step, HaStep::retry_later);
  EXPECT_TRUE(after_error("ASK 1 h:1", "h", max_redirects).refresh_map);
  EXPECT_EQ(after_error("MOVED nonsense", "h").step, HaStep::fail);
}

TEST(RedisCluster, TransientServerStatesAreRetriedNotThrown) {
  struct Case {
    std::string_view error;
    HaStep step;
    bool refresh, drop;
  };
  const Case cases[] = {
      {"READONLY You can't write against a read only replica.", HaStep::reconnect_and_retry, true, true},
      {"ERR Error running script (call to f_x): @user_script:3: @user_script: 3: -READONLY You can't write "
       "against a read only replica.",
       HaStep::reconnect_and_retry, true, true},
      {"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", HaStep::reconnect_and_retry,
       true, true},
      {"LOADING Redis is loading the dataset in memory", HaStep::retry_later, false, false},
      {"TRYAGAIN Multiple keys request during rehashing of slot", HaStep::retry_later, false, false},
      {"CLUSTERDOWN The cluster is down", HaStep::retry_later, true, false},
      {"CLUSTERDOWN Hash slot not served", HaStep::retry_later, true, false},
      {"BUSY Redis is busy running a script.", HaStep::retry_later, false, false},
      {"WRONGTYPE Operation against a key holding the wrong kind of value", HaStep::fail, false, false},
      {"NOPERM this user has no permissions", HaStep::fail, false, false},
      {"OOM command not allowed when used memory > 'maxmemory'.", HaStep::fail, false, false},
      {"ERR unknown command", HaStep::fail, false, false},
  };
  for (const auto& c : cases) {
    const HaDecision d = after_error(c.error, "h");
    EXPECT_EQ(d.step, c.step) << c.error;
    EXPECT_EQ(d.refresh_map, c.refresh) << c.error;
    EXPECT_EQ(d.drop_connection, c.drop) << c.error;
    // Agrees with the protocol layer's is_transient for every non-redirect kind.
    EXPECT_EQ(d.step != HaStep::fail, is_transient(classify_error(c.error).kind)) << c.error;
  }
  EXPECT_EQ(after_error_kind(ErrorKind::moved).step, HaStep::fail);
}

// ---- Sentinel ----

TEST(RedisSentinel, GetMasterAddrByName) {
  Request r;
  push_get_master_addr(r, "mymaster");
  EXPECT_EQ(r.payload(), arr({bulk("SENTINEL"), bulk("get-master-addr-by-name"), bulk("mymaster")}));
  EXPECT_EQ(std::get<NodeAddress>(parse_master_addr(resp(arr({bulk("127.0.0.1"), bulk("6380")})))),
            (NodeAddress{"127.0.0.1", 6380}));
  EXPECT_TRUE(std::holds_alternative<MasterUnknown>(parse_master_addr(resp("*-1\r\n"))));
  EXPECT_TRUE(std::holds_alternative<MasterUnknown>(parse_master_addr(resp("$-1\r\n"))));
  for (const std::string& bad : {arr({bulk("h"), bulk("0")}), arr({bulk("h"), bulk("70000")}), arr({bulk("h")}),
                                 arr({bulk(""), bulk("1")}), std::string("+OK\r\n")}) {
    EXPECT_TRUE(std::holds_alternative<ReplyFault>(parse_master_addr(resp(bad)))) << bad;
  }
  const auto refused = parse_master_addr(resp("-NOAUTH Authentication required.\r\n"));
  EXPECT_EQ(std::get<ReplyFault>(refused).kind, ErrorKind::noauth);
}

TEST(RedisSentinel, RoleOfAPrimaryAReplicaAndASentinel) {
  const auto master = parse_role(resp(arr({bulk("master"), num(3129659),
                                           arr({arr({bulk("127.0.0.1"), bulk("9001"), bulk("3129242")}),
                                                arr({bulk("127.0.0.1"), bulk("9002"), bulk("3129543")})})})));
  const auto& m = std::get<RoleInfo>(master);
  EXPECT_EQ(m.role, RoleInfo::Role::master);
  EXPECT_EQ(m.offset, 3129659);
  EXPECT_EQ(m.replicas, (std::vector<NodeAddress>{{"127.0.0.1", 9001}, {"127.0.0.1", 9002}}));

  const auto replica =
      parse_role(resp(arr({bulk("slave"), bulk("127.0.0.1"), num(9000), bulk("connected"), num(3167038)})));
  const auto& s = std::get<RoleInfo>(replica);
  EXPECT_EQ(s.role, RoleInfo::Role::replica);
  EXPECT_EQ(s.master, (NodeAddress{"127.0.0.1", 9000}));
  EXPECT_EQ(s.link_state, "connected");
  EXPECT_EQ(s.offset, 3167038);

  const auto sentinel = parse_role(resp(arr({bulk("sentinel"), arr({bulk("resque-master"), bulk("cache")})})));
  EXPECT_EQ(std::get<RoleInfo>(sentinel).masters, (std::vector<std::string>{"resque-master", "cache"}));

  for (const std::string& bad :
       {arr({bulk("master")}), arr({bulk("slave"), bulk("h"), num(0), bulk("connected"), num(1)}),
        arr({bulk("primary"), num(1), arr({})}), arr({bulk("master"), num(1), arr({arr({bulk("h")})})}),
        std::string(":1\r\n")}) {
    EXPECT_TRUE(std::holds_alternative<ReplyFault>(parse_role(resp(bad)))) << bad;
  }
}

TEST(RedisSentinel, SwitchMasterMessage) {
  EXPECT_EQ(parse_switch_master("mymaster 127.0.0.1 6379 127.0.0.1 6380"),
            (SwitchMaster{"mymaster", {"127.0.0.1", 6379}, {"127.0.0.1", 6380}}));
  EXPECT_EQ(parse_switch_master("m ::1 6379 ::1 6380")->to, (NodeAddress{"::1", 6380}));
  for (std::string_view bad : {"", "m 127.0.0.1 6379 127.0.0.1", "m 127.0.0.1 6379 127.0.0.1 6380 extra",
                               "m  127.0.0.1 6379 127.0.0.1 6380", "m h x h 1", "m h 1 h 0"}) {
    EXPECT_FALSE(parse_switch_master(bad).has_value()) << bad;
  }
  // The channel is subscribed through the same table as the release channels.
  SubscriptionTable table;
  table.want(switch_master_channel);
  (void)table.take_commands();
  EXPECT_EQ(table.on_reply(resp(arr({bulk("subscribe"), bulk("+switch-master"), num(1)}))).kind,
            PubSubEvent::Kind::subscribed);
  const PubSubEvent e =
      table.on_reply(resp(arr({bulk("message"), bulk("+switch-master"), bulk("mymaster 127.0.0.1 1 127.0.0.1 2")})));
  ASSERT_EQ(e.kind, PubSubEvent::Kind::message);
  EXPECT_EQ(parse_switch_master(e.payload)->to.port, 2);
}

TEST(RedisSentinel, RotationStartsWithTheLastSentinelThatAnswered) {
  SentinelRotation r(3);
  EXPECT_EQ(r.order(), (std::vector<std::size_t>{0, 1, 2}));
  r.answered(2);
  EXPECT_EQ(r.order(), (std::vector<std::size_t>{2, 0, 1}));
  r.answered(7);  // out of range: ignored
  EXPECT_EQ(r.order(), (std::vector<std::size_t>{2, 0, 1}));
  EXPECT_TRUE(SentinelRotation(0).order().empty());
}

// While no usable primary is found, rounds are spaced 50, 100, 200, 400,
// then 500 ms apart; a success or a +switch-master lets the next start at once.
TEST(RedisSentinel, DiscoveryRoundsThatFindNoPrimaryAreSpacedOut) {
  using std::chrono::milliseconds;
  DiscoveryPacer p;
  const DiscoveryPacer::Clock::time_point t0{std::chrono::seconds(100)};
  EXPECT_TRUE(p.may_start(t0));
  auto t = t0;
  for (const long expected : {50, 100, 200, 400, 500, 500}) {
    p.failed(t, "no majority");
    EXPECT_FALSE(p.may_start(t + milliseconds(expected - 1))) << expected;
    EXPECT_TRUE(p.may_start(t + milliseconds(expected))) << expected;
    EXPECT_EQ(p.not_before(), t + milliseconds(expected));
    t += milliseconds(expected);
  }
  EXPECT_EQ(p.last_failure(), "no majority");
  p.news();  // +switch-master: at once, but a failure after it keeps the spacing
  EXPECT_TRUE(p.may_start(t));
  p.failed(t, "ROLE says replica");
  EXPECT_FALSE(p.may_start(t + milliseconds(499)));
  p.succeeded();
  EXPECT_TRUE(p.may_start(t));
  p.failed(t, "again");  // starts over at 50 ms
  EXPECT_TRUE(p.may_start(t + milliseconds(50)));
  EXPECT_FALSE(p.may_start(t + milliseconds(49)));
}

// SENTINEL MASTER's flat field/value reply: the address and config-epoch.
TEST(RedisSentinel, SentinelMasterReplyGivesTheAddressAndEpoch) {
  const Reply r = resp(arr({bulk("name"), bulk("mymaster"), bulk("ip"), bulk("127.0.0.1"), bulk("port"), bulk("6380"),
                            bulk("flags"), bulk("master"), bulk("config-epoch"), bulk("3")}));
  EXPECT_EQ(std::get<MasterView>(parse_sentinel_master(r)), (MasterView{{"127.0.0.1", 6380}, 3}));
  EXPECT_TRUE(
      std::holds_alternative<MasterUnknown>(parse_sentinel_master(resp("-ERR No such master with that name\r\n"))));
  for (const std::string& bad :
       {arr({bulk("ip"), bulk("127.0.0.1"), bulk("port"), bulk("6380")}),  // no epoch
        arr({bulk("ip"), bulk("127.0.0.1"), bulk("port"), bulk("0"), bulk("config-epoch"), bulk("1")}),
        arr({bulk("ip"), bulk("127.0.0.1"), bulk("port"), bulk("1"), bulk("config-epoch"), bulk("-1")}),
        arr({bulk("ip"), bulk("127.0.0.1"), bulk("port")}), std::string("-ERR other\r\n")}) {
    EXPECT_TRUE(std::holds_alternative<ReplyFault>(parse_sentinel_master(resp(bad)))) << bad;
  }
}

// The defect the 4-process pause test found: the first answer came from a
// sentinel that had not learned the failover (epoch 1, the old primary A);
// the newest view (epoch 2, B) is the one used.
// A round that began before another round adopted a newer view (or before a
// +switch-master was heard) and then found ROLE master at its own choice must
// not be used: adopt() refuses it and the caller throws (found by review:
// before, adopt() returned quietly and open() used the connection anyway).
TEST(RedisSentinel, AChoiceSupersededWhileItsRoleWasCheckedIsRefused) {
  const NodeAddress p1{"127.0.0.1", 1};
  const NodeAddress p2{"127.0.0.1", 2};
  const SentinelKnowledge at5{MasterView{p2, 5}, std::nullopt, 0};
  EXPECT_TRUE(superseded(MasterView{p1, 4}, at5).has_value()) << "behind the epoch adopted meanwhile";
  EXPECT_FALSE(superseded(MasterView{p1, 5}, at5).has_value())
      << "another address at the same epoch, which a majority named: not refused (it would strand the client)";
  EXPECT_FALSE(superseded(MasterView{p2, 5}, at5).has_value());
  EXPECT_FALSE(superseded(MasterView{p1, 6}, at5).has_value());
  EXPECT_FALSE(superseded(MasterView{p1, 4}, {}).has_value()) << "nothing known yet";
  const SentinelKnowledge heard{MasterView{p1, 4}, SwitchMaster{"m", p1, p2}, 4};
  EXPECT_TRUE(superseded(MasterView{p1, 4}, heard).has_value()) << "the announced old primary";
  EXPECT_FALSE(superseded(MasterView{p2, 5}, heard).has_value());

  dlock::RedisOptions o;
  o.sentinel = dlock::RedisSentinelOptions{.master_name = "m", .sentinels = {{"127.0.0.1", 26379}}};
  dlock::detail::SentinelClient client(o);  // connects to nothing until asked
  dlock::RedisOptions at_p2 = o, at_p1 = o;
  at_p2.port = 2;
  at_p1.port = 1;
  ASSERT_TRUE(client.adopt(PrimaryChoice{MasterView{p2, 5}, 0}, at_p2));
  EXPECT_FALSE(client.adopt(PrimaryChoice{MasterView{p1, 4}, 0}, at_p1));
  EXPECT_EQ(client.last_primary()->port, 2);
  EXPECT_EQ(client.knowledge().chosen, (MasterView{p2, 5}));
  try {
    client.throw_superseded(PrimaryChoice{MasterView{p1, 4}, 0});
    ADD_FAILURE() << "throw_superseded returned";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("behind epoch 5"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(client.adopt(PrimaryChoice{MasterView{p1, 6}, 0}, at_p1));
  EXPECT_EQ(client.last_primary()->port, 1);
}

TEST(RedisSentinel, ChoosesTheHighestEpochFromAMajority) {
  const NodeAddress a{"127.0.0.1", 1};
  const NodeAddress b{"127.0.0.1", 2};
  const auto choose = [](std::vector<SentinelAnswer> answers, const SentinelKnowledge& known = {}) {
    return choose_primary(answers, 3, known);
  };
  // A lagging sentinel answers first: the higher epoch wins, and its sentinel is asked first next time.
  auto c = choose({{0, {a, 1}}, {1, {b, 2}}});
  ASSERT_TRUE(std::holds_alternative<PrimaryChoice>(c));
  EXPECT_EQ(std::get<PrimaryChoice>(c).view, (MasterView{b, 2}));
  EXPECT_EQ(std::get<PrimaryChoice>(c).sentinel, 1u);
  // All agree (a tie on the same address).
  c = choose({{0, {a, 1}}, {1, {a, 1}}, {2, {a, 1}}});
  EXPECT_EQ(std::get<PrimaryChoice>(c).view, (MasterView{a, 1}));
  // No quorum: one answer of three (it may be the lagging one), none at all.
  EXPECT_TRUE(std::holds_alternative<NoPrimary>(choose({{2, {b, 2}}})));
  EXPECT_TRUE(std::holds_alternative<NoPrimary>(choose({})));
  EXPECT_TRUE(std::holds_alternative<NoPrimary>(choose_primary({{0, {a, 1}}}, 2, {}))) << "a majority of 2 is 2";
  EXPECT_TRUE(std::holds_alternative<PrimaryChoice>(choose_primary({{0, {a, 1}}}, 1, {})));
  // A tie on the epoch with different addresses: ambiguous, refused.
  const auto tie = choose({{0, {a, 2}}, {1, {b, 2}}});
  ASSERT_TRUE(std::holds_alternative<NoPrimary>(tie));
  EXPECT_NE(std::get<NoPrimary>(tie).why.find("disagree"), std::string::npos) << std::get<NoPrimary>(tie).why;
  // Never behind what this client used: a majority of lagging sentinels is refused.
  const SentinelKnowledge used_b{MasterView{b, 2}, std::nullopt, 0};
  EXPECT_TRUE(std::holds_alternative<NoPrimary>(choose({{0, {a, 1}}, {2, {a, 1}}}, used_b)));
  // Another address at the epoch used: a majority names it (the adopted view was a
  // failover's passing state), else refused.
  EXPECT_EQ(std::get<PrimaryChoice>(choose({{0, {a, 2}}, {2, {a, 2}}}, used_b)).view, (MasterView{a, 2}));
  EXPECT_FALSE(std::holds_alternative<NoPrimary>(choose_primary({{0, {a, 2}}}, 1, used_b))) << "1 of 1 is a majority";
  EXPECT_TRUE(std::holds_alternative<NoPrimary>(choose_primary({{0, {a, 2}}, {1, {a, 1}}, {2, {a, 1}}}, 5, used_b)))
      << "1 of 5 names A at epoch 2";
  EXPECT_EQ(std::get<PrimaryChoice>(choose({{0, {b, 2}}, {2, {a, 1}}}, used_b)).view, (MasterView{b, 2}));
  EXPECT_EQ(std::get<PrimaryChoice>(choose({{0, {a, 3}}, {2, {b, 2}}}, used_b)).view, (MasterView{a, 3}))
      << "a later failover back to A";
  // +switch-master A -> B heard while epoch 1 was known: A at epoch 1 is the old primary; A at epoch 3 is not.
  const SentinelKnowledge heard{MasterView{a, 1}, SwitchMaster{"mymaster", a, b}, 1};
  EXPECT_TRUE(std::holds_alternative<NoPrimary>(choose({{0, {a, 1}}, {1, {a, 1}}}, heard)));
  EXPECT_EQ(std::get<PrimaryChoice>(choose({{0, {a, 1}}, {1, {b, 2}}}, heard)).view, (MasterView{b, 2}));
  EXPECT_EQ(std::get<PrimaryChoice>(choose({{0, {a, 3}}, {1, {b, 2}}}, heard)).view, (MasterView{a, 3}));
}

// ---- Options and URIs ----

std::string message_of(auto&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

TEST(RedisHaOptions, SentinelUri) {
  const auto u = dlock::parse_redis_sentinel_uri("redis+sentinel://h1:26380,[::1]:26381,h3/mymaster?db=2");
  EXPECT_EQ(u.sentinel.master_name, "mymaster");
  EXPECT_EQ(u.sentinel.sentinels, (std::vector<dlock::RedisAddress>{{"h1", 26380}, {"::1", 26381}, {"h3", 26379}}));
  EXPECT_EQ(u.database, 2);
  EXPECT_TRUE(u.password.empty());

  dlock::RedisSentinelOptions base{
      .master_name = "old", .sentinels = {{"x", 1}}, .username = "s", .password = "spw", .tls = dlock::TlsOptions{}};
  const auto c = dlock::parse_redis_sentinel_uri("redis+sentinel://app:p@ss/w?rd#@h1/m%2Dx", base);
  EXPECT_EQ(c.username, "app");
  EXPECT_EQ(c.password, "p@ss/w?rd#");  // the credentials end at the last '@'
  EXPECT_EQ(c.sentinel.master_name, "m-x");
  EXPECT_EQ(c.sentinel.password, "spw");  // the sentinels' own credentials and TLS come from base
  EXPECT_TRUE(c.sentinel.tls.has_value());
  EXPECT_EQ(c.sentinel.sentinels, (std::vector<dlock::RedisAddress>{{"h1", 26379}}));
}

TEST(RedisHaOptions, ClusterUri) {
  const auto u = dlock::parse_redis_cluster_uri("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2,[fe80::1]:7002");
  EXPECT_EQ(u.cluster.seeds,
            (std::vector<dlock::RedisAddress>{{"10.0.0.1", 7000}, {"10.0.0.2", 6379}, {"fe80::1", 7002}}));
  EXPECT_EQ(u.password, "secret");
  EXPECT_TRUE(u.username.empty());
  EXPECT_EQ(dlock::parse_redis_cluster_uri("redis+cluster://h/").cluster.seeds.size(), 1u);
}

TEST(RedisHaOptions, BadUrisAreRefusedWithoutQuotingThem) {
  const std::string_view secret = "s3cr3t";
  const std::vector<std::string> bad = {
      "redis+sentinel://:s3cr3t@h1,h2",         // no master name
      "redis+sentinel://:s3cr3t@h1,,h2/m",      // empty host
      "redis+sentinel://:s3cr3t@h1:0/m",        // port out of range
      "redis+sentinel://:s3cr3t@h1:s3cr3t/m",   // port not a number
      "redis+sentinel://:s3cr3t@[::1/m",        // unterminated IPv6
      "redis+sentinel://:s3cr3t@::1/m",         // IPv6 without brackets
      "redis+sentinel://:s3cr3t@h/m?s3cr3t=1",  // unknown parameter
      "redis+sentinel://:s3cr3t@h/m%2",         // bad percent-encoding
      "redis+sentinel://:s3cr3t@h/m%20x",       // space in the master name
      "redis+sentinel://s3cr3t@h/m",            // credentials without ':'
      "redis+sentinel://u:@h/m",                // user without password
      "redis://:s3cr3t@h/m",                    // the other scheme
      "redis+cluster://:s3cr3t@h1/3",           // a database
      "redis+cluster://:s3cr3t@h1?db=1",        // a parameter
      "redis+cluster://:s3cr3t@",               // no host
      "redis+cluster//:s3cr3t@h",               // no scheme
      "redis+cluster://:s3cr3t@h%20x",          // '%' in a host
  };
  for (const auto& uri : bad) {
    const std::string m = message_of([&] {
      if (uri.starts_with("redis+cluster")) {
        (void)dlock::parse_redis_cluster_uri(uri);
      } else {
        (void)dlock::parse_redis_sentinel_uri(uri);
      }
    });
    EXPECT_NE(m, "(nothing thrown)") << uri;
    EXPECT_EQ(m.find(secret), std::string::npos) << uri << " -> " << m;
    EXPECT_TRUE(m.starts_with("dlock: invalid Redis URI (not shown: it may contain a password): ")) << m;
  }
}

TEST(RedisHaOptions, ValidationNamesTheField) {
  using dlock::detail::validate;
  EXPECT_NE(message_of([] {
              validate(dlock::RedisSentinelOptions{.sentinels = {{"h", 1}}});
            }).find("RedisSentinelOptions.master_name"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              validate(dlock::RedisSentinelOptions{.master_name = "m"});
            }).find("RedisSentinelOptions.sentinels must name at least one server"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              validate(dlock::RedisSentinelOptions{.master_name = "m", .sentinels = {{"h", 1}, {"h", 0}}});
            }).find("RedisSentinelOptions.sentinels[1].port"),
            std::string::npos);
  const std::string pw = message_of([] {
    validate(dlock::RedisSentinelOptions{.master_name = "m", .sentinels = {{"h", 1}}, .username = "u", .password = {}});
  });
  EXPECT_NE(pw.find("RedisSentinelOptions.username"), std::string::npos);
  EXPECT_NE(message_of([] {
              validate(dlock::RedisSentinelOptions{
                  .master_name = "m", .sentinels = {{"h", 1}}, .tls = dlock::TlsOptions{.cert_file = "c"}});
            }).find("RedisSentinelOptions.tls.key_file"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              validate(dlock::RedisClusterOptions{.seeds = {{"", 7000}}});
            }).find("RedisClusterOptions.seeds[0].host"),
            std::string::npos);
  EXPECT_EQ(message_of([] { validate(dlock::RedisClusterOptions{.seeds = {{"h", 7000}}}); }), "(nothing thrown)");
}

}  // namespace

TEST(RedisHaOptions, RedisOptionsTakeTheSentinelUri) {
  dlock::RedisOptions base;
  base.key_prefix = "app:";
  base.sentinel = dlock::RedisSentinelOptions{
      .master_name = "old", .sentinels = {}, .username = {}, .password = "sentinel-pw", .tls = {}};
  const dlock::RedisOptions o =
      dlock::parse_redis_uri("redis+sentinel://user:data-pw@10.0.0.1:26380,10.0.0.2/mymaster?db=2", base);
  ASSERT_TRUE(o.sentinel);
  EXPECT_EQ(o.sentinel->master_name, "mymaster");
  EXPECT_EQ(o.sentinel->sentinels, (std::vector<dlock::RedisAddress>{{"10.0.0.1", 26380}, {"10.0.0.2", 26379}}));
  EXPECT_EQ(o.sentinel->password, "sentinel-pw");  // the sentinels' credentials come from base
  EXPECT_EQ(o.username, "user");                   // the URI's are the data nodes'
  EXPECT_EQ(o.password, "data-pw");
  EXPECT_EQ(o.database, 2);
  EXPECT_EQ(o.key_prefix, "app:");
  const std::string endpoint = dlock::detail::redis_endpoint(o);
  EXPECT_NE(endpoint.find("mymaster"), std::string::npos) << endpoint;
  EXPECT_EQ(endpoint.find("pw"), std::string::npos) << endpoint;

  dlock::RedisOptions with_socket = o;
  with_socket.unix_socket = "/tmp/redis.sock";
  EXPECT_THROW(dlock::detail::validate(with_socket), InvalidArgument);
  dlock::RedisOptions no_sentinels = o;
  no_sentinels.sentinel->sentinels.clear();
  EXPECT_THROW(dlock::detail::validate(no_sentinels), InvalidArgument);
}

TEST(RedisHaOptions, RedisOptionsTakeTheClusterUri) {
  dlock::RedisOptions base;
  base.key_prefix = "app:";
  base.database = 3;  // a cluster has only database 0
  const dlock::RedisOptions o = dlock::parse_redis_uri("redis+cluster://user:data-pw@10.0.0.1:7000,10.0.0.2", base);
  ASSERT_TRUE(o.cluster);
  EXPECT_FALSE(o.sentinel);
  EXPECT_EQ(o.cluster->seeds, (std::vector<dlock::RedisAddress>{{"10.0.0.1", 7000}, {"10.0.0.2", 6379}}));
  EXPECT_EQ(o.username, "user");
  EXPECT_EQ(o.password, "data-pw");
  EXPECT_EQ(o.database, 0);
  EXPECT_EQ(o.key_prefix, "app:");
  EXPECT_EQ(dlock::detail::redis_endpoint(o), "Redis Cluster (seeds 10.0.0.1:7000,10.0.0.2:6379)");

  dlock::RedisOptions with_db = o;
  with_db.database = 1;
  EXPECT_NE(message_of([&] { dlock::detail::validate(with_db); }).find("RedisOptions.database"), std::string::npos);
  dlock::RedisOptions with_sentinel = o;
  with_sentinel.sentinel = dlock::RedisSentinelOptions{
      .master_name = "m", .sentinels = {{"h", 26379}}, .username = {}, .password = {}, .tls = {}};
  EXPECT_NE(message_of([&] { dlock::detail::validate(with_sentinel); }).find("RedisOptions.cluster"),
            std::string::npos);
  dlock::RedisOptions no_seeds = o;
  no_seeds.cluster->seeds.clear();
  EXPECT_THROW(dlock::detail::validate(no_seeds), InvalidArgument);
  // A redis+sentinel:// URI over cluster options leaves no cluster behind.
  EXPECT_FALSE(dlock::parse_redis_uri("redis+sentinel://h/m", o).cluster);
}

TEST(RedisCluster, CallsAreRoutedByTheirFirstKeyAndCommandsByTheirFirstArgument) {
  const auto keys = dlock::detail::redis_keys("p:", "orders:42");
  const auto acquire = acquire_call(keys, "owner", std::chrono::seconds(10), std::chrono::seconds(10));
  EXPECT_EQ(dlock::detail::cluster_route_key(acquire), keys.lock);
  // Every script's first key is the lock key: one slot per lock name.
  EXPECT_EQ(dlock::detail::cluster_route_key(release_call(keys, "owner", Publish::yes)), keys.lock);
  EXPECT_EQ(dlock::detail::cluster_route_key(extend_call(keys.lock, "owner", std::chrono::seconds(1))), keys.lock);
  EXPECT_EQ(hash_slot(dlock::detail::cluster_route_key(acquire)), hash_slot(keys.fence));
  EXPECT_EQ(dlock::detail::cluster_route_key(ScriptCall{}), "");
  const std::string_view set[] = {"SET", "p:waiting:w", "v"};
  EXPECT_EQ(dlock::detail::cluster_route_key(set), "p:waiting:w");
  const std::string_view ping[] = {"PING"};
  EXPECT_EQ(dlock::detail::cluster_route_key(ping), "");
}

TEST(RedisCluster, AClusterClientRefusesToServeAsOneServer) {
  // Redlock's fan_out takes connections from a node's own pool: with a
  // cluster that pool would reach host:port, not the lock's shard.
  dlock::detail::RedisClient client(dlock::parse_redis_uri("redis+cluster://127.0.0.1:1"));
  ASSERT_NE(client.cluster(), nullptr);
  const std::string m = message_of([&] { (void)client.take(); });
  EXPECT_NE(m.find("Redis Cluster (seeds 127.0.0.1:1)"), std::string::npos) << m;
  EXPECT_NE(m.find("Redlock"), std::string::npos) << m;
}
