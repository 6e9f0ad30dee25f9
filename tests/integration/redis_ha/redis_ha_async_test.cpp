// The asynchronous API through Redis Sentinel and on a Redis Cluster (issue
// 13; detail::AsyncRoute in src/redis/redis_async_ha.cpp), on real servers
// from tests/integration/support/redis_ha.hpp:
//   - Sentinel: coroutines on one io_context thread lock three names while
//     the primary is SIGKILLed; their acquires resume on the promoted
//     replica, a fenced resource never sees a token at or below one it saw,
//     and a waiter with a long backoff is woken by a release on the new
//     primary;
//   - Cluster: 120 coroutines on one thread over names on every shard keep
//     exact counters and increasing tokens; a slot migrated under a held
//     lock is followed (ASK, then MOVED) by asynchronous acquires;
//   - Cluster failover: coroutines resume on the replica promoted after a
//     SIGKILL of their shard's primary, with tokens that only increase;
//   - Redlock's asynchronous rounds refuse a Cluster node as the blocking
//     ones do.
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "support/async_checks.hpp"
#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
namespace asio = boost::asio;
using dlock::Lock;
using dlock::LockOptions;
using dlock::RedisBackend;
using dlock::test::eventually;
using dlock::test::RespConn;
using Clock = std::chrono::steady_clock;

namespace {

// Coroutines on `io` that lock `names` names (base + index) in turn until
// `stop`, every token written to a FencedResource. Errors are counted (an
// acquire must not fail; a release broken by a failover is tolerated: the
// lock expires by its TTL).
struct AsyncTraffic {
  AsyncTraffic(asio::io_context& io_, RedisBackend& redis_, std::string base_, int names_)
      : io(io_), redis(redis_), base(std::move(base_)), names(names_) {}
  asio::io_context& io;
  RedisBackend& redis;
  std::string base;
  int names;
  bool stop = false;
  int done = 0, running = 0, failed = 0;
  std::string first_error;
  dlock::test::FencedResource resource;
  std::shared_ptr<dlock::test::Quiet> quiet = std::make_shared<dlock::test::Quiet>();

  void spawn(int coroutines) {
    for (int c = 0; c < coroutines; ++c) {
      ++running;
      asio::co_spawn(
          io,
          [this, c]() -> asio::awaitable<void> {
            for (int i = 0; !stop; ++i) {
              const std::string name = base + std::to_string((c + i) % names);
              Lock<RedisBackend> lock(redis, name,
                                      LockOptions{.ttl = 2s,
                                                  .retry = {.initial_delay = 5ms, .max_delay = 100ms},
                                                  .acquire_timeout = 20s,
                                                  .observer = quiet});
              try {
                auto g = co_await lock.async_acquire(asio::use_awaitable);
                resource.write(name, g.fencing_token());
                try {
                  co_await g.async_release(asio::use_awaitable);
                } catch (const boost::system::system_error& e) {
                  const auto ec = dlock::to_std(e.code());
                  if (ec != dlock::errc::connection && ec != dlock::errc::timeout) throw;
                }
                ++done;
              } catch (const std::exception& e) {
                if (first_error.empty()) first_error = e.what();
                ++failed;
                break;
              }
            }
            --running;
          },
          asio::detached);
    }
  }
  // Runs the loop until `by` more cycles completed (false on an error or after `within`).
  bool progressed(int by, std::chrono::seconds within) {
    const int from = done;
    const auto until = Clock::now() + within;
    while (done < from + by && failed == 0 && Clock::now() < until) io.run_one_for(100ms);
    return done >= from + by && failed == 0;
  }
  void finish() {
    stop = true;
    const auto until = Clock::now() + 30s;
    while (running > 0 && Clock::now() < until) io.run_one_for(100ms);
  }
};

TEST(RedisSentinelAsync, CoroutinesResumeOnThePromotedReplicaAfterSigkillWithTokensThatOnlyIncrease) {
  DLOCK_REQUIRE_OWN_REDIS();
  dlock::test::SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  RedisBackend redis(dlock::test::sentinel_uri(setup), dlock::test::sentinel_test_options("sa:"));
  const int old_primary = setup.primary().port();
  asio::io_context io;
  AsyncTraffic traffic(io, redis, "s", 3);
  traffic.spawn(12);
  ASSERT_TRUE(traffic.progressed(100, 15s)) << traffic.first_error;
  const auto killed = Clock::now();
  setup.primary().kill();
  const bool resumed = traffic.progressed(1, 30s);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed);
  const bool more = resumed && traffic.progressed(100, 15s);
  traffic.finish();
  EXPECT_EQ(traffic.failed, 0) << traffic.first_error;
  ASSERT_TRUE(resumed && more) << "the asynchronous acquires did not resume after the primary was killed";
  EXPECT_EQ(traffic.running, 0);
  EXPECT_EQ(traffic.resource.violations(), 0) << "a fenced resource saw a token at or below one it had seen";
  const auto now_at = redis.node().current_server();
  ASSERT_TRUE(now_at);
  EXPECT_NE(now_at->port, old_primary);
  std::printf("sentinel async: the first cycle completed %lld ms after SIGKILL of the primary\n",
              static_cast<long long>(took.count()));

