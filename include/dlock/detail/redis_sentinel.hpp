// Internal: Redis Sentinel discovery as requests and reply parsers (issue 14),
// with no I/O. The client protocol Sentinel documents
// (https://redis.io/docs/latest/develop/reference/sentinel-clients/):
//   1. ask the sentinels for the primary's address; the guideline's "first
//      that answers" is not safe for locks (a lagging sentinel names the old
//      primary, which still says master until it is demoted), so dlock asks
//      every sentinel SENTINEL MASTER <name> and takes the address of the
//      highest configuration epoch, from a majority (choose_primary());
//   2. connect to that address and check ROLE says "master" (a sentinel may
//      be stale, or the node not yet promoted): otherwise try again;
//   3. SUBSCRIBE +switch-master on a sentinel: its message names the new
//      primary; also reconnect when a node answers READONLY (after_error()).
// The subscription uses SubscriptionTable (redis_protocol.hpp) like the
// release channels; parse_switch_master() reads its payload.
#pragma once

#include <algorithm>
#include <chrono>
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

/// SENTINEL MASTER <name>: the sentinel's whole view of the master, of which
/// the address and `config-epoch` are read.
void push_sentinel_master(Request& request, std::string_view master_name);

/// A sentinel's view of the primary: its address and the configuration epoch
/// of that view. Every failover is authorised for a new, higher epoch, and a
/// sentinel adopts a configuration from another only when its epoch is
/// greater (Sentinel documentation, "Configuration propagation"): of two
/// views, the higher epoch is the newer one.
struct MasterView {
  NodeAddress address;
  std::uint64_t config_epoch = 0;
  friend bool operator==(const MasterView&, const MasterView&) = default;
};
/// The answer to SENTINEL MASTER (a flat field/value array): MasterUnknown
/// for "ERR No such master with that name".
using MasterViewReply = std::variant<MasterView, MasterUnknown, ReplyFault>;
[[nodiscard]] MasterViewReply parse_sentinel_master(const Reply& reply);

/// One sentinel's answer in a discovery round.
struct SentinelAnswer {
  std::size_t sentinel = 0;  ///< its index in RedisSentinelOptions::sentinels
  MasterView view;
};
/// What a client knows before the round: the view it chose last, and the
/// last +switch-master it heard with the epoch it knew when it heard it.
struct SentinelKnowledge {
  std::optional<MasterView> chosen;
  std::optional<SwitchMaster> announced;
  std::uint64_t epoch_when_announced = 0;
};
/// The primary to use: the view of the highest configuration epoch among
/// the answers, with `sentinel` one that gave it (ask it first next time).
struct PrimaryChoice {
  MasterView view;
  std::size_t sentinel = 0;
};
/// Why no primary may be used now (a failover in progress: retried).
struct NoPrimary {
  std::string why;
};
/// The decision of one discovery round (SentinelClient::open, and any
/// client that finds the primary without blocking: ask every sentinel
/// SENTINEL MASTER, collect the answers, call this, then check ROLE at the
/// chosen address). `configured` is the number of sentinels configured.
/// NoPrimary when:
///   - fewer than a majority (configured / 2 + 1) answered with a view: a
///     minority may all lag behind the configuration the others know;
///   - the answers of the highest epoch name different addresses;
///   - the highest epoch is below `known.chosen`'s, or equal to it with
///     another address (this round's answers lag behind what the client
///     already used);
///   - it names the announced old primary at an epoch no newer than the one
///     known when +switch-master was heard (the switch superseded it).
/// Otherwise the highest-epoch view. Pure.
[[nodiscard]] std::variant<PrimaryChoice, NoPrimary> choose_primary(const std::vector<SentinelAnswer>& answers,
                                                                    std::size_t configured,
                                                                    const SentinelKnowledge& known);

/// Why `view`, chosen by a round that began with older knowledge, may no
/// longer be used by a client that now knows `known` (another round adopted
/// a newer view, or a +switch-master was heard, while this round was
/// checking ROLE); nullopt when it may. Superseded: an epoch behind
/// `known.chosen`'s; the announced old primary at an epoch no newer than the
/// one known when it was announced. The same epoch with another address is
/// not: choose_primary() took it from a majority, and sentinels do name two
/// addresses at one epoch one after the other in a failover's passing states
/// (seen under load); refusing it would strand the client until the next
/// failover. Pure; SentinelClient::adopt() refuses a superseded view.
[[nodiscard]] std::optional<std::string> superseded(const MasterView& view, const SentinelKnowledge& known);

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

/// How often a client may ask the sentinels while no usable primary is
/// found (a failover in progress). Every round asks every sentinel, and a
/// client with many waiters would otherwise start one per retry: hundreds of
/// short connections a second that keep the sentinels' single thread from
/// pinging the new primary in time, so that they judge it down and fail over
/// again (seen: four failovers in five seconds after one SIGKILL, on a busy
/// machine with down-after-milliseconds 500). After a round that found none,
/// the next may start `first` later, then twice that, up to `cap`; a round
/// that found one, or a +switch-master heard (news), lets the next start at
/// once. Pure; not thread-safe; time is passed in.
class DiscoveryPacer {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds first{50};
  static constexpr std::chrono::milliseconds cap{500};

  /// Whether a round may start at `now`.
  [[nodiscard]] bool may_start(Clock::time_point now) const noexcept { return now >= not_before_; }
  /// When the next round may start (meaningful while !may_start).
  [[nodiscard]] Clock::time_point not_before() const noexcept { return not_before_; }
  /// Why the last round found no usable primary ("" before any failure).
  [[nodiscard]] const std::string& last_failure() const noexcept { return last_failure_; }
  /// A round that started at or before `now` found no usable primary.
  void failed(Clock::time_point now, std::string why) {
    spacing_ = spacing_.count() == 0 ? first : std::min<std::chrono::milliseconds>(cap, spacing_ * 2);
    not_before_ = now + spacing_;
    last_failure_ = std::move(why);
  }
  /// A round found the primary: the spacing starts over.
  void succeeded() noexcept {
    spacing_ = std::chrono::milliseconds{0};
    not_before_ = {};
  }
  /// A +switch-master was heard: the next round may start at once (it has
  /// news to find); a failure after it is spaced as before.
  void news() noexcept { not_before_ = {}; }

 private:
  std::chrono::milliseconds spacing_{0};
  Clock::time_point not_before_{};
  std::string last_failure_;
};

}  // namespace dlock::detail::redis_proto
