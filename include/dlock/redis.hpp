// dlock/redis.hpp: RedisBackend, locks stored in one Redis server, over TCP, a
// Unix socket or TLS (RedisOptions::tls, rediss://; see dlock/redis_options.hpp).
//
//   dlock::RedisBackend redis(dlock::RedisOptions{.host = "127.0.0.1", .port = 6379});
//   dlock::RedisBackend other("redis://app:secret@127.0.0.1:6379/0");
//   dlock::RedisBackend ha("redis+sentinel://10.0.0.1,10.0.0.2,10.0.0.3/mymaster");
//   dlock::RedisBackend sharded("redis+cluster://10.0.0.1:7000,10.0.0.2:7000");
//   dlock::Lock<dlock::RedisBackend> lock(redis, "orders:42", {.ttl = 10s});
//
// Lock N is the string key `<prefix>{N}` holding the owner id, with a TTL; its
// fencing counter is `<prefix>{N}:fence` and releases are published on
// `<prefix>{N}:released`. Acquire, release and extend are one Lua script each,
// atomic on the server; see docs/redis.md for the scripts, the key layout and
// how clients using plain `SET key value NX PX ttl` interoperate.
//
// Link dlock::redis. Thread-safe: share one RedisBackend between threads; it
// keeps a small pool of connections (a broken one is dropped, never reused)
// and one pub/sub connection that wakes every waiting Lock when a lock is
// released. Every call waits for a free pooled connection (up to
// connect_timeout + command_timeout while all pool_size are busy, then
// TimeoutError), opens one if it must (connect_timeout for the connect, again
// for the handshake: AUTH, SELECT, SCRIPT LOAD), and waits command_timeout for
// the reply (twice after a SCRIPT FLUSH: EVALSHA, then EVAL): at worst about
// 3 x connect_timeout + 3 x command_timeout. The timeouts bound each wait on
// the socket, so a server that trickles its reply can stretch them.
// A RedisBackend is a handle: copies share the pool and the subscriber, which
// close when the last copy goes. Each Lock keeps a copy, so the backend
// object may be destroyed before its locks and guards.
//
// Each new connection checks the server's maxmemory-policy (see
// RedisOptions::eviction_check: a server that may evict lock keys fails
// closed by default). After fork(), a child may go on using a backend it
// inherited: it drops the parent's connections without sending anything and
// opens its own (docs/redis.md, "Connections and what they check").
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "backend.hpp"
#include "detail/redis_client.hpp"
#include "primitives_backend.hpp"
#include "redis_options.hpp"
#include "detail/redis_subscriber.hpp"

namespace dlock {

class RedisBackend {
 public:
  using Handle = NoHandle;

  /// Waits for releases of one lock name (see NotifiesRelease in backend.hpp).
  /// Movable; unsubscribes when destroyed. May outlive the backend safely,
  /// but then never fires again.
  class Subscription {
   public:
    /// True when a release was published since subscribing or since the last
    /// wait_for() that returned true; false when `d` passed first (also while
    /// the pub/sub connection is down: the caller's backoff then takes over).
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d) { return sub_.wait_for(d); }
    /// AsyncNotifiesRelease (lock.hpp): `f` runs once, on the transport's I/O
    /// thread, at the next release (or at once if one came since the last
    /// wake-up), and also when the server acknowledges a SUBSCRIBE that was
    /// still in flight (a release just before it would otherwise be missed).
    void on_release(std::function<void()> f) { sub_.on_release(std::move(f)); }
    /// subscribe_release_one(): the waiter took the lock; the wake it holds
    /// is used and not passed on (Lock calls it). No-op for other subscriptions.
    void taken() noexcept { sub_.taken(); }

   private:
    friend class RedisBackend;
    explicit Subscription(detail::RedisSubscription s) : sub_(std::move(s)) {}
    detail::RedisSubscription sub_;
  };

  /// Validates the options (InvalidArgument). Does not connect: connections
  /// are opened on first use.
  explicit RedisBackend(RedisOptions options);
  /// parse_redis_uri(uri, base).
  explicit RedisBackend(std::string_view uri, RedisOptions base = {});
  explicit RedisBackend(const char* uri, RedisOptions base = {})
      : RedisBackend(std::string_view(uri), std::move(base)) {}

  [[nodiscard]] std::string_view kind() const noexcept { return "redis"; }
  /// "host:port" or the socket path ("the primary of '<name>' (Sentinel)"
  /// with RedisOptions::sentinel, "Redis Cluster (seeds h:p,...)" with
  /// RedisOptions::cluster); never the password.
  [[nodiscard]] std::string_view endpoint() const noexcept { return state_->node->endpoint(); }
  /// The server lock `name` lives on, for events and the metrics' {backend,
  /// endpoint} series: with Sentinel the primary found last, on a Cluster the
  /// primary of the name's slot in the last slot map ("host:port"), else (or
  /// before either is known) endpoint(). Never blocks; valid while the backend lives.
  [[nodiscard]] std::string_view endpoint_of(std::string_view name) const noexcept {
    return state_->node->node_endpoint(name);
  }
  /// Equal for all copies of this handle.
  [[nodiscard]] const void* identity() const noexcept { return state_.get(); }

