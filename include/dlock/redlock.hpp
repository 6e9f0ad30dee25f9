// dlock/redlock.hpp: RedlockBackend, one lock held by a majority of N
// independent Redis servers (the Redlock algorithm).
//
//   dlock::RedlockBackend rl(dlock::RedlockOptions{.nodes = {
//       {.host = "127.0.0.1", .port = 7001}, {.host = "127.0.0.1", .port = 7002},
//       {.host = "127.0.0.1", .port = 7003}, {.host = "127.0.0.1", .port = 7004},
//       {.host = "127.0.0.1", .port = 7005}}});
//   dlock::Lock<dlock::RedlockBackend> lock(rl, "orders:42", {.ttl = 10s});
//
// Every operation goes to all nodes at once (one pipelined batch per node,
// all nodes in parallel, driven by poll() on the calling thread) and waits
// for each node at most node_timeout, so a down, slow or paused node costs
// at most node_timeout and never blocks the others. An acquisition counts
// with a quorum (N/2 + 1) of nodes and validity left after the round trip
// and the clock-drift allowance; a failed attempt is released on all nodes
// before try_acquire returns. The keys, scripts and fencing counters on each
// node are the Redis backend's (docs/redis.md); tokens are the largest
// counter among the granting nodes. docs/redlock.md describes the algorithm
// and failure behaviour, docs/safety.md what its guarantees rest on.
//
// Link dlock::redlock. Thread-safe: share one RedlockBackend between threads.
// It keeps up to pool_size idle connections per node (a broken one is
// dropped, never reused). A RedlockBackend is a handle: copies share the
// nodes and their connections, which close when the last copy goes, so the
// backend object may be destroyed before its locks.
//
// Waiters are woken by releases (NotifiesRelease): the first blocking
// acquire that meets contention starts one background thread with one
// pub/sub connection per node; a release published by any node wakes the
// waiters on that name. A backend whose locks never wait gets neither. A
// failed attempt's cleanup publishes nothing, so it does not wake the others.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "clock.hpp"
#include "primitives_backend.hpp"
#include "redis_options.hpp"
#include "detail/redis_subscriber.hpp"
#include "error.hpp"

namespace dlock {

namespace detail {
struct RedlockCalls;  // detail/redlock_calls.hpp
struct RedisOutcome;  // detail/redis_transport.hpp
namespace redis_proto {
struct ScriptCall;  // detail/redis_protocol.hpp
}
}  // namespace detail

struct RedlockOptions {
  /// The independent Redis servers (not replicas of each other). At least 3
  /// unless allow_fewer_than_three; an odd count is best (5 recommended): an
  /// even count tolerates no more failures than one node fewer. Each node's
  /// own key_prefix is ignored in favour of key_prefix below; its timeouts
  /// are superseded by node_timeout.
  std::vector<RedisOptions> nodes{};
  /// Clock drift allowance per unit of TTL: validity loses ttl * factor; in [0, 1).
  double clock_drift_factor = 0.01;
  /// Clock drift allowance added to the above, >= 0.
  std::chrono::milliseconds drift_constant{2};
  /// Limit for one node's answer to one operation, including a connect and
  /// handshake when a new connection is needed. Keep it small against the TTL.
  std::chrono::milliseconds node_timeout{50};
  /// Accept 1 or 2 nodes. Such a set has no fault tolerance at all (every node
  /// is needed): for tests and migrations only.
  bool allow_fewer_than_three = false;
  /// Prepended to every key on every node; must not contain '{' or '}'.
  std::string key_prefix = "dlock:";
  /// The clock validity is measured with; null: steady_clock(). Must be the
  /// clock of the locks that use this backend (LockOptions::clock), and outlive it.
  const Clock* clock = nullptr;
};

namespace detail {
/// Throws InvalidArgument naming the first invalid field and its value
/// ("RedlockOptions.nodes[2].port must be in 1..65535 (got 0)"), also for a
/// node listed twice with the same endpoint text (whatever the database index).
void validate(const RedlockOptions& options);
/// Throws InvalidArgument naming both nodes when two reach the same server:
/// hosts resolving (blocking getaddrinfo) to a shared address with the same
/// port, or unix sockets with the same real path. Hosts that do not resolve
/// now are skipped (the run_id check at first connect still applies).
void check_distinct_servers(const RedlockOptions& options);
}  // namespace detail

class RedlockBackend {
 public:
  using Handle = NoHandle;

