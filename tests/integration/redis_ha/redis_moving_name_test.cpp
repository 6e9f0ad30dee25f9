// A primary behind a name that moves on failover (issue 14 item 1: a managed
// service's endpoint, a DNS name, a TCP proxy), no Sentinel: the name is a
// FaultProxy whose new connections go to whichever server is the primary,
// while connections already open stay with the server they reached. Two
// servers swap roles with REPLICAOF while threads lock through the name:
// pooled connections to the demoted server answer READONLY, which must be
// retried (not thrown) on a new connection, each such connection dropped
// from the pool the first time (never reused: the proxy sees at most one
// READONLY reply per connection), and a fenced resource must
// never see a token at or below one it saw.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support/fault_proxy.hpp"
#include "support/redis_ha.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::test::eventually;
using dlock::test::info_field;
using dlock::test::LockTraffic;
using dlock::test::RespConn;

namespace {

// READONLY errors a server counted since it started (INFO errorstats; a
// script that catches the error with pcall and returns it counts twice).
long long readonly_replies(int port) {
  const std::string line = info_field(port, "errorstats", "errorstat_READONLY");  // "count=N"
  return line.empty() ? 0 : std::stoll(line.substr(line.find('=') + 1));
}

TEST(RedisMovingName, AReplicaofSwapWhileLockingIsRetriedAndThePoolRecovers) {
  DLOCK_REQUIRE_OWN_REDIS();
  dlock::test::ReplicatedPair servers;
  const int a = servers.primary.port();
  const int b = servers.replica.port();
  dlock::test::FaultProxy name(a);
  name.count_in_replies("-READONLY");
  dlock::RedisOptions o = servers.primary.options();
  o.port = name.port();
  o.key_prefix = "moving:";
  o.pool_size = 4;
  RedisBackend redis(o);

  LockTraffic traffic(redis);
  const auto progressed = [&](int by) { return traffic.progressed(by, 15s); };

  ASSERT_TRUE(progressed(100)) << traffic.error();
  // The swap: hold A's writes, let B catch up, promote B, move the name,
  // demote A (whose held writes then answer READONLY), let A's writes go.
  RespConn ca(a), cb(b);
  ASSERT_EQ(ca.command({"CLIENT", "PAUSE", "5000", "WRITE"}).str, "OK");
  const std::string a_offset = info_field(a, "replication", "master_repl_offset");
  ASSERT_TRUE(eventually([&] { return info_field(b, "replication", "slave_repl_offset") == a_offset; }, 5s));
  ASSERT_EQ(cb.command({"REPLICAOF", "NO", "ONE"}).str, "OK");
  name.retarget(b);
  ASSERT_EQ(ca.command({"REPLICAOF", "127.0.0.1", std::to_string(b)}).str, "OK");
  ASSERT_EQ(ca.command({"CLIENT", "UNPAUSE"}).str, "OK");

  const bool resumed = progressed(200);
  const long long readonly_after_swap = readonly_replies(a);
  // Every connection to A said READONLY once and was dropped: more traffic
  // meets no READONLY at all.
  const bool more = progressed(100);
  traffic.stop();
  EXPECT_TRUE(traffic.error().empty()) << traffic.error();
  EXPECT_TRUE(resumed && more) << "locking did not resume after the swap";
  EXPECT_EQ(traffic.violations(), 0) << "a fenced resource saw a token at or below one it had seen";
  int told = 0;
  for (const auto& c : name.records()) {
    told += c.marked;
    EXPECT_LE(c.marked, 1) << "a connection to port " << c.target_port << " that said READONLY was reused";
    if (c.target_port == b) {
      EXPECT_EQ(c.marked, 0);
    }
  }
  EXPECT_GE(told, 1) << "the swap produced no READONLY: the test did not test it";
  EXPECT_EQ(readonly_replies(a), readonly_after_swap) << "connections to the demoted server stayed in the pool";
  EXPECT_EQ(readonly_replies(b), 0);
  std::printf("moving name: %d READONLY replies over %zu connections (%lld errors counted by the demoted server)\n",
              told, name.records().size(), readonly_after_swap);
}

}  // namespace
