// dlockctl: pure analysis: the cross-process wait-for graph and its cycles
// (dlockctl deadlocks), and the Redlock quorum view of one lock over N nodes.
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <dlock/redis_admin.hpp>

namespace dlockctl {

// ---- deadlocks ----

/// "agent W waits for `lock`, whose current owner id `holder_owner` is held by agent H".
struct WaitEdge {
  std::string from_agent;    ///< W: the waiting thread
  std::string to_agent;      ///< H: the thread holding the lock
  std::string lock;          ///< the lock W waits for and H holds
  std::string waiter;        ///< W's waiter (owner) id
  std::string holder_owner;  ///< the owner id stored at the lock's key
  friend bool operator==(const WaitEdge&, const WaitEdge&) = default;
};

struct WaitGraph {
  std::vector<WaitEdge> edges;
  /// Elementary cycles, each starting at its smallest agent, in order.
  std::vector<std::vector<WaitEdge>> cycles;
  bool truncated = false;  ///< more than max_cycles cycles exist
};

/// Builds the wait-for graph: for each record W waiting for lock L whose key
/// currently holds owner id O (`lock_owners[L]`), an edge W.agent -> R.agent
/// for every record R whose holds contain (L, O). A lock with no current
/// owner, or held by an owner that no record lists (its holder is not
/// blocked, or a record is stale), adds no edge. Then finds every elementary
/// cycle (at most max_cycles), including an agent waiting for itself.
[[nodiscard]] WaitGraph find_deadlocks(std::span<const dlock::RedisWaitInfo> records,
                                       const std::map<std::string, std::string>& lock_owners,
                                       std::size_t max_cycles = 100);

/// The pid in an agent id "host:pid:thread", if it has that form.
[[nodiscard]] std::optional<long> agent_pid(std::string_view agent);

// ---- Redlock ----

/// One node's view of one lock.
struct NodeLockState {
  std::string endpoint;
  bool reachable = true;
  std::string error;                 ///< why unreachable
  std::optional<std::string> owner;  ///< nullopt: not held on this node
  long long pttl_ms = -2;            ///< -1: no TTL
  std::optional<std::string> token;  ///< the node's fencing counter
};

struct QuorumView {
  std::size_t nodes = 0;   ///< N, including unreachable nodes
  std::size_t quorum = 0;  ///< N/2 + 1
  std::size_t reachable = 0;
  std::optional<std::string> owner;  ///< the owner on the most nodes (ties: the smallest id)
  std::size_t agreeing = 0;          ///< nodes holding it for `owner`
  bool held = false;                 ///< agreeing >= quorum
  /// While held: how long a quorum keeps holding it, the (agreeing-quorum+1)-th
  /// smallest PTTL among the agreeing nodes (-1: no TTL).
  long long quorum_pttl_ms = -2;
};

[[nodiscard]] QuorumView evaluate_quorum(std::span<const NodeLockState> nodes);

}  // namespace dlockctl
