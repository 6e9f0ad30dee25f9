// RedlockBackend against five real redis-servers: keys on every node,
// release on every node, contention with the holder's TTL, cleanup of
// partial acquisitions, fencing counters kept in step, extension with and
// without a quorum, the NOSCRIPT fallback, and the failure cases: nodes
// killed (2 of 5, 3 of 5), a node paused (SIGSTOP).
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "redlock_test_support.hpp"

using namespace std::chrono_literals;
using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;
using RedlockLock = dlock::Lock<dlock::RedlockBackend>;
using Clock = std::chrono::steady_clock;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(5));

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

TEST_F(RedlockTest, AcquireSetsTheKeyOnEveryNodeAndReleaseRemovesItFromEveryNode) {
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "orders:42", {.ttl = 10s});
  const auto before = Clock::now();
  ASSERT_TRUE(lock.try_lock());
  const std::string owner(lock.owner_id());
  EXPECT_EQ(holders("orders:42", owner), 5u);
  for (std::size_t i = 0; i < 5; ++i) {
    const auto pttl = cmd(i, {"PTTL", key("orders:42")}).integer;
    EXPECT_GT(pttl, 9000);
    EXPECT_LE(pttl, 10000);
  }
  // valid_until = started + ttl - drift (10s * 0.01 + 2ms = 102ms).
  EXPECT_LE(lock.valid_until(), Clock::now() + 10s - 102ms);
  EXPECT_GE(lock.valid_until(), before + 10s - 102ms);
  // The token is the largest counter among the nodes, and all counters agree after the grant.
  std::uint64_t largest = 0;
  for (std::size_t i = 0; i < 5; ++i)
    largest = std::max<std::uint64_t>(largest, std::stoull(get(i, fence("orders:42"))));
  EXPECT_EQ(lock.fencing_token(), largest);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(std::stoull(get(i, fence("orders:42"))), largest) << "node " << i;

  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(keys_present("orders:42"), 0u);
}