  // The Backend operations (backend.hpp). Each is one round trip on a pooled
  // connection. Throw ConnectionError (unreachable, reset, timed out: the
  // outcome is unknown; also a failover's READONLY, MASTERDOWN, LOADING,
  // TRYAGAIN, CLUSTERDOWN, BUSY: nothing was done, the acquire loop retries,
  // and a connection that said READONLY or MASTERDOWN is dropped with the
  // pool's other connections after one retry on a new connection), ServerError
  // (errc::auth for a refused AUTH; wrong key type, out of memory, script
  // errors), InvalidArgument
  // (a name this backend cannot store, e.g. one starting with '}').
  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started);

  /// AbandonsInDoubt (backend.hpp): deletes lock `name` if `owner` holds it
  /// (the release script, published so that waiters wake), for an attempt
  /// whose reply was lost although the server may have granted it. Uses a
  /// connection of its own, with connect and command each bounded by
  /// abandon_timeout (or the options' timeouts if shorter), not the pool.
  /// Best effort: never throws; what it cannot delete expires by its TTL.
  void abandon(std::string_view name, const OwnerId& owner) noexcept;
  static constexpr std::chrono::milliseconds abandon_timeout{250};
  /// abandon() without blocking, for the asynchronous acquire: the release
  /// script pipelined on a shared asynchronous link (command_timeout bounds
  /// it); returns at once, the outcome ignored. Never throws.
  void async_abandon(std::string_view name, const OwnerId& owner) noexcept;

  /// The last refusal of a release's PUBLISH (e.g. an ACL user without
  /// permission for the release channels), "" if none. Such a release still
  /// succeeds, but waiters are not woken by it and fall back to their
  /// backoff delay; the first refusal is also written to stderr once.
  [[nodiscard]] std::string publish_refusal() const;

  /// BatchesExtend (backend.hpp): all items' extensions pipelined in one
  /// round trip. Fills valid_until (nullopt: lost) or error per item; a
  /// connection failure sets every item's error. Never throws.
  void extend_many(std::span<ExtendItem> items) noexcept;

  /// Subscribes to releases of `name` on the shared pub/sub connection and
  /// returns once the server acknowledged it (or connect_timeout +
  /// command_timeout passed, or the server refused the SUBSCRIBE, or the
  /// pub/sub connection is down: the subscription then only times out).
  /// Never throws for connection problems.
  [[nodiscard]] Subscription subscribe_release(std::string_view name);

  /// RecordsWaits (backend.hpp): publishes `record` as the string key
  /// `<prefix>waiting:<waiter>` with PX record.ttl (one SET round trip; see
  /// detail/redis_waits.hpp and docs/redis.md for the value format), read by
  /// `dlockctl deadlocks`. clear_wait() deletes it (one DEL). Diagnostics
  /// only: never throw; failures are ignored (the record then expires).
  void record_wait(const WaitRecord& record) noexcept;
  void clear_wait(const WaitRecord& record) noexcept;

  // ---- The primitives (primitives_backend.hpp; src/redis/redis_primitives.cpp) ----
  // SharedLockBackend (RwLock), SemaphoreBackend (Semaphore) and
  // ElectionBackend (Election): each operation is one Lua script of
  // detail/redis_primitive_scripts.hpp, one round trip on a pooled
  // connection, with the errors of the mutex's operations above. Releases
  // publish on the name's release channel (subscribe_release wakes them).
  // Keys and guarantees: docs/primitives.md.
  [[nodiscard]] AcquireResult<Handle> try_acquire_shared(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release_shared(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_shared(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started);
  [[nodiscard]] AcquireResult<Handle> try_acquire_exclusive(const AcquireRequest& request);
  [[nodiscard]] ReleaseResult release_exclusive(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_exclusive(std::string_view name, Lease<Handle>& lease,
                                                          std::chrono::milliseconds ttl, TimePoint started);
  [[nodiscard]] AcquireResult<Handle> try_acquire_permit(const AcquireRequest& request, std::uint32_t permits);
  [[nodiscard]] ReleaseResult release_permit(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_permit(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started);
  /// The count in force for `name`: the operator's (set_permits), else `permits`.
  [[nodiscard]] std::uint32_t permits(std::string_view name, std::uint32_t permits);
  /// Sets (or with nullopt clears) the operator's count, and wakes waiters.
  void set_permits(std::string_view name, std::optional<std::uint32_t> permits);
  [[nodiscard]] AcquireResult<Handle> try_acquire_leader(const AcquireRequest& request, std::string_view candidate);
  [[nodiscard]] ReleaseResult release_leader(std::string_view name, Lease<Handle>& lease);
  [[nodiscard]] std::optional<TimePoint> extend_leader(std::string_view name, Lease<Handle>& lease,
                                                       std::chrono::milliseconds ttl, TimePoint started);
  [[nodiscard]] std::optional<LeaderInfo> leader(std::string_view name);

  // Fair mode (LockOptions::fair; QueuesFairly in lock.hpp): the waiter
  // queue P{N}:queue with per-waiter deadlines P{N}:queue:ttl beside the
  // mutex's key, one script each (detail/redis_primitive_scripts.hpp).
  // try_acquire_fair grants only to the queue's head (or when nobody waits),
  // else queues the caller (keeping its place, deadline renewed to
  // waiter_ttl); release_fair publishes the new head's owner id, which wakes
  // only that waiter's subscribe_release(name, owner). Extension: extend().
  [[nodiscard]] AcquireResult<Handle> try_acquire_fair(const AcquireRequest& request,
                                                       std::chrono::milliseconds waiter_ttl);
  [[nodiscard]] ReleaseResult release_fair(std::string_view name, Lease<Handle>& lease);
  /// A waiter that gives up leaves the queue (waking the next head). Best effort: never throws.
  void leave_fair(std::string_view name, const OwnerId& owner) noexcept;
  /// A subscription woken only by releases that name `owner` as the next head (or nobody).
  [[nodiscard]] Subscription subscribe_release(std::string_view name, const OwnerId& owner);
  /// Wake-one (the blocking Lock's waiters in default mode): each release of
  /// `name` wakes one of this backend's wake-one waiters on it, not all; a
  /// woken waiter that neither takes the lock (Subscription::taken()) nor
  /// finds it held passes the wake on (detail::RedisSubscriber::subscribe_one).
  [[nodiscard]] Subscription subscribe_release_one(std::string_view name);
  /// True when this backend's pub/sub connection is subscribed to releases
  /// of `name` already (another waiter's subscription, acknowledged): a new
  /// subscription then costs no round trip and misses no release after it,
  /// so Lock subscribes before its first attempt.
  [[nodiscard]] bool release_subscribed(std::string_view name);
  /// AsyncBackend (backend.hpp, docs/async.md): the three operations without
  /// blocking a thread: one script call pipelined on a link shared by the
  /// asynchronous requests (up to pool_size of them, opened without
  /// blocking), completed through `ex`, with the blocking calls' results and
  /// errors (command_timeout bounds each; connect_timeout a new link's
  /// connect and handshake).
  void async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done);
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done);
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done);
  /// subscribe_release() without waiting for the server's acknowledgement,
  /// for the asynchronous acquire (the acknowledgement wakes on_release).
  [[nodiscard]] Subscription subscribe_release_nowait(std::string_view name);

  // ---- The primitives without blocking a thread (AsyncSharedLockBackend,
  // AsyncSemaphoreBackend, AsyncElectionBackend in primitives_backend.hpp;
  // src/redis/redis_primitives_async.cpp): the blocking primitives' scripts,
  // each one call on the shared asynchronous links as the AsyncBackend
  // operations above, with the blocking calls' results and errors ----
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
  void async_try_acquire_permit(const AcquireRequest& request, std::uint32_t permits,
                                const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_permit(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done);
  void async_extend_permit(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done);
  void async_try_acquire_leader(const AcquireRequest& request, std::string_view candidate,
                                const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_leader(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done);
  void async_extend_leader(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                           TimePoint started, const boost::asio::any_io_executor& ex, ExtendCompletion done);

  // ---- Fair mode without blocking a thread (AsyncQueuesFairly in lock.hpp;
  // src/redis/redis_primitives_async.cpp): the fair scripts above, each one
  // call on the shared asynchronous links ----
  void async_try_acquire_fair(const AcquireRequest& request, std::chrono::milliseconds waiter_ttl,
                              const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done);
  void async_release_fair(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                          ReleaseCompletion done);
  /// leave_fair() started without waiting for its answer (fire and forget).
  void async_leave_fair(std::string_view name, const OwnerId& owner) noexcept;
  /// subscribe_release(name, owner) without waiting: targeted at `owner`
  /// when this process's subscription to the name's releases is already
  /// acknowledged (no wait then), else an untargeted subscribe_release_nowait
  /// (every release wakes it; its next attempt finds whether it is the head).
  [[nodiscard]] Subscription subscribe_release_nowait(std::string_view name, const OwnerId& owner);

  [[nodiscard]] const RedisOptions& options() const noexcept { return state_->options; }
  /// The node client (connection pool, scripts), for tools and tests.
  [[nodiscard]] detail::RedisClient& node() noexcept { return *state_->node; }

 private:
  struct State {  // shared by all copies
    explicit State(RedisOptions o);
    RedisOptions options;
    std::unique_ptr<detail::RedisClient> node;
    detail::RedisSubscriber subscriber;
  };
  std::shared_ptr<State> state_;
};

static_assert(RecordsWaits<RedisBackend>);
static_assert(AbandonsInDoubt<RedisBackend>);
static_assert(SharedLockBackend<RedisBackend> && SemaphoreBackend<RedisBackend> && ElectionBackend<RedisBackend>);
static_assert(AsyncBackend<RedisBackend>);
static_assert(AsyncSharedLockBackend<RedisBackend> && AsyncSemaphoreBackend<RedisBackend> &&
              AsyncElectionBackend<RedisBackend>);

}  // namespace dlock
