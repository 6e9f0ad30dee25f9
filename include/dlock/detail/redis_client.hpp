// Internal: RedisClient, the client for one Redis server, shared by RedisBackend and
// Redlock: a bounded pool (detail/pool.hpp) of transport links
// (detail/redis_transport.hpp: connect, TLS, AUTH, SELECT, the server checks,
// timeouts, SCRIPT LOAD), the lock scripts (EVALSHA with one EVAL resend on
// NOSCRIPT; the KEYS/ARGV layouts are redis_protocol.hpp's), reply parsing
// and error mapping.
//
// fork(): a connection belongs to the process that opened it. A pool used in
// a child process drops what it inherited without sending anything (the fd
// is closed: the parent keeps its session) and opens new connections.
//
// Errors (issue 11 item 19; include/dlock/error.hpp): ConnectionError when the
// server cannot be reached (connect refused, failed or timed out, no answer to
// the connection's handshake within connect_timeout: nothing was asked of it)
// or drops the connection after a request was sent (its outcome unknown, said
// in the message); TimeoutError when a request was sent and got no answer
// within command_timeout (its outcome unknown: it may have been granted), or
// when no pooled connection became free in time. A connection that failed is
// dropped, never reused. ServerError for error replies (errc::auth for NOAUTH
// / WRONGPASS / NOPERM), except a failover's transient states (READONLY,
// MASTERDOWN, LOADING, TRYAGAIN, CLUSTERDOWN, BUSY): ConnectionError, nothing
// done. A connection that answered READONLY or MASTERDOWN (not the primary)
// is dropped and the pool's generation bumped; the script calls are sent
// once more on a new connection (resolving the name again) before that
// error is thrown. Messages name the endpoint, never the password.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../redis_options.hpp"
#include "pool.hpp"
#include "redis_keys.hpp"
#include "redis_protocol.hpp"
#include "redis_scripts.hpp"
#include "redis_transport.hpp"

namespace dlock::detail {

/// The acquire script's answer (see redis_scripts.hpp).
struct AcquireReply {
  bool acquired = false;
  std::uint64_t token = 0;                              ///< when acquired
  std::optional<std::chrono::milliseconds> holder_ttl;  ///< when not; empty if the holder set no TTL
};
/// Parses the acquire script's reply from `endpoint` for `lock_key`; throws
/// ServerError for error replies and for replies of an unexpected shape.
[[nodiscard]] AcquireReply parse_acquire_reply(const RedisValue& reply, std::string_view endpoint,
                                               std::string_view lock_key);
/// Parses the 0/1 reply of the extend and fence-raise scripts; `op`
/// ("extend") and `key` name it in messages. Throws ServerError.
[[nodiscard]] bool parse_flag_reply(const RedisValue& reply, std::string_view endpoint, std::string_view op,
                                    std::string_view key);

/// The release script's answer (see redis_scripts.hpp).
struct ReleaseReply {
  bool released = false;
  std::string publish_error;  ///< released, but the server refused the PUBLISH (e.g. no channel permission)
};
/// Parses the release script's reply for `lock_key`; throws ServerError for
/// error replies and for replies of an unexpected shape.
[[nodiscard]] ReleaseReply parse_release_reply(const RedisValue& reply, std::string_view endpoint,
                                               std::string_view lock_key);

class SentinelClient;
class ClusterClient;
class AsyncRoute;

/// An error reply saying the server is not (or no longer) a usable primary
/// (READONLY, MASTERDOWN): the connection that got it must not be used again.
[[nodiscard]] bool not_primary(const RedisValue& r);
/// not_primary() of any of `replies`.
[[nodiscard]] bool any_not_primary(const std::vector<RedisValue>& replies);

/// One Redis server (with options.sentinel: the primary the sentinels name,
/// detail/redis_sentinel_client.hpp): a pool of links and the lock
/// operations. With options.cluster every call is routed by a ClusterClient
/// (detail/redis_cluster_client.hpp) to the pool of its slot's primary.
/// Thread-safe.
class RedisClient {
 public:
  /// `options` must be valid (detail::validate). Connects lazily.
  explicit RedisClient(RedisOptions options, RedisLinkSetup setup = {});
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;
  ~RedisClient();

  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] const RedisOptions& options() const noexcept { return options_; }
  [[nodiscard]] RedisKeys keys(std::string_view name) const { return redis_keys(options_.key_prefix, name); }

