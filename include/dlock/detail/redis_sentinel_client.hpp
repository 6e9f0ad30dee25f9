// Internal: SentinelClient, the I/O half of Redis Sentinel support (issue 14;
// the requests and reply parsers are redis_sentinel.hpp's). For a
// RedisOptions with `sentinel` set it
//   - discovers the primary: SENTINEL MASTER asked of every sentinel in
//     turn, each on its own short connection; the address of the highest
//     configuration epoch, answered by a majority, is used
//     (redis_proto::choose_primary);
//   - opens a connection to it and checks ROLE says master (a sentinel may
//     be stale: a node that is not the primary is closed, ConnectionError);
//   - watches `+switch-master` on one sentinel's pub/sub (the next one when
//     that connection is lost, half a second later) and runs a callback for
//     announcements of its master name (RedisClient retires its pool).
// The last primary found (by discovery or announcement) is kept for callers
// that must not block (the release subscriber's reconnects, abandon()).
// Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "../redis_options.hpp"
#include "redis_sentinel.hpp"
#include "redis_transport.hpp"

namespace dlock::detail {

class SentinelClient {
 public:
  /// `options` must be valid and have `sentinel` set. Connects lazily.
  explicit SentinelClient(RedisOptions options);
  SentinelClient(const SentinelClient&) = delete;
  SentinelClient& operator=(const SentinelClient&) = delete;
  /// Stops watching; no callback runs after it returns.
  ~SentinelClient();

  /// A connection to the primary with `setup`: every sentinel is asked, the
  /// view of the highest configuration epoch is chosen when a majority
  /// answered (redis_proto::choose_primary: never behind the epoch this
  /// client used, nor the old primary of a +switch-master heard), and ROLE
  /// must say master there. Throws ConnectionError otherwise (nothing was
  /// asked of a data node), or what the connection throws (ServerError: auth).
  [[nodiscard]] RedisLink open(const RedisLinkSetup& setup);
  /// For a caller that asks the sentinels itself without blocking (the
  /// asynchronous route): what to pass redis_proto::choose_primary as
  /// `known`, and, once ROLE said master at the chosen address, adopt() so
  /// that this client's later discoveries never go behind that epoch.
  [[nodiscard]] redis_proto::SentinelKnowledge knowledge() const;
  /// `choice` is in use at `primary` (ROLE checked): the
  /// rotation, the epoch known and last_primary() follow it; watch()'s
  /// callback runs (the pool is retired) when the primary moved.
  /// Returns false, adopting nothing, when what this client learned while
  /// the round ran supersedes `choice` (redis_proto::superseded): the caller
  /// must not use its connection (throw_superseded()).
  [[nodiscard]] bool adopt(const redis_proto::PrimaryChoice& choice, RedisOptions primary);
  /// The ConnectionError (retried) for a choice adopt() refused.
  [[noreturn]] void throw_superseded(const redis_proto::PrimaryChoice& choice) const;
  /// The last primary found (open(), adopt()) or announced by +switch-master.
  [[nodiscard]] std::optional<RedisOptions> last_primary() const;
  /// last_primary() as "host:port", kept for the client's lifetime (at most
  /// 16 distinct ones: a label bound); empty before any, or past the bound.
  [[nodiscard]] std::string_view primary_endpoint() const;

  /// Discovery rounds that find no usable primary are spaced out
  /// (redis_proto::DiscoveryPacer): throws ConnectionError, naming the last
  /// round's failure and when the next may start, while one may not start
  /// yet; open() calls it first, the asynchronous route before
  /// each round it starts.
  void check_pace() const;
  /// A round found no usable primary (`why`: its error message).
  void round_failed(std::string why);

  /// Starts watching +switch-master (once; later calls do nothing).
  /// `on_switch` runs on the I/O thread for each announcement of this
  /// master name and must not block.
  void watch(std::function<void()> on_switch);
  /// For tests: +switch-master announcements of this master name received.
  [[nodiscard]] std::uint64_t switches() const;

  struct Watch;

  // For the asynchronous resolution (redis_async_ha.cpp), which asks and
  // checks as open() does, without blocking (with knowledge() and adopt()):
  // the pieces open() uses.
  /// The order to ask the sentinels in (the last one that answered first).
  [[nodiscard]] std::vector<std::size_t> ask_order() const;
  /// Options for sentinel `i`'s connection, and for a data node at `a`.
  [[nodiscard]] RedisOptions options_of_sentinel(std::size_t i) const { return sentinel_options(i); }
  [[nodiscard]] RedisOptions options_of_primary(const redis_proto::NodeAddress& a) const { return primary_options(a); }

 private:
  [[nodiscard]] RedisOptions sentinel_options(std::size_t i) const;
  [[nodiscard]] RedisOptions primary_options(const redis_proto::NodeAddress& a) const;
  /// Sentinel `i`'s view of the primary, or nullopt with why appended to `why`.
  [[nodiscard]] std::optional<redis_proto::MasterView> ask(std::size_t i, std::string& why) const;
  /// Asks every sentinel and decides by redis_proto::choose_primary; throws
  /// ConnectionError (every answer, and why none may be used) when it refuses.
  [[nodiscard]] redis_proto::PrimaryChoice choose(std::string& why);

  /// A +switch-master heard: its new primary is last_ and is tried first.
  void announce(const redis_proto::SwitchMaster& sw);
  /// A connection to `primary` if ROLE says master there; otherwise nullopt,
  /// and why (unreachable, or not the primary) appended to `why`.
  [[nodiscard]] std::optional<RedisLink> open_if_primary(const RedisOptions& primary, const RedisLinkSetup& setup,
                                                         std::string& why);

  const RedisOptions options_;
  mutable std::mutex mu_;
  redis_proto::SentinelRotation rotation_;   // under mu_
  std::optional<RedisOptions> last_;         // under mu_
  redis_proto::SentinelKnowledge known_;     // the view chosen last, the +switch-master heard; under mu_
  redis_proto::DiscoveryPacer pacer_;        // under mu_
  std::function<void()> on_switch_;          // watch()'s callback, run when the primary moved; under mu_
  std::shared_ptr<Watch> watch_;             // under mu_
  mutable std::set<std::string> endpoints_;  // primary_endpoint()'s views; under mu_
};

}  // namespace dlock::detail
