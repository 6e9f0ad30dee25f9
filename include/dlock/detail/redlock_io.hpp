// Internal: Redlock's I/O. One RedlockNode per Redis server keeps idle
// non-blocking connections; fan_out() sends one pipelined batch of script
// calls to every node at once and collects the replies with poll() on the
// calling thread, each node bounded by the same deadline. No background
// thread, no shared mutable state beyond each node's idle list (a mutex).
//
// Connections come from RedisConnection's non-blocking mode (redis_connection.hpp),
// so connecting, AUTH/SELECT/SCRIPT LOAD and reply parsing are the node
// client's. A new connection's handshake is pipelined in front of the first
// batch, so even a reconnect costs one connect plus one round trip, all
// within the deadline. A connection that failed or missed the deadline is
// dropped, never reused.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "redis_connection.hpp"
#include "redis_node.hpp"
#include "../redis_options.hpp"
#include "redis_scripts.hpp"

namespace dlock::detail {

/// One Redis server of a Redlock set: its options and idle connections. Thread-safe.
class RedlockNode {
 public:
  /// `options` must be valid (detail::validate). Connects lazily.
  explicit RedlockNode(RedisOptions options);
  RedlockNode(const RedlockNode&) = delete;
  RedlockNode& operator=(const RedlockNode&) = delete;

  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] const RedisOptions& options() const noexcept { return options_; }

  /// An idle connection (checked for a close by the server) or a new
  /// non-blocking one whose connect has started. Throws ConnectionError when
  /// a new connect fails at once. Never blocks.
  [[nodiscard]] std::unique_ptr<RedisConnection> take();
  /// Keeps a healthy connection for reuse (at most options().pool_size idle);
  /// drops a broken one, and with it the idle ones older than it.
  void give_back(std::unique_ptr<RedisConnection> c) noexcept;
  /// Idle connections kept now (for tests).
  [[nodiscard]] std::size_t idle_connections() const;
  /// What the handshakes learned about the server (its run_id), and the warnings given.
  [[nodiscard]] const ServerFacts& facts() const noexcept { return facts_; }
  [[nodiscard]] ServerFacts& facts() noexcept { return facts_; }

 private:
  struct Idle {
    std::unique_ptr<RedisConnection> connection;
    std::uint64_t generation;
    std::chrono::steady_clock::time_point since;
  };
  const RedisOptions options_;
  const std::string endpoint_;
  ServerFacts facts_;
  mutable std::mutex mu_;
  std::vector<Idle> idle_;  ///< most recently used last
  std::uint64_t generation_ = 0;
  int pid_ = 0;  ///< the process idle_ belongs to (fork(): a child drops the parent's)
};

/// One script call of a batch. keys/args point at strings the caller keeps
/// alive until fan_out() returns.
struct ScriptCall {
  RedisScript script{};
  std::array<std::string_view, 2> keys{};
  std::size_t key_count = 0;
  std::array<std::string_view, 5> args{};
  std::size_t arg_count = 0;
};

/// What one node answered to its batch: a reply per call, or an error for
/// the whole batch (ConnectionError: unreachable, reset, deadline passed;
/// ServerError: the handshake was refused).
struct NodeReplies {
  std::vector<RedisValue> replies;
  std::exception_ptr error;
  /// When the last reply came in (steady clock); unset with an error.
  std::chrono::steady_clock::time_point answered{};
};

/// Sends batches[i] to nodes[i] for every i at once (nodes with an empty
/// batch are skipped) and waits for all replies for at most `timeout` from
/// now (steady clock), the same deadline for every node. Calls answered
/// NOSCRIPT are sent again with EVAL within that deadline. `what` names the
/// operation in messages ("acquire of 'orders:42'"). Never throws except
/// std::bad_alloc.
[[nodiscard]] std::vector<NodeReplies> fan_out(std::span<RedlockNode* const> nodes,
                                               std::span<const std::vector<ScriptCall>> batches,
                                               std::chrono::milliseconds timeout, std::string_view what);

}  // namespace dlock::detail
