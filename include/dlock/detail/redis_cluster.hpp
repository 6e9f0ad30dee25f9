// Internal: Redis Cluster routing and the high-availability decisions of the
// protocol layer (issue 14), with no I/O.
//
//   - crc16() and hash_slot(): the Redis Cluster key -> slot function
//     (CRC16/XMODEM of the hash tag, mod 16384; redis_hash_tag() in
//     redis_keys.hpp says which part of a key is hashed);
//   - SlotMap: slot -> primary (and replicas), built from a CLUSTER SLOTS or
//     CLUSTER SHARDS reply, patched by MOVED until the next refresh;
//   - after_error(): what a transport does with an error reply on a Redis
//     deployment that may fail over or be a cluster (follow MOVED, ASKING +
//     retry for ASK, reconnect and resolve again for READONLY/MASTERDOWN,
//     retry later for LOADING/TRYAGAIN/CLUSTERDOWN/BUSY, give up otherwise).
// Builds on redis_protocol.hpp (Reply, classify_error, Redirect); nothing here
// throws except std::bad_alloc.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "redis_protocol.hpp"

namespace dlock::detail::redis_proto {

// ---- Slots ----

inline constexpr std::uint16_t cluster_slot_count = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis
/// Cluster hashes keys with ("123456789" -> 0x31C3).
[[nodiscard]] std::uint16_t crc16(std::string_view bytes) noexcept;
/// The slot of `key`: crc16(redis_hash_tag(key)) mod 16384.
[[nodiscard]] std::uint16_t hash_slot(std::string_view key) noexcept;

// ---- Slot map ----

/// One cluster node as a slot map names it.
struct ClusterNode {
  std::string host;  ///< as announced (IP, or hostname with cluster-preferred-endpoint-type)
  std::uint16_t port = 0;
  std::string id;  ///< the node id (40 hex digits) when the reply carried it
  /// "host:port" ("[v6]:port" for IPv6), the pool key and the name in messages.
  [[nodiscard]] std::string endpoint() const;
  friend bool operator==(const ClusterNode&, const ClusterNode&) = default;
};

/// A contiguous run of slots and the nodes serving it.
struct SlotRange {
  std::uint16_t first = 0;
  std::uint16_t last = 0;  ///< inclusive
  ClusterNode primary;
  std::vector<ClusterNode> replicas;
  friend bool operator==(const SlotRange&, const SlotRange&) = default;
};

/// Slot -> node for the 16384 slots. Immutable apart from apply_moved();
/// a transport keeps one, replaces it on refresh, and reads it under its own lock.
class SlotMap {
 public:
  /// Builds the map from a CLUSTER SLOTS reply. `asked_host` is the host the
  /// command was sent to: a node announced with an empty host (Redis 7 with
  /// an unknown preferred endpoint) is that host. Returns the reason when the
  /// reply is not a slot table (wrong shape, a slot out of range, two
  /// ranges claiming one slot, an endpoint "?" that cannot be reached).
  static std::variant<SlotMap, std::string> from_cluster_slots(const Reply& reply, std::string_view asked_host);
  /// The same from a CLUSTER SHARDS reply (Redis 7; RESP2 maps are flat
  /// key/value arrays). Nodes whose health is not "online" are left out;
  /// a shard without an online primary leaves its slots unserved.
  static std::variant<SlotMap, std::string> from_cluster_shards(const Reply& reply, std::string_view asked_host);

  /// The primary serving `slot`, or nullptr when no node does (CLUSTERDOWN,
  /// or the map is partial: refresh it).
  [[nodiscard]] const ClusterNode* primary_for_slot(std::uint16_t slot) const noexcept;
  [[nodiscard]] const ClusterNode* primary_for_key(std::string_view key) const noexcept {
    return primary_for_slot(hash_slot(key));
  }
  /// Every distinct primary, in slot order of its first range.
  [[nodiscard]] std::vector<ClusterNode> primaries() const;
  [[nodiscard]] const std::vector<SlotRange>& ranges() const noexcept { return ranges_; }
  /// Slots with a primary (16384 on a healthy cluster).
  [[nodiscard]] std::size_t served_slots() const noexcept;

  /// MOVED: from now on `redirect.slot` is served by the named node (empty
  /// host: `sender_host`), until the map is rebuilt. The transport should
  /// also schedule a refresh: one MOVED usually means a whole range moved.
  void apply_moved(const Redirect& redirect, std::string_view sender_host);

 private:
  // Sorts the ranges and fills owner_; the reason when two ranges overlap.
  std::optional<std::string> index(std::string_view command);
  std::vector<SlotRange> ranges_;
  std::vector<ClusterNode> moved_;   // nodes named only by MOVED
  std::vector<std::int32_t> owner_;  // slot -> index: ranges_ (>= 0), moved_ (<= -2), none (-1)
};

// ---- What to do after an error reply ----

/// The transport's next step after a command got an error reply. In every
/// case but `fail` the command did not run on the server (a redirect or a
/// refused write happens before any effect; a script hits READONLY at its
/// first write, and dlock's scripts write nothing before their first write
/// that could be refused), so sending it again cannot grant twice.
enum class HaStep {
  /// The reply is the answer (or an error the caller reports): no retry.
  fail,
  /// MOVED: rebuild the slot map (CLUSTER SLOTS on any node) and send the
  /// command to the node the redirect names.
  follow_moved,
  /// ASK: send ASKING then the command, pipelined, on the named node, once;
  /// the slot map is not changed.
  follow_ask,
  /// READONLY, MASTERDOWN: this node is not (or no longer) a usable primary.
  /// Drop the connection from the pool, resolve the primary again (Sentinel:
  /// get-master-addr-by-name; Cluster: refresh the slot map; a name: DNS on
  /// reconnect), then retry.
  reconnect_and_retry,
  /// LOADING, TRYAGAIN, CLUSTERDOWN, BUSY: the server is there but cannot
  /// answer now. Retry after the caller's backoff; CLUSTERDOWN also refreshes
  /// the slot map first. The connection is kept.
  retry_later,
};

struct HaDecision {
  HaStep step = HaStep::fail;
  std::optional<Redirect> redirect;  ///< for follow_moved and follow_ask; host filled in (never empty)
  bool refresh_map = false;          ///< rebuild the slot map before (or while) retrying
  bool drop_connection = false;      ///< the connection must not go back to the pool
};

/// Redirects a command may follow before the transport stops following
/// (a slot bouncing between nodes while a resharding moves it, or while the
/// nodes' maps disagree): after_error() then says retry_later with a map
/// refresh, and the router reports a transient ConnectionError (nothing ran;
/// a blocking acquire retries after its backoff).
inline constexpr int max_redirects = 5;

/// The decision for `error` (an error reply's text) from the node at
/// `sender_host`, after `redirects` redirects were already followed for
/// this command. A MOVED/ASK with an empty host points at `sender_host`;
/// one after max_redirects: retry_later (refresh_map).
[[nodiscard]] HaDecision after_error(std::string_view error, std::string_view sender_host, int redirects = 0);
/// The decision for a kind alone (no redirect target); for kinds that need
/// one (moved, ask) it is `fail`.
[[nodiscard]] HaDecision after_error_kind(ErrorKind kind) noexcept;

/// ASKING, then `call` (as push_script_call would send it), for follow_ask.
/// The reply to ASKING (+OK) comes first and is not the answer.
void push_asking(Request& request);

}  // namespace dlock::detail::redis_proto