TEST_F(RedlockTest, ReleaseIsOwnerCheckedAndIdempotent) {
  dlock::RedlockBackend rl(options());
  const auto owner = dlock::OwnerId::generate();
  const auto r = rl.try_acquire({"once", owner, 10s, Clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(r));
  dlock::Lease<dlock::NoHandle> stranger{dlock::OwnerId::generate(), std::nullopt, {}, {}, {}};
  EXPECT_EQ(rl.release("once", stranger), dlock::ReleaseResult::not_held);
  EXPECT_EQ(holders("once", owner.str()), 5u);
  dlock::Lease<dlock::NoHandle> lease{owner, std::get<0>(r).token, {}, std::get<0>(r).valid_until, {}};
  EXPECT_EQ(rl.release("once", lease), dlock::ReleaseResult::released);
  EXPECT_EQ(keys_present("once"), 0u);
  EXPECT_EQ(rl.release("once", lease), dlock::ReleaseResult::not_held);
  // Released when only some nodes still had it (the others expired or lost it).
  const auto r2 = rl.try_acquire({"once", owner, 10s, Clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(r2));
  for (std::size_t i = 0; i < 4; ++i) (void)cmd(i, {"DEL", key("once")});
  EXPECT_EQ(rl.release("once", lease), dlock::ReleaseResult::released);
  EXPECT_EQ(keys_present("once"), 0u);
}

TEST_F(RedlockTest, ASecondClientIsContendedWithTheHoldersTtlAndLeavesNoKeys) {
  dlock::RedlockBackend a(options()), b(options());
  RedlockLock holder(a, "busy", {.ttl = 5s});
  ASSERT_TRUE(holder.try_lock());
  const auto owner = dlock::OwnerId::generate();
  const auto result = b.try_acquire({"busy", owner, 5s, Clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(result));
  const auto ttl = std::get<dlock::Contended>(result).holder_ttl;
  ASSERT_TRUE(ttl.has_value());
  EXPECT_GT(*ttl, 4000ms);
  EXPECT_LE(*ttl, 5000ms);
  EXPECT_EQ(holders("busy", owner.str()), 0u);
  EXPECT_EQ(holders("busy", holder.owner_id()), 5u);
  RedlockLock other(b, "busy", {.ttl = 5s});
  EXPECT_FALSE(other.try_lock());
  holder.unlock();
  EXPECT_TRUE(other.try_lock());
}

TEST_F(RedlockTest, AFailedAttemptReleasesWhatItGotOnEveryNode) {
  // Another owner holds 3 of the 5 nodes, with different TTLs.
  ASSERT_EQ(cmd(0, {"SET", key("split"), "someone-else", "PX", "10000"}).str, "OK");
  ASSERT_EQ(cmd(1, {"SET", key("split"), "someone-else", "PX", "20000"}).str, "OK");
  ASSERT_EQ(cmd(2, {"SET", key("split"), "someone-else", "PX", "30000"}).str, "OK");
  dlock::RedlockBackend rl(options());
  const auto owner = dlock::OwnerId::generate();
  const auto result = rl.try_acquire({"split", owner, 10s, Clock::now()});
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(result));
  // Nodes 3 and 4 granted and were released again before try_acquire returned.
  EXPECT_EQ(holders("split", owner.str()), 0u);
  EXPECT_EQ(cmd(3, {"EXISTS", key("split")}).integer, 0);
  EXPECT_EQ(cmd(4, {"EXISTS", key("split")}).integer, 0);
  // With 2 nodes of its own, one more must free up: the smallest holder TTL.
  const auto ttl = std::get<dlock::Contended>(result).holder_ttl;
  ASSERT_TRUE(ttl.has_value());
  EXPECT_GT(*ttl, 9000ms);
  EXPECT_LE(*ttl, 10000ms);
  // The other owner's keys are untouched.
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(get(i, key("split")), "someone-else");
}

TEST_F(RedlockTest, TwoHoldersOnDisjointMinoritiesGetNothing) {
  // 2/2/1 split between two foreign owners and us: nobody has a quorum.
  ASSERT_EQ(cmd(0, {"SET", key("votes"), "x", "PX", "10000"}).str, "OK");
  ASSERT_EQ(cmd(1, {"SET", key("votes"), "x", "PX", "10000"}).str, "OK");
  ASSERT_EQ(cmd(2, {"SET", key("votes"), "y", "PX", "10000"}).str, "OK");
  ASSERT_EQ(cmd(3, {"SET", key("votes"), "y", "PX", "10000"}).str, "OK");
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "votes", {.ttl = 10s});
  EXPECT_FALSE(lock.try_lock());
  EXPECT_EQ(cmd(4, {"EXISTS", key("votes")}).integer, 0);
}

TEST_F(RedlockTest, TokensStrictlyIncreaseEvenWhenTheNodeWithTheLargestCounterGoesAway) {
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "fenced", {.ttl = 10s});
  std::uint64_t last = 0;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(lock.try_lock());
    EXPECT_GT(lock.fencing_token(), last);
    last = lock.fencing_token();
    lock.unlock();
  }
  // Node 0's counter jumps far ahead (as after partial attempts that only it
  // granted; here 1000 s, so that the clock floor does not catch up). The
  // next grant takes that value and raises the others to it...
  const std::uint64_t ahead = last + 1'000'000'000;
  ASSERT_EQ(cmd(0, {"SET", fence("fenced"), std::to_string(ahead)}).str, "OK");
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(lock.fencing_token(), ahead + 1);
  last = lock.fencing_token();
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(std::stoull(get(i, fence("fenced"))), last) << "node " << i;
  lock.unlock();
  // ...so losing node 0 does not make tokens go backwards.
  server(0).kill();
  ASSERT_TRUE(lock.try_lock());
  EXPECT_GT(lock.fencing_token(), last);
  lock.unlock();
}

TEST_F(RedlockTest, ExtendNeedsAQuorumAndALostLockIsReleasedEverywhere) {
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "ext", {.ttl = 2s, .observer = quiet()});
  ASSERT_TRUE(lock.try_lock());
  const auto first = lock.valid_until();
  lock.extend(5s);
  EXPECT_GT(lock.valid_until(), first + 2s);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_GT(cmd(i, {"PTTL", key("ext")}).integer, 4000);
  // Two nodes lose the key: a quorum still extends.
  (void)cmd(0, {"DEL", key("ext")});
  (void)cmd(1, {"DEL", key("ext")});
  EXPECT_NO_THROW(lock.extend(5s));
  // A third one: no quorum can hold it any more. Lost, and released on the rest.
  (void)cmd(2, {"DEL", key("ext")});
  EXPECT_THROW(lock.extend(5s), dlock::LockLostError);
  EXPECT_FALSE(lock.owns_lock());
  EXPECT_EQ(keys_present("ext"), 0u);
}

