// Internal: ClusterClient, the I/O half of Redis Cluster support (issue 14;
// slots, the slot map and the redirect decisions are redis_cluster.hpp's).
// For a RedisOptions with `cluster` set it
//   - reads the slot map with CLUSTER SLOTS from a seed (then from any node
//     it knows), lazily and again after MOVED, READONLY, CLUSTERDOWN or a
//     connection failure (a primary that died: its promoted replica is
//     found for the caller's next attempt);
//   - keeps one RedisClient (a pool) per node, created on first use;
//   - routes each script call by the slot of its first key (dlock's keys
//     hash on {name}: a lock, its fence and its channel share one slot);
//   - follows MOVED (map refreshed, the call sent to the named node) and
//     ASK (ASKING and the call pipelined on one connection of the named
//     node), at most redis_proto::max_redirects times per call. A redirect is
//     given before any effect, so a redirected call cannot run twice.
// Thread-safe. RedisClient delegates to it (RedisClient::run_scripts,
// command, abandon, current_server) when options.cluster is set.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../redis_options.hpp"
#include "redis_cluster.hpp"
#include "redis_protocol.hpp"
#include "redis_transport.hpp"

namespace dlock::detail {

class RedisClient;

/// The key a script call is routed by (its first key; "" when it has none).
[[nodiscard]] std::string_view cluster_route_key(const redis_proto::ScriptCall& call) noexcept;
/// The key a plain command is routed by: its first argument after the
/// command name (SET, DEL, GET, PTTL...), "" for none.
[[nodiscard]] std::string_view cluster_route_key(std::span<const std::string_view> args) noexcept;

class ClusterClient {
 public:
  /// `options` must be valid and have `cluster` set. Connects lazily.
  ClusterClient(RedisOptions options, RedisLinkSetup setup);
  ClusterClient(const ClusterClient&) = delete;
  ClusterClient& operator=(const ClusterClient&) = delete;
  ~ClusterClient();

  /// RedisClient::run_scripts on the primaries of the calls' slots (calls on
  /// several nodes go to each in turn), redirects followed. A reply per call.
  std::vector<RedisValue> run_scripts(std::span<const redis_proto::ScriptCall> calls, std::string_view what);
  /// A plain command on the primary of cluster_route_key(args), redirects followed.
  RedisValue command(std::span<const std::string_view> args);
  /// The client of the primary serving `key`'s slot (reads the map if none
  /// is known yet). Throws ConnectionError when no node serves it.
  RedisClient& node_for_key(std::string_view key);
  /// A node to subscribe on (plain PUBLISH reaches every node of a cluster):
  /// the `turn`-th of the last map's primaries followed by the seeds
  /// (cycling; turn 0: the first primary, else the first seed). The release
  /// subscriber asks with the next turn at each (re)connect, so that a node
  /// that died is left for the next one even while the map still names it.
  /// Never blocks.
  [[nodiscard]] std::optional<RedisOptions> any_node(std::size_t turn = 0) const;
  /// The client of every primary of the slot map, read afresh (for
  /// administration: SCAN on each node, RedisAdmin::list). Throws
  /// ConnectionError when no node gives its map.
  std::vector<RedisClient*> primaries();
  /// The endpoint of the node client serving `key`'s slot in the last map;
  /// empty when no map or no client for it exists yet. Never blocks on I/O.
  [[nodiscard]] std::string_view known_endpoint(std::string_view key) const;
  /// Reads the slot map again (CLUSTER SLOTS from a seed or a known node).
  /// Throws ConnectionError naming every node's answer when none gave one.
  void refresh();
  /// For tests: redirects followed since construction.
  [[nodiscard]] std::uint64_t moved_followed() const noexcept { return moved_.load(); }
  [[nodiscard]] std::uint64_t ask_followed() const noexcept { return asked_.load(); }

  // For the asynchronous routing (redis_async_ha.cpp), which never blocks:
  /// The primary serving `slot` in the map known now; nullopt when none is.
  [[nodiscard]] std::optional<redis_proto::ClusterNode> known_primary(std::uint16_t slot) const;
  /// The client of the node at host:port (created on first use; never blocks).
  RedisClient& node_at(const std::string& host, std::uint16_t port) { return node(host, port); }
  /// Where refresh() asks for the slot map: the seeds, then the last map's primaries.
  [[nodiscard]] std::vector<std::pair<std::string, std::uint16_t>> map_sources() const;
  /// A slot map read without blocking: installed as refresh() installs one.
  void install(redis_proto::SlotMap map);
  /// A MOVED followed without blocking: the map patched as follow() does, and counted.
  void note_moved(const redis_proto::Redirect& to, std::string_view sender_host);
  /// An ASK followed without blocking: counted.
  void note_ask() noexcept { ++asked_; }

 private:
  RedisClient& node(const std::string& host, std::uint16_t port);
  [[nodiscard]] RedisOptions node_options(const std::string& host, std::uint16_t port) const;
  // refresh(), errors ignored (after a failure: the next attempt uses what it found).
  void refresh_quietly() noexcept;
  // The primary for `slot`; refreshes the map once if it has none.
  RedisClient& primary(std::uint16_t slot);
  // `reply` came from `sender`: follows MOVED/ASK by sending push() again;
  // refreshes the map after READONLY/CLUSTERDOWN. Returns the final reply.
  template <class Push>
  RedisValue follow(RedisValue reply, std::string sender_host, const Push& push, std::string_view what);

  const RedisOptions options_;
  const RedisLinkSetup setup_;
  mutable std::mutex mu_;
  std::optional<redis_proto::SlotMap> map_;                    // under mu_
  std::map<std::string, std::unique_ptr<RedisClient>> nodes_;  // under mu_; never erased
  std::atomic<std::uint64_t> moved_{0};
  std::atomic<std::uint64_t> asked_{0};
};

}  // namespace dlock::detail