  /// Waits for releases of one lock name on every node (see NotifiesRelease
  /// in backend.hpp). Movable; unsubscribes when destroyed. May outlive the
  /// backend safely, but then never fires again.
  class Subscription {
   public:
    /// True when a node published a release since subscribing or since the
    /// last wait_for() that returned true (one release may publish on several
    /// nodes: a later call may then return true at once); false when `d`
    /// passed first.
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d);
    /// AsyncNotifiesRelease (lock.hpp): `f` runs once, on the transport's I/O
    /// thread, after the next release published by any node (or one that came
    /// since the last wake-up), and also after a node acknowledges a
    /// SUBSCRIBE that was still in flight. Like wait_for(), it runs at a
    /// random point of the wake-up spread (at least one acquire round, and
    /// 1 ms), and the other nodes' copies of that release that come in
    /// meanwhile belong to this wake-up: one release wakes a waiter once.
    void on_release(std::function<void()> f);
    /// How many nodes acknowledged the subscription before subscribe_release returned.
    [[nodiscard]] std::size_t acknowledged() const noexcept { return sub_.acknowledged(); }

   private:
    friend class RedlockBackend;
    Subscription(detail::RedisSubscription s, std::shared_ptr<const std::atomic<std::int64_t>> round_ns)
        : sub_(std::move(s)), round_ns_(std::move(round_ns)) {}
    detail::RedisSubscription sub_;
    std::shared_ptr<const std::atomic<std::int64_t>> round_ns_;
  };

  /// Validates the options and checks that no server is listed twice
  /// (detail::check_distinct_servers: resolves the host names, a blocking
  /// getaddrinfo each) (InvalidArgument naming both nodes). Does not connect:
  /// connections are opened on first use, and each new one reads the
  /// server's run_id (INFO server): two nodes with the same run_id are one
  /// server reached two ways (a unix socket and a TCP address, a proxy), and
  /// every acquire then fails with ServerError naming both.
  explicit RedlockBackend(RedlockOptions options);

  [[nodiscard]] std::string_view kind() const noexcept { return "redlock"; }
  /// "redlock(127.0.0.1:7001,127.0.0.1:7002,...)"; never a password.
  [[nodiscard]] std::string_view endpoint() const noexcept;
  /// Equal for all copies of this handle.
  [[nodiscard]] const void* identity() const noexcept { return state_.get(); }