  using AcquireReply = detail::AcquireReply;
  /// The acquire script: SET NX PX of keys.lock = owner plus the fencing counter.
  AcquireReply acquire(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds ttl);
  /// The release script: true if `owner` held the lock (it is now deleted and
  /// the release published), false if it had expired or another owner holds it.
  /// A refused publish is noted in facts() (ServerFacts::note_publish_refusal), not thrown.
  bool release(const RedisKeys& keys, std::string_view owner);
  /// The release script on a connection of its own (not the pool's, which may
  /// be exhausted by the slow server that made an attempt in doubt), with
  /// connect and command each bounded by `timeout`. Best effort: never throws.
  void abandon(const RedisKeys& keys, std::string_view owner, std::chrono::milliseconds timeout) noexcept;
  /// The extend script: true if `owner` holds the lock (TTL reset to `ttl`).
  bool extend(std::string_view lock_key, std::string_view owner, std::chrono::milliseconds ttl);

  struct ExtendItem {
    std::string_view lock_key;
    std::string_view owner;
    std::chrono::milliseconds ttl;
  };
  /// Many owner-checked extensions in one round trip (pipelined EVALSHA).
  /// result[i] is extend(items[i]...). A connection error fails the whole
  /// batch (thrown). An error reply for one item is thrown too, unless
  /// `errors` is given: then (*errors)[i] holds it and result[i] is false.
  std::vector<bool> extend_many(std::span<const ExtendItem> items, std::vector<std::exception_ptr>* errors = nullptr);

  /// Script calls pipelined on one pooled connection, with one EVAL resend of
  /// those answered NOSCRIPT; a reply per call (error replies as values).
  /// `what` names them in messages. Throws for connection failures.
  std::vector<RedisValue> run_scripts(std::span<const redis_proto::ScriptCall> calls, std::string_view what);

  /// Any command on a pooled connection (for tools and tests). Error replies
  /// are returned as values.
  RedisValue command(std::span<const std::string_view> args);
  RedisValue command(std::initializer_list<std::string_view> args) {
    return command(std::span<const std::string_view>(args.begin(), args.size()));
  }

  /// Number of connections currently open (idle or in use).
  [[nodiscard]] std::size_t open_connections() const { return pool_.open_count(); }
  /// What the connections' handshakes learned about the server, and the warnings given.
  [[nodiscard]] ServerFacts& facts() noexcept { return facts_; }
  [[nodiscard]] const ServerFacts& facts() const noexcept { return facts_; }

  /// A pooled link, checked out (blocks up to connect_timeout +
  /// command_timeout while pool_size are busy: TimeoutError), or with
  /// `wait` zero: an idle or new one, or nothing when all are busy.
  using Checkout = Pool<RedisLink>::Checkout;
  [[nodiscard]] Checkout take();
  [[nodiscard]] std::optional<Checkout> try_take();
  [[nodiscard]] std::optional<Checkout> pool_take(std::chrono::nanoseconds wait);
  void give_back(Checkout c, bool healthy) noexcept { pool_.give_back(std::move(c), healthy); }

