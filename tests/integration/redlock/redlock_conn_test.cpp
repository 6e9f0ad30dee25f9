// RedlockBackend's node list and connections against real servers: one
// server listed twice (another database index, another spelling of the
// host, its unix socket beside its TCP port) is refused, a node whose
// server may evict keys never grants, and fork(): a child never shares a
// socket with its parent.
#include <dlock/detail/redis_client.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include "redlock_test_support.hpp"
#include "support/lock_cycles.hpp"
#include "unit/fork_support.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedlockBackend;
using dlock::RedlockOptions;
using dlock::test::lock_cycles;
using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster);

using RedlockConnTest = RedlockTest;

std::string construction_error(const RedlockOptions& o) {
  try {
    RedlockBackend rl(o);
  } catch (const dlock::InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument thrown)";
}

TEST_F(RedlockConnTest, AServerListedTwiceWithAnotherDatabaseIndexIsRefused) {
  RedlockOptions o = options();
  o.nodes[4] = o.nodes[1];
  o.nodes[4].database = 3;
  const std::string msg = construction_error(o);
  EXPECT_NE(msg.find("RedlockOptions.nodes[4]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nodes[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("127.0.0.1:" + std::to_string(server(1).port())), std::string::npos) << msg;
  EXPECT_NE(msg.find("vote twice"), std::string::npos) << msg;
}

TEST_F(RedlockConnTest, AServerListedTwiceUnderAnotherHostNameIsRefused) {
  RedlockOptions o = options();
  o.nodes[3] = o.nodes[0];
  o.nodes[3].host = "localhost";
  o.nodes[3].database = 1;
  const std::string port = std::to_string(server(0).port());
  const std::string msg = construction_error(o);
  EXPECT_NE(msg.find("nodes[3] (localhost:" + port + ")"), std::string::npos) << msg;
  EXPECT_NE(msg.find("nodes[0] (127.0.0.1:" + port + ")"), std::string::npos) << msg;
  EXPECT_NE(msg.find("127.0.0.1 " + port), std::string::npos) << msg;
  // Different servers on one host are fine.
  o.nodes[3] = options().nodes[3];
  o.nodes[3].host = "localhost";
  EXPECT_NO_THROW(RedlockBackend{o});
}

TEST_F(RedlockConnTest, AServerReachedThroughItsUnixSocketAndItsPortIsFoundByRunIdAtFirstConnect) {
  RedlockOptions o = options();
  o.nodes[4] = dlock::RedisOptions{.unix_socket = server(2).unix_socket()};
  RedlockBackend rl(o);  // the constructor cannot tell
  Lock<RedlockBackend> lock(rl, "dup", {.ttl = 10s, .observer = quiet()});
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      (void)lock.try_lock();
      FAIL() << "expected ServerError";
    } catch (const dlock::ServerError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("nodes[2] (127.0.0.1:" + std::to_string(server(2).port()) + ")"), std::string::npos) << msg;
      EXPECT_NE(msg.find("nodes[4] (" + server(2).unix_socket() + ")"), std::string::npos) << msg;
      EXPECT_NE(msg.find("same Redis server"), std::string::npos) << msg;
    }
    EXPECT_EQ(keys_present("dup"), 0u) << "the refused attempt left keys behind";
  }
}

TEST_F(RedlockConnTest, ANodeWhoseServerMayEvictKeysNeverCountsAsAVote) {
  dlock::test::RedisServer evicting({"--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"});
  RedlockOptions o = options();
  o.nodes[4] = evicting.options();
  RedlockBackend rl(o);
  Lock<RedlockBackend> lock(rl, "evict", {.ttl = 10s, .observer = quiet()});
  ASSERT_TRUE(lock.try_lock());  // 4 of 5
  EXPECT_EQ(holders("evict", lock.owner_id()), 4u);
  lock.unlock();
  // With two good nodes down, the evicting one would make the quorum of 3: it does not.
  server(0).kill();
  server(1).kill();
  try {
    (void)lock.try_lock();
    FAIL() << "expected ServerError";
  } catch (const dlock::ServerError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("maxmemory-policy volatile-lru"), std::string::npos) << msg;
    EXPECT_NE(msg.find(dlock::detail::redis_endpoint(evicting.options())), std::string::npos) << msg;
  }
}

// ---- fork() ----

TEST_F(RedlockConnTest, ParentAndChildUseOneBackendAfterForkWithoutSharingAConnection) {
  RedlockOptions o = options();
  o.node_timeout = 500ms;  // a slow machine must not fail the rounds
  // With two nodes down every round needs all three others: a node whose
  // replies got mixed up between the processes fails the round.
  server(3).kill();
  server(4).kill();
  auto rl = std::make_unique<RedlockBackend>(o);
  ASSERT_EQ(lock_cycles(*rl, "warm", 4), "");  // idle connections on every node
  std::string parent_result;
  const auto child_result = dlock::test::in_child_while(
      [&]() -> std::string {
        if (std::string why = lock_cycles(*rl, "child", 200); !why.empty()) return why;
        rl.reset();
        return "ok";
      },
      [&] { parent_result = lock_cycles(*rl, "parent", 200); });
  EXPECT_EQ(parent_result, "");
  EXPECT_EQ(child_result.value_or("(the child crashed or hung)"), "ok");
  EXPECT_EQ(lock_cycles(*rl, "parent-after", 8), "");
}

}  // namespace