  // The release subscriber follows the primary: an asynchronous waiter with
  // a long backoff is woken by a release on the new primary.
  ASSERT_TRUE(eventually(
      [&] {
        Lock<RedisBackend> probe(redis, "warm", {.observer = traffic.quiet});
        return probe.try_lock();
      },
      10s));
  dlock::test::expect_release_wakes_a_long_backoff_waiter(redis, "wake");
}

class RedisClusterAsync : public dlock::test::ClusterSuite {
 protected:
  static std::string uri() { return "redis+cluster://127.0.0.1:" + std::to_string(cluster_->node(0).port()); }
  static dlock::detail::redis_proto::SlotMap slot_map() { return ClusterSuite::slot_map(cluster_->node(0).port()); }
  static int port_of(const dlock::detail::redis_proto::SlotMap& map, std::string_view name) {
    return map.primary_for_key(dlock::detail::redis_keys("dlock:", name).lock)->port;
  }
};

TEST_F(RedisClusterAsync, CoroutinesOnOneThreadOverEveryShardKeepExactCountersAndIncreasingTokens) {
  RedisBackend redis(uri());
  const auto map = slot_map();
  std::set<int> shards;
  for (int n = 0; n < 9; ++n) shards.insert(port_of(map, "ac" + std::to_string(n)));
  ASSERT_EQ(shards.size(), 3u) << "the names must cover every shard";
  dlock::test::expect_coroutines_exclude_each_other(
      redis, "ac", 120, 5, 9, LockOptions{.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
  EXPECT_EQ(redis.node().cluster()->moved_followed(), 0u);
}

// A Cluster of its own (the suite's shared one stays whole): coroutines on
// one thread lock names on one shard while its primary is SIGKILLed and its
// replica promoted (cluster-node-timeout 1 s); the acquires resume on the
// new primary and a fenced resource never sees a token at or below one it saw.
TEST(RedisClusterAsyncFailover, CoroutinesResumeOnThePromotedReplicaAfterSigkillWithTokensThatOnlyIncrease) {
  DLOCK_REQUIRE_OWN_REDIS();
  dlock::test::ClusterSetup cluster;
  const int entry = cluster.node(0).port();
  RedisBackend redis("redis+cluster://127.0.0.1:" + std::to_string(entry), dlock::test::sentinel_test_options("ca:"));
  const auto map = dlock::test::ClusterSuite::slot_map(entry);
  const int victim = map.primary_for_key(dlock::detail::redis_keys("ca:", "c0").lock)->port;
  std::string base = "c";
  asio::io_context io;
  AsyncTraffic traffic(io, redis, base, 1);  // one name: every coroutine on the victim's shard
  traffic.spawn(8);
  ASSERT_TRUE(traffic.progressed(100, 15s)) << traffic.first_error;
  const auto killed = Clock::now();
  cluster.by_port(victim)->kill();
  const bool resumed = traffic.progressed(1, 30s);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed);
  const bool more = resumed && traffic.progressed(100, 15s);
  traffic.finish();
  EXPECT_EQ(traffic.failed, 0) << traffic.first_error;
  ASSERT_TRUE(resumed && more) << "the asynchronous acquires did not resume after the shard's primary was killed";
  EXPECT_EQ(traffic.running, 0);
  EXPECT_EQ(traffic.resource.violations(), 0) << "a fenced resource saw a token at or below one it had seen";
  std::printf("cluster async: the first cycle completed %lld ms after SIGKILL of the shard's primary\n",
              static_cast<long long>(took.count()));
}

TEST_F(RedisClusterAsync, AReleaseWakesAnAsynchronousWaiterOnAnyShard) {
  RedisBackend redis(uri());
  dlock::test::expect_release_wakes_a_long_backoff_waiter(redis, "wake");
}

// Runs `task` on `io` to its end; rethrows what it threw.
template <class T>
T run(asio::io_context& io, asio::awaitable<T> task) {
  std::optional<T> out;
  std::exception_ptr error;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr e, T v) {
    error = e;
    out.emplace(std::move(v));
  });
  io.restart();
  io.run_for(10s);
  if (error) std::rethrow_exception(error);
  if (!out) throw std::runtime_error("the task did not finish in 10 s");
  return std::move(*out);
}

