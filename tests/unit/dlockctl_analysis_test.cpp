// dlockctl's pure analysis: the wait-for graph and its cycles, agent pids,
// and the Redlock quorum view.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "analysis.hpp"

namespace {

using WaitInfo = dlock::RedisWaitInfo;
using dlockctl::find_deadlocks;

// A record: `agent` waits for `lock` (waiter id agent+"-w") and holds `holds` (name, owner).
WaitInfo rec(std::string agent, std::string lock, std::vector<WaitInfo::Held> holds) {
  return WaitInfo{agent, agent + "-w", std::move(lock), std::move(holds)};
}

TEST(DlockctlDeadlocks, NoRecordsNoCycle) {
  const auto g = find_deadlocks({}, {});
  EXPECT_TRUE(g.edges.empty());
  EXPECT_TRUE(g.cycles.empty());
}

TEST(DlockctlDeadlocks, ChainWithoutCycle) {
  // A waits for b (held by B), B waits for c (held by C, which is not blocked).
  const std::vector<WaitInfo> records{rec("h:1:a", "b", {{"a", "oa"}}), rec("h:2:b", "c", {{"b", "ob"}})};
  const std::map<std::string, std::string> owners{{"a", "oa"}, {"b", "ob"}, {"c", "oc"}};
  const auto g = find_deadlocks(records, owners);
  ASSERT_EQ(g.edges.size(), 1u);
  EXPECT_EQ(g.edges[0], (dlockctl::WaitEdge{"h:1:a", "h:2:b", "b", "h:1:a-w", "ob"}));
  EXPECT_TRUE(g.cycles.empty());
}

TEST(DlockctlDeadlocks, TwoCycle) {
  const std::vector<WaitInfo> records{rec("h:1:a", "b", {{"a", "oa"}}), rec("h:2:b", "a", {{"b", "ob"}})};
  const std::map<std::string, std::string> owners{{"a", "oa"}, {"b", "ob"}};
  const auto g = find_deadlocks(records, owners);
  EXPECT_EQ(g.edges.size(), 2u);
  ASSERT_EQ(g.cycles.size(), 1u);
  ASSERT_EQ(g.cycles[0].size(), 2u);
  EXPECT_EQ(g.cycles[0][0].from_agent, "h:1:a");
  EXPECT_EQ(g.cycles[0][0].lock, "b");
  EXPECT_EQ(g.cycles[0][0].to_agent, "h:2:b");
  EXPECT_EQ(g.cycles[0][1].from_agent, "h:2:b");
  EXPECT_EQ(g.cycles[0][1].lock, "a");
  EXPECT_EQ(g.cycles[0][1].to_agent, "h:1:a");
}

TEST(DlockctlDeadlocks, ThreeCycleReportedOnceWithATail) {
  // A -> B -> C -> A, and D waits for A's lock (in no cycle).
  const std::vector<WaitInfo> records{rec("h:1:a", "b", {{"a", "oa"}}), rec("h:2:b", "c", {{"b", "ob"}}),
                                      rec("h:3:c", "a", {{"c", "oc"}}), rec("h:4:d", "a", {})};
  const std::map<std::string, std::string> owners{{"a", "oa"}, {"b", "ob"}, {"c", "oc"}};
  const auto g = find_deadlocks(records, owners);
  EXPECT_EQ(g.edges.size(), 4u);
  ASSERT_EQ(g.cycles.size(), 1u);
  ASSERT_EQ(g.cycles[0].size(), 3u);
  EXPECT_EQ(g.cycles[0][0].from_agent, "h:1:a");
  EXPECT_EQ(g.cycles[0][1].from_agent, "h:2:b");
  EXPECT_EQ(g.cycles[0][2].from_agent, "h:3:c");
  EXPECT_EQ(g.cycles[0][2].to_agent, "h:1:a");
}

TEST(DlockctlDeadlocks, HolderNotWaitingGivesNoEdge) {
  // A waits for b; b's owner is held by a thread that is not blocked (no record).
  const std::vector<WaitInfo> records{rec("h:1:a", "b", {{"a", "oa"}})};
  const std::map<std::string, std::string> owners{{"a", "oa"}, {"b", "ob"}};
  const auto g = find_deadlocks(records, owners);
  EXPECT_TRUE(g.edges.empty());
  EXPECT_TRUE(g.cycles.empty());
}

TEST(DlockctlDeadlocks, StaleHoldWhoseOwnerNoLongerMatchesGivesNoEdge) {
  // A holds x and waits for a; B's record says it holds a with owner "old"
  // and waits for x. But a is now held by "new" (B's lease was lost, expired
  // or force-released, and someone not blocked took a): no edge A -> B.
  const std::vector<WaitInfo> records{rec("h:1:a", "a", {{"x", "ox"}}), rec("h:2:b", "x", {{"a", "old"}})};
  std::map<std::string, std::string> owners{{"a", "new"}, {"x", "ox"}};
  auto g = find_deadlocks(records, owners);
  ASSERT_EQ(g.edges.size(), 1u);  // only B -> A (x)
  EXPECT_EQ(g.edges[0].from_agent, "h:2:b");
  EXPECT_TRUE(g.cycles.empty());
  // The same records with a still held by "old" are a deadlock.
  owners["a"] = "old";
  g = find_deadlocks(records, owners);
  EXPECT_EQ(g.edges.size(), 2u);
  EXPECT_EQ(g.cycles.size(), 1u);
}

TEST(DlockctlDeadlocks, UnheldLockGivesNoEdge) {
  const std::vector<WaitInfo> records{rec("h:1:a", "b", {{"a", "oa"}}), rec("h:2:b", "a", {{"b", "ob"}})};
  const std::map<std::string, std::string> owners{{"a", "oa"}};  // b was just released
  const auto g = find_deadlocks(records, owners);
  EXPECT_EQ(g.edges.size(), 1u);
  EXPECT_TRUE(g.cycles.empty());
}

TEST(DlockctlDeadlocks, SelfDeadlockIsACycleOfOne) {
  // A thread waits for a lock it holds itself (through another Lock object).
  const std::vector<WaitInfo> records{rec("h:1:a", "a", {{"a", "oa"}})};
  const auto g = find_deadlocks(records, {{"a", "oa"}});
  ASSERT_EQ(g.cycles.size(), 1u);
  EXPECT_EQ(g.cycles[0].size(), 1u);
}

TEST(DlockctlDeadlocks, TwoSeparateCyclesAndACap) {
  const std::vector<WaitInfo> records{rec("h:1:a", "b", {{"a", "oa"}}), rec("h:2:b", "a", {{"b", "ob"}}),
                                      rec("h:3:c", "d", {{"c", "oc"}}), rec("h:4:d", "c", {{"d", "od"}})};
  const std::map<std::string, std::string> owners{{"a", "oa"}, {"b", "ob"}, {"c", "oc"}, {"d", "od"}};
  auto g = find_deadlocks(records, owners);
  EXPECT_EQ(g.cycles.size(), 2u);
  EXPECT_FALSE(g.truncated);
  g = find_deadlocks(records, owners, 1);
  EXPECT_EQ(g.cycles.size(), 1u);
  EXPECT_TRUE(g.truncated);
}

TEST(DlockctlDeadlocks, AgentPid) {
  EXPECT_EQ(dlockctl::agent_pid("web-3:4711:7f3a"), 4711);
  EXPECT_EQ(dlockctl::agent_pid(":1:2"), 1);
  EXPECT_FALSE(dlockctl::agent_pid("web-3").has_value());
  EXPECT_FALSE(dlockctl::agent_pid("web:x:1").has_value());
  EXPECT_FALSE(dlockctl::agent_pid("a:b").has_value());
}

dlockctl::NodeLockState node(std::optional<std::string> owner, long long ttl = 1000, bool reachable = true) {
  dlockctl::NodeLockState s;
  s.endpoint = "n";
  s.reachable = reachable;
  s.owner = std::move(owner);
  s.pttl_ms = owner ? ttl : -2;
  return s;
}

TEST(DlockctlQuorum, HeldOnTwoOfThree) {
  const std::vector<dlockctl::NodeLockState> n{node("o", 900), node("o", 800), node(std::nullopt)};
  const auto q = dlockctl::evaluate_quorum(n);
  EXPECT_EQ(q.nodes, 3u);
  EXPECT_EQ(q.quorum, 2u);
  EXPECT_TRUE(q.held);
  EXPECT_EQ(q.owner, "o");
  EXPECT_EQ(q.agreeing, 2u);
  EXPECT_EQ(q.quorum_pttl_ms, 800);  // the quorum ends when the first of the two expires
}

TEST(DlockctlQuorum, OneOfThreeIsNoQuorum) {
  const std::vector<dlockctl::NodeLockState> n{node("o"), node(std::nullopt), node(std::nullopt)};
  const auto q = dlockctl::evaluate_quorum(n);
  EXPECT_FALSE(q.held);
  EXPECT_EQ(q.agreeing, 1u);
}

TEST(DlockctlQuorum, UnreachableNodesCountInN) {
  const std::vector<dlockctl::NodeLockState> n{node("o"), node("o"), node(std::nullopt, 0, false),
                                               node(std::nullopt, 0, false), node(std::nullopt, 0, false)};
  const auto q = dlockctl::evaluate_quorum(n);
  EXPECT_EQ(q.quorum, 3u);
  EXPECT_EQ(q.reachable, 2u);
  EXPECT_FALSE(q.held);
}

TEST(DlockctlQuorum, SplitOwnersAndQuorumValidity) {
  const std::vector<dlockctl::NodeLockState> split{node("a"), node("b"), node("c")};
  EXPECT_FALSE(dlockctl::evaluate_quorum(split).held);
  // 4 of 5 agree, quorum 3: still held after the first expiry, until the second smallest TTL.
  const std::vector<dlockctl::NodeLockState> five{node("o", 100), node("o", 400), node("o", 300), node("o", -1),
                                                  node("x", 50)};
  const auto q = dlockctl::evaluate_quorum(five);
  EXPECT_TRUE(q.held);
  EXPECT_EQ(q.agreeing, 4u);
  EXPECT_EQ(q.quorum_pttl_ms, 300);
}

}  // namespace