  /// The options of the server the pool connects to: options() itself, or
  /// with Sentinel the last primary found (nullopt before any). Never blocks.
  [[nodiscard]] std::optional<RedisOptions> current_server() const;
  /// With Sentinel: `f` runs (on any thread; it must not block) whenever the
  /// primary changed (a +switch-master heard, or a discovery that found
  /// another one), after the pool let go of the old primary: the release
  /// subscriber's relocate(). Set once, before the client is used.
  void on_primary_moved(std::function<void()> f);
  /// With Sentinel, for tests: the +switch-master announcements received; else 0.
  [[nodiscard]] std::uint64_t failovers_seen() const;
  /// The server lock `name` lives on (RedisBackend::endpoint_of): with
  /// Sentinel the primary found last, with Cluster the primary of the name's
  /// slot in the last map, else endpoint(). Never blocks; the view lives as
  /// long as this client. Defined with the cluster router (redis_cluster_client.cpp).
  [[nodiscard]] std::string_view node_endpoint(std::string_view name) const noexcept;
  /// For the asynchronous operations (detail/redis_async.hpp): one of up to
  /// pool_size links shared by every asynchronous request (pipelined on it),
  /// opened on demand without blocking; broken ones are replaced. Separate
  /// from the pool, whose checkout may block.
  [[nodiscard]] std::shared_ptr<RedisLink> shared_link();

 private:
  RedisLink open_link();
  bool released(const RedisValue& reply, const RedisKeys& keys);

  const RedisOptions options_;
  const std::string endpoint_;
  ServerFacts facts_;
  RedisLinkSetup setup_;
  Pool<RedisLink> pool_;
  std::unique_ptr<SentinelClient> sentinel_;  // with options.sentinel
  std::mutex shared_mu_;                      // shared_link()
  std::vector<std::shared_ptr<RedisLink>> shared_links_;
  std::size_t shared_next_ = 0;
  pid_t shared_pid_ = 0;
  std::unique_ptr<ClusterClient> cluster_;  // with options.cluster: routes every call, pool_ unused
 public:
  /// With options.cluster: the router (redis_cluster_client.hpp); else null.
  [[nodiscard]] ClusterClient* cluster() noexcept { return cluster_.get(); }
  /// With options.sentinel: the discovery (redis_sentinel_client.hpp); else null.
  [[nodiscard]] SentinelClient* sentinel() noexcept { return sentinel_.get(); }
  /// What every new link of this client sends first.
  [[nodiscard]] const RedisLinkSetup& link_setup() const noexcept { return setup_; }
  /// For the asynchronous operations (detail/redis_async.hpp): where their
  /// requests go (shared_link(); with Sentinel the current primary, with
  /// Cluster the slot's primary), resolved without blocking. Created on
  /// first use; outlives this client safely (it is detached from it here).
  [[nodiscard]] std::shared_ptr<AsyncRoute> async_route();

 private:
  friend class AsyncRoute;             // starts the +switch-master watch with on_failover()
  void on_failover() noexcept;         // +switch-master: the pool and the asynchronous route let go of the old primary
  void detach_async_route() noexcept;  // ~RedisClient: the route's later callbacks no longer reach this client
  std::shared_ptr<AsyncRoute> async_route_;  // under shared_mu_
  std::function<void()> primary_moved_;      // on_primary_moved(); under shared_mu_
};

/// Sends batches[i] to nodes[i] for every i at once (nodes with an empty
/// batch are skipped), pipelined on one pooled connection per node, and
/// waits for every reply. With a `timeout`, the same deadline from now
/// (steady clock) bounds every node, its connect and a wait for a busy pool
/// (`deadline_name` names it in messages, e.g. "the Redlock node_timeout
/// 50ms"); without, each node's own timeouts do (RedisBackend: the one-node
/// case). Calls answered NOSCRIPT are sent once more as EVAL. `what` names
/// the operation in messages. A connection that failed or missed the
/// deadline is dropped. The outcome per node: a reply per call, or the error
/// for the whole batch. Never throws except std::bad_alloc.
[[nodiscard]] std::vector<RedisOutcome> fan_out(std::span<RedisClient* const> nodes,
                                                std::span<const std::vector<redis_proto::ScriptCall>> batches,
                                                std::optional<std::chrono::milliseconds> timeout, std::string_view what,
                                                std::string_view deadline_name);

}  // namespace dlock::detail
