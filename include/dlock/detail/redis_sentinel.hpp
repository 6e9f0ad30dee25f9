// Internal: Redis Sentinel discovery as requests and reply parsers (issue 14),
// with no I/O. The client protocol Sentinel documents
// (https://redis.io/docs/latest/develop/reference/sentinel-clients/):
//   1. ask each sentinel in turn SENTINEL get-master-addr-by-name <name>; the
//      first that answers with an address moves to the front of the list;
//   2. connect to that address and check ROLE says "master" (a sentinel may
//      be stale, or the node not yet promoted): otherwise try again;
//   3. SUBSCRIBE +switch-master on a sentinel: its message names the new
//      primary; also reconnect when a node answers READONLY (after_error()).
// The subscription uses SubscriptionTable (redis_protocol.hpp) like the
// release channels; parse_switch_master() reads its payload.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "redis_protocol.hpp"

namespace dlock::detail::redis_proto {

/// A host and port as Sentinel and ROLE name them.
struct NodeAddress {
  std::string host;
  std::uint16_t port = 0;
  friend bool operator==(const NodeAddress&, const NodeAddress&) = default;
};

/// The pub/sub channel sentinels announce a new primary on.
inline constexpr std::string_view switch_master_channel = "+switch-master";

void push_get_master_addr(Request& request, std::string_view master_name);
void push_role(Request& request);

/// The answer to SENTINEL get-master-addr-by-name.
struct MasterUnknown {};  ///< nil: this sentinel does not monitor that name
using MasterAddr = std::variant<NodeAddress, MasterUnknown, ReplyFault>;
[[nodiscard]] MasterAddr parse_master_addr(const Reply& reply);

/// The answer to ROLE.
struct RoleInfo {
  enum class Role { master, replica, sentinel };
  Role role = Role::master;
  std::int64_t offset = 0;            ///< master: its offset; replica: what it processed
  std::vector<NodeAddress> replicas;  ///< master: the connected replicas
  std::optional<NodeAddress> master;  ///< replica: the primary it follows
  std::string link_state;             ///< replica: "connect", "connecting", "sync", "connected", ...
  std::vector<std::string> masters;   ///< sentinel: the names it monitors
};
[[nodiscard]] std::variant<RoleInfo, ReplyFault> parse_role(const Reply& reply);

/// A `+switch-master` message: "<name> <old-ip> <old-port> <new-ip> <new-port>".
struct SwitchMaster {
  std::string master_name;
  NodeAddress from;
  NodeAddress to;
  friend bool operator==(const SwitchMaster&, const SwitchMaster&) = default;
};
[[nodiscard]] std::optional<SwitchMaster> parse_switch_master(std::string_view payload);

/// Whether one discovery (SentinelClient::open) tries `answer`, a sentinel's
/// name for the primary, with a connection and a ROLE check. `announced` is
/// the last +switch-master heard for this master name (its new primary is
/// tried first, before any sentinel is asked, and is in `tried` then), `tried`
/// the addresses this discovery already tried. Not tried: an address already
/// tried, and the announced OLD primary: a sentinel that has not caught up
/// still names it, and ROLE says master there until it is demoted, so a client
/// that heard the switch would otherwise lock on the old primary. Pure.
[[nodiscard]] bool worth_trying(const NodeAddress& answer, const std::optional<SwitchMaster>& announced,
                                const std::vector<NodeAddress>& tried);

/// Which sentinel to ask next: in order, starting with the last one that
/// answered (the clients' guideline). Pure; not thread-safe.
class SentinelRotation {
 public:
  explicit SentinelRotation(std::size_t count) : count_(count) {}
  /// The order to try for the next discovery: every sentinel once.
  [[nodiscard]] std::vector<std::size_t> order() const;
  /// Sentinel `index` answered with an address: ask it first next time.
  void answered(std::size_t index) noexcept {
    if (index < count_) first_ = index;
  }

 private:
  std::size_t count_;
  std::size_t first_ = 0;
};

}  // namespace dlock::detail::redis_proto