// The asynchronous form of RedisSentinelProcesses.
// AClientWhoseFirstSentinelLagsLocksOnTheNewPrimary: after a failover, the
// old primary resumes (still master until the sentinels demote it) and a
// fresh sentinel with the old configuration is listed first. An
// asynchronous acquire through that list must not be granted a name held on
// the new primary: the route asks every sentinel SENTINEL MASTER and takes
// the highest configuration epoch of a majority (redis_proto::choose_primary),
// as SentinelClient::open does.
TEST(RedisSentinelAsync, AClientWhoseFirstSentinelLagsIsNotGrantedOnTheResumedOldPrimary) {
  DLOCK_REQUIRE_OWN_REDIS();
  using dlock::test::SentinelSetup;
  SentinelSetup setup;
  ASSERT_TRUE(dlock::test::sentinels_ready(setup));
  dlock::test::StaleSentinelScenario scenario(setup);
  ASSERT_TRUE(scenario.fail_over()) << "the sentinels did not fail the paused primary over";
  const auto quiet = std::make_shared<dlock::test::Quiet>();
  asio::io_context io;
  RedisBackend up_to_date(scenario.up_to_date_uri(), dlock::test::sentinel_test_options("alag:"));
  Lock<RedisBackend> holder(up_to_date, "x", {.ttl = 30s, .observer = quiet});
  ASSERT_TRUE(scenario.eventually_granted<std::exception>(
      [&] { return run(io, holder.async_try_lock_for(200ms, asio::use_awaitable)); }));
  ASSERT_EQ(up_to_date.endpoint_of("x"), "127.0.0.1:" + std::to_string(scenario.new_primary()));
  ASSERT_TRUE(scenario.start_stale_sentinel());
  // The window this test is about: the old primary still says master.
  const bool old_still_master = scenario.old_still_master();
  RedisBackend lagging_first(scenario.lagging_first_uri(), dlock::test::sentinel_test_options("alag:"));
  Lock<RedisBackend> other(lagging_first, "x", {.ttl = 30s, .observer = quiet});
  // No primary that may be used (an exception): not granted.
  const bool granted =
      scenario.granted<std::exception>([&] { return run(io, other.async_try_lock_for(300ms, asio::use_awaitable)); });
  EXPECT_FALSE(granted) << "granted a name held on the new primary: two holders at once";
  std::printf("async, lagging first sentinel: old primary %s when asked; granted: %s\n",
              old_still_master ? "still master" : "already demoted", granted ? "yes" : "no");
}