TEST_F(RedlockTest, ExtendManyCountsTheQuorumPerItem) {
  dlock::RedlockBackend rl(options());
  std::vector<dlock::OwnerId> owners;
  for (int i = 0; i < 3; ++i) {
    owners.push_back(dlock::OwnerId::generate());
    const auto r = rl.try_acquire({fmt::format("batch-{}", i), owners.back(), 2s, Clock::now()});
    ASSERT_TRUE(std::holds_alternative<dlock::Grant<dlock::NoHandle>>(r));
  }
  // batch-1 is taken away on 3 nodes; batch-2 on 2 nodes.
  for (std::size_t n = 0; n < 3; ++n) (void)cmd(n, {"DEL", key("batch-1")});
  for (std::size_t n = 0; n < 2; ++n) (void)cmd(n, {"DEL", key("batch-2")});
  const auto now = Clock::now();
  const std::string names[] = {"batch-0", "batch-1", "batch-2"};
  std::vector<dlock::ExtendItem> items;
  for (int i = 0; i < 3; ++i) items.push_back({names[i], &owners[static_cast<std::size_t>(i)], 10s, now});
  rl.extend_many(items);
  for (const auto& it : items) EXPECT_FALSE(it.error) << it.name;
  ASSERT_TRUE(items[0].valid_until.has_value());
  EXPECT_EQ(*items[0].valid_until, now + 10s - 102ms);
  EXPECT_FALSE(items[1].valid_until.has_value());
  ASSERT_TRUE(items[2].valid_until.has_value());
  for (std::size_t n = 0; n < 5; ++n) EXPECT_GT(cmd(n, {"PTTL", key("batch-0")}).integer, 9000);
  EXPECT_EQ(keys_present("batch-1"), 0u);  // the lost one was released on the nodes that still had it
}

TEST_F(RedlockTest, ScriptFlushOnTheNodesFallsBackToEval) {
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "flush", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());  // the connections now have the scripts loaded
  lock.unlock();
  for (std::size_t i = 0; i < 5; ++i) ASSERT_EQ(cmd(i, {"SCRIPT", "FLUSH"}).str, "OK");
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(holders("flush", lock.owner_id()), 5u);
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
}

TEST_F(RedlockTest, WithTwoOfFiveNodesKilledAcquireStillSucceeds) {
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "two-down", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());  // connections are open to every node
  lock.unlock();
  server(1).kill();
  server(3).kill();
  const auto t0 = Clock::now();
  ASSERT_TRUE(lock.try_lock());
  EXPECT_LT(ms_since(t0), 1000);
  EXPECT_EQ(holders("two-down", lock.owner_id()), 3u);
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(keys_present("two-down"), 0u);
}

TEST_F(RedlockTest, WithThreeOfFiveNodesKilledAcquireFailsWithinItsDeadlineAndLeavesNoKeys) {
  dlock::RedlockBackend rl(options());
  RedlockLock lock(rl, "three-down", {.ttl = 10s, .observer = quiet()});
  server(0).kill();
  server(2).kill();
  server(4).kill();
  EXPECT_THROW((void)lock.try_lock(), dlock::ConnectionError);
  const auto t0 = Clock::now();
  try {
    (void)lock.try_lock_for(400ms);
    ADD_FAILURE() << "acquired without a quorum";
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("reached only 2 of 5 nodes (quorum 3)"), std::string::npos) << e.what();
  }
  const double took = ms_since(t0);
  EXPECT_GE(took, 390);
  EXPECT_LT(took, 400 + 300);
  EXPECT_EQ(keys_present("three-down"), 0u) << "a partial acquisition was left on the live nodes";
  EXPECT_FALSE(lock.owns_lock());
}

TEST_F(RedlockTest, APausedNodeCostsAtMostAboutNodeTimeout) {
  auto o = options();
  o.node_timeout = 50ms;
  dlock::RedlockBackend rl(o);
  RedlockLock lock(rl, "paused", {.ttl = 10s});
  std::vector<double> normal, paused;
  for (int i = 0; i < 15; ++i) {
    const auto t0 = Clock::now();
    ASSERT_TRUE(lock.try_lock());
    normal.push_back(ms_since(t0));
    lock.unlock();
  }
  server(2).pause();
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    ASSERT_TRUE(lock.try_lock());
    paused.push_back(ms_since(t0));
    for (std::size_t n : {0u, 1u, 3u, 4u}) EXPECT_EQ(get(n, key("paused")), lock.owner_id()) << "node " << n;
    lock.unlock();
  }
  server(2).resume();
  std::sort(normal.begin(), normal.end());
  std::sort(paused.begin(), paused.end());
  const double base = normal[normal.size() / 2];
  const double slowest = paused.back();
  std::printf("acquire: median %.2f ms with all nodes up; with one paused: median %.2f ms, slowest %.2f ms\n", base,
              paused[paused.size() / 2], slowest);
  EXPECT_GE(paused.front(), 45.0) << "the paused node was not waited for";
  EXPECT_LT(slowest, base + 50 + 150) << "a paused node cost more than node_timeout (generous bound)";
}

}  // namespace