  // The Backend operations (backend.hpp), each one parallel round over all nodes.
  //
  // try_acquire: Grant when a quorum granted with validity left (token: the
  //   largest counter among them; valid_until = started + ttl - drift).
  //   Otherwise releases on all nodes, then returns Contended (holder_ttl:
  //   when enough holder keys expire for a quorum to be free) if enough nodes
  //   answered, or throws ConnectionError (ServerError if a node refused) when
  //   too many nodes failed for any quorum, TimeoutError when the round used
  //   up the whole validity. InvalidArgument for a ttl not above the drift
  //   allowance or a name starting with '}'.
  // release: released when at least one node deleted this owner's key;
  //   not_held when none did and at least a quorum answered; else throws
  //   ConnectionError (the keys expire by their TTL).
  // extend: the new valid_until when a quorum extended with validity left;
  //   nullopt (lost) when so many nodes no longer hold it that no quorum can,
  //   or no validity is left (what remains of it is then released); throws
  //   ConnectionError when failures kept the quorum from being reached (the
  //   old validity still holds: try again within it).
  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started);

  /// AbandonsInDoubt (backend.hpp): deletes lock `name` on every node where
  /// `owner` holds it (the release script, published), for an attempt whose
  /// outcome is unknown. One parallel round bounded by node_timeout. Best
  /// effort: never throws; what it cannot delete expires by its TTL.
  void abandon(std::string_view name, const OwnerId& owner) noexcept;
  /// abandon() without blocking, for the asynchronous acquire: the same
  /// round, all nodes at once; returns at once, the outcome ignored.
  void async_abandon(std::string_view name, const OwnerId& owner) noexcept;

  /// The latest refusal of a release's PUBLISH (e.g. an ACL user without
  /// permission for the release channels) by the first node, in
  /// RedlockOptions.nodes order, that refused one; "" if none. Such a release
  /// still succeeds, but waiters are not woken by it; each node's first
  /// refusal is also written to stderr once.
  [[nodiscard]] std::string publish_refusal() const;

  /// BatchesExtend (backend.hpp): every item's extension in one pipelined
  /// batch per node, all nodes in parallel; each item is judged as extend()
  /// (valid_until, nullopt: lost, or error: ConnectionError). Never throws.
  void extend_many(std::span<ExtendItem> items) noexcept;

  /// Subscribes to releases of `name` on every node and returns once each
  /// node acknowledged it or failed (a down node at once, a paused one after
  /// at most 2 x node_timeout, and not again within the second after that):
  /// nodes that are down simply do not contribute until the background
  /// thread reconnects them, at most once a second. Starts the thread and
  /// connections on first use. Throws ConnectionError only when the thread
  /// cannot be started; never for a node's connection problems.
  [[nodiscard]] Subscription subscribe_release(std::string_view name);

  /// AsyncBackend (backend.hpp, docs/async.md): the same rounds as the
  /// blocking operations (same judgement, same errors), each node's requests
  /// pipelined on a link shared by the asynchronous requests, all nodes at
  /// once, each bounded by node_timeout; nothing blocks a thread; the
  /// completion runs through `ex`.
  void async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done);
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done);
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done);
  /// subscribe_release() without waiting for the nodes' acknowledgements,
  /// for the asynchronous acquire (an acknowledgement wakes on_release).
  [[nodiscard]] Subscription subscribe_release_nowait(std::string_view name);

  [[nodiscard]] const RedlockOptions& options() const noexcept;
  [[nodiscard]] std::size_t node_count() const noexcept;
  /// N / 2 + 1.
  [[nodiscard]] std::size_t quorum() const noexcept;

  // ---- primitives (primitives_backend.hpp; docs/primitives.md, "Redlock") ----
  //
  // SharedLockBackend (RwLock<RedlockBackend>) and ElectionBackend
  // (Election<RedlockBackend>): each operation is the Redis backend's script
  // for it (detail/redis_primitive_scripts.hpp) run on every node in one
  // parallel round and judged as the mutex's (above): a grant needs a quorum
  // with validity left (ttl - elapsed - drift), a failed attempt is undone on
  // every node it reached or did not hear from, and the token is the largest
  // node counter, raised on the granting nodes (a reader's too, so that a
  // later writer's token is above it). Blocking and asynchronous forms.
  // No SemaphoreBackend: each node would count its own permits, and a
  // majority of nodes each below N does not bound the holders (docs/primitives.md).
  [[nodiscard]] AcquireResult<Handle> try_acquire_shared(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release_shared(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_shared(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started);
  [[nodiscard]] AcquireResult<Handle> try_acquire_exclusive(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release_exclusive(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_exclusive(std::string_view name, Lease<Handle>& lease,
                                                          std::chrono::milliseconds ttl, TimePoint started);
  [[nodiscard]] AcquireResult<Handle> try_acquire_leader(const AcquireRequest& request, std::string_view candidate);
  [[nodiscard]] ReleaseResult release_leader(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_leader(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started);
  // AsyncSharedLockBackend, AsyncElectionBackend: the same rounds without
  // blocking a thread (as async_try_acquire above); the completion runs through `ex`.
  void async_try_acquire_shared(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                AcquireCompletion<Handle> done);
  void async_release_shared(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done);
  void async_extend_shared(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done);
  void async_try_acquire_exclusive(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                                   AcquireCompletion<Handle> done);
  void async_release_exclusive(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                               ReleaseCompletion done);
  void async_extend_exclusive(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                              TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done);
  void async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_leader(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done);
  void async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done);
  /// Who leads: the candidate that a quorum of nodes name (term: the largest
  /// they report), nullopt when none can; throws ConnectionError when too
  /// many nodes failed to tell.
  [[nodiscard]] std::optional<LeaderInfo> leader(std::string_view name);

 private:
  struct State;
  // The rounds of one lease family (detail::RedlockCalls), shared by the
  // mutex and the primitives. The name is validated by the caller.
  AcquireResult<Handle> acquire_by(const AcquireRequest& request, detail::RedlockCalls calls);
  ReleaseResult release_by(std::string_view name, const OwnerId& owner, const detail::RedlockCalls& calls);
  std::optional<TimePoint> extend_by(std::string_view name, const OwnerId& owner, std::chrono::milliseconds ttl,
                                     TimePoint started, const detail::RedlockCalls& calls);
  // The asynchronous rounds (as the blocking ones); `calls` builds the
  // family's calls inside the operation, so that its errors complete `done`.
  void async_acquire_by(const AcquireRequest& request, const std::function<detail::RedlockCalls()>& calls,
                        const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_by(std::string_view name, const OwnerId& owner, const std::function<detail::RedlockCalls()>& calls,
                        const boost::asio::any_io_executor& ex, ReleaseCompletion done);
  void async_extend_by(std::string_view name, const OwnerId& owner, std::chrono::milliseconds ttl, TimePoint started,
                       const std::function<detail::RedlockCalls()>& calls, const boost::asio::any_io_executor& ex,
                       ExtendCompletion done);
  // `call` on every node, one parallel round.
  std::vector<detail::RedisOutcome> read_round(const detail::redis_proto::ScriptCall& call,
                                               std::string_view what) const;
  std::shared_ptr<State> state_;
};

static_assert(NotifiesRelease<RedlockBackend>);
static_assert(AbandonsInDoubt<RedlockBackend>);
static_assert(AsyncBackend<RedlockBackend>);
static_assert(AsyncSharedLockBackend<RedlockBackend>);
static_assert(AsyncElectionBackend<RedlockBackend>);
// The semaphore does not carry over to a quorum of independent counts
// (docs/primitives.md, "Redlock"): Semaphore<RedlockBackend> does not compile.
static_assert(!SemaphoreBackend<RedlockBackend>);

}  // namespace dlock