// The CLUSTER SETSLOT / MIGRATE sequence of `redis-cli --cluster reshard`,
// one slot, with a lock held in it (as the blocking test
// ASlotMigratedUnderAHeldLockGivesAskThenMovedThatAreFollowed): the
// asynchronous operations follow ASK (ASKING + the script on the importing
// node) and then MOVED, as ClusterClient::follow does, without blocking.
TEST_F(RedisClusterAsync, ASlotMigratedUnderAHeldLockGivesAskThenMovedThatAreFollowed) {
  using dlock::detail::redis_proto::ClusterNode;
  RedisBackend redis(uri());
  const auto map = slot_map();
  const std::string name = "migrate-async";
  const auto keys = dlock::detail::redis_keys("dlock:", name);
  const std::uint16_t slot = dlock::detail::redis_proto::hash_slot(keys.lock);
  const ClusterNode a = *map.primary_for_slot(slot);
  const auto primaries = map.primaries();
  const ClusterNode b =
      *std::find_if(primaries.begin(), primaries.end(), [&](const ClusterNode& n) { return !(n == a); });
  auto* router = redis.node().cluster();
  asio::io_context io;
  const auto quiet = std::make_shared<dlock::test::Quiet>();
  Lock<RedisBackend> holder(redis, name, {.ttl = 60s, .observer = quiet});
  Lock<RedisBackend> contender(redis, name, {.ttl = 60s, .observer = quiet});
  ASSERT_TRUE(run(io, holder.async_try_lock_for(1s, asio::use_awaitable)));
  const std::uint64_t first_token = holder.fencing_token();

  dlock::test::migrate_slot_keys(a, b, slot, {keys.lock, keys.fence});
  RespConn cb(b.port);
  const std::string s = std::to_string(slot);

  // A no longer has the keys: ASK to B, where ASKING + the script finds the holder.
  EXPECT_FALSE(run(io, contender.async_try_lock_for(50ms, asio::use_awaitable)));
  EXPECT_GE(router->ask_followed(), 1u);
  EXPECT_EQ(router->moved_followed(), 0u);
  EXPECT_NO_THROW(run(io, [&]() -> asio::awaitable<int> {
    co_await holder.async_extend(60s, asio::use_awaitable);
    co_return 0;
  }()));
  EXPECT_EQ(run(io, holder.async_release(asio::use_awaitable)), dlock::ReleaseResult::released);
  EXPECT_EQ(cb.command({"EXISTS", keys.lock}).integer, 0);

  // The slot now belongs to B everywhere; the router's map still says A: MOVED.
  for (const auto& p : primaries)
    ASSERT_EQ(RespConn(p.port).command({"CLUSTER", "SETSLOT", s, "NODE", b.id}).str, "OK");
  ASSERT_TRUE(run(io, contender.async_try_lock_for(1s, asio::use_awaitable)));
  EXPECT_GE(router->moved_followed(), 1u);
  EXPECT_GT(contender.fencing_token(), first_token);
  EXPECT_EQ(cb.command({"GET", keys.lock}).type, dlock::detail::redis_proto::Reply::Type::string);  // granted on B
  EXPECT_EQ(run(io, contender.async_release(asio::use_awaitable)), dlock::ReleaseResult::released);
  // Later calls go straight to B (the map was read again).
  EXPECT_TRUE(eventually(
      [&] {
        const auto moved = router->moved_followed();
        const bool ok = run(io, contender.async_try_lock_for(1s, asio::use_awaitable));
        if (ok) (void)run(io, contender.async_release(asio::use_awaitable));
        return ok && router->moved_followed() == moved;
      },
      5s));
}

// A Cluster cannot be a Redlock node: the blocking rounds count it as a
// node that could not be reached (the refusal in the message), and so do the
// asynchronous ones, rather than routing the lock into the cluster.
TEST_F(RedisClusterAsync, RedlockRefusesAClusterNodeInTheAsynchronousFormToo) {
  dlock::RedlockOptions o;
  o.nodes = {dlock::parse_redis_uri(uri())};
  o.allow_fewer_than_three = true;
  dlock::RedlockBackend redlock(o);
  asio::io_context io;
  const auto quiet = std::make_shared<dlock::test::Quiet>();
  Lock<dlock::RedlockBackend> lock(redlock, "r", {.observer = quiet});
  std::optional<boost::system::error_code> got;
  lock.async_try_lock_for(100ms, asio::bind_executor(io, [&](boost::system::error_code ec, bool) { got = ec; }));
  io.run_for(3s);
  ASSERT_TRUE(got);
  EXPECT_TRUE(dlock::to_std(*got) == dlock::errc::connection) << got->message();
  try {
    (void)lock.try_lock();
    ADD_FAILURE() << "the blocking form did not refuse it";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("a Redlock node"), std::string::npos) << e.what();
  }
}

}  // namespace
