// Running out of redirects on a Redis Cluster (issue 14): a slot that two
// primaries each say the other serves (as between the steps of a
// resharding, or while the nodes' maps disagree) redirects every call until
// redis_proto::max_redirects. That is a transient state: the router reports
// a ConnectionError (nothing ran), a blocking acquire retries after its
// backoff on a fresh slot map, and once the slot settles it is granted.
// Skipped with DLOCK_TEST_REDIS (the suite starts its own servers).
#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_cluster_client.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using namespace dlock::detail::redis_proto;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::test::RespConn;

namespace {

class RedisClusterRedirectIt : public dlock::test::ClusterSuite {};

TEST_F(RedisClusterRedirectIt, ASlotBouncingBetweenTwoPrimariesIsRetriedUntilItSettles) {
  const int seed = cluster_->node(0).port();
  RedisBackend redis("redis+cluster://127.0.0.1:" + std::to_string(seed));
  const SlotMap map = slot_map(seed);
  const std::string name = "bounce";
  const std::uint16_t slot = hash_slot(dlock::detail::redis_keys("dlock:", name).lock);
  const ClusterNode a = *map.primary_for_slot(slot);
  const auto primaries = map.primaries();
  const ClusterNode b =
      *std::find_if(primaries.begin(), primaries.end(), [&](const ClusterNode& n) { return !(n == a); });
  const std::string s = std::to_string(slot);
  // A says B serves the slot, B says A does: MOVED back and forth.
  ASSERT_EQ(RespConn(a.port).command({"CLUSTER", "SETSLOT", s, "NODE", b.id}).str, "OK");
  ASSERT_EQ(RespConn(b.port).command({"CLUSTER", "SETSLOT", s, "NODE", a.id}).str, "OK");
  auto* router = redis.node().cluster();
  ASSERT_NE(router, nullptr);

  std::string error;
  bool acquired = false;
  std::thread locker([&] {
    try {
      Lock<RedisBackend> lock(redis, name,
                              {.ttl = 30s,
                               .retry = {.initial_delay = 20ms, .max_delay = 100ms},
                               .acquire_timeout = 20s,
                               .observer = std::make_shared<dlock::test::Quiet>()});
      lock.lock();
      acquired = true;
      lock.unlock();
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  // Two attempts ran out of redirects: the first was retried, not thrown.
  const bool retried = dlock::test::eventually(
      [&] { return router->moved_followed() >= 2 * static_cast<std::uint64_t>(max_redirects); }, 10s);
  // The slot settles on A everywhere.
  for (const auto& p : primaries)
    EXPECT_EQ(RespConn(p.port).command({"CLUSTER", "SETSLOT", s, "NODE", a.id}).str, "OK");
  locker.join();
  EXPECT_TRUE(retried) << "redirects followed: " << router->moved_followed();
  EXPECT_TRUE(error.empty()) << error;
  EXPECT_TRUE(acquired);

  // A single attempt out of redirects says what happened, as a transient
  // (the fencing counter left on A goes first: a slot with keys cannot be reassigned).
  ASSERT_EQ(RespConn(a.port).command({"DEL", dlock::detail::redis_keys("dlock:", name).fence}).integer, 1);
  ASSERT_EQ(RespConn(a.port).command({"CLUSTER", "SETSLOT", s, "NODE", b.id}).str, "OK");
  ASSERT_EQ(RespConn(b.port).command({"CLUSTER", "SETSLOT", s, "NODE", a.id}).str, "OK");
  Lock<RedisBackend> once(redis, name, {.ttl = 30s, .observer = std::make_shared<dlock::test::Quiet>()});
  try {
    (void)once.try_lock();
    ADD_FAILURE() << "try_lock succeeded while the slot bounced";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("redirected"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a ConnectionError: " << e.what();
  }
  for (const auto& p : primaries)
    EXPECT_EQ(RespConn(p.port).command({"CLUSTER", "SETSLOT", s, "NODE", a.id}).str, "OK");
}

}  // namespace
