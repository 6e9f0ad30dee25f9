// dlock/primitives_backend.hpp: the backend capabilities of the primitives
// beyond the mutex (RwLock, Semaphore, Election), and the adapters that let
// each primitive reuse the whole Lock<Backend> front end.
//
// A primitive is built from Lock objects over a *view* of the backend: a small
// copyable adapter that models the Backend concept (backend.hpp) by calling
// one family of the backend's operations. A reader of an RwLock is a
// Lock<SharedView<B>>, whose try_acquire() is B's try_acquire_shared(); a
// permit of a Semaphore is a Lock<PermitView<B>>. So retry and backoff,
// deadlines, auto-extend and loss detection (heartbeat), fencing tokens,
// stop_token / on_lost, observers and metrics work for every primitive exactly
// as for the mutex, from one implementation.
//
// Each operation below follows the rules of its mutex counterpart in
// backend.hpp: one atomic attempt, no loop, no sleep; contention is a value
// (Contended), failures of the service are thrown as dlock::Error; release and
// extend are checked against lease.owner; valid_until is computed from
// request.started. Names of different primitives never collide with each
// other or with mutexes: a backend keeps each primitive's state apart.
//
// Capabilities (B is the backend, H = typename B::Handle):
//
//   SharedLockBackend (RwLock):
//     b.try_acquire_shared(req) -> AcquireResult<H>
//          Grants a read lease unless a writer holds the name, or a writer is
//          waiting for it (writer preference: a writer that found readers
//          leaves a waiting mark with a TTL that blocks *new* readers, so a
//          continuous stream of readers cannot starve it; the mark lapses by
//          itself if that writer gives up or dies). Each reader is a lease of
//          its own with its own expiry. The token is the fencing counter's
//          current value, not incremented (see "what a reader's token means").
//     b.release_shared(name, lease) / b.extend_shared(name, lease, ttl, started)
//     b.try_acquire_exclusive(req) -> AcquireResult<H>
//          Grants the write lease when no writer and no live reader holds the
//          name; the token is a new, strictly greater fencing token.
//     b.release_exclusive(name, lease) / b.extend_exclusive(name, lease, ttl, started)
//
//     What a reader's token means: for a write W and a read R of one name,
//     W granted before R gives token(W) <= token(R), and R granted before W
//     gives token(R) < token(W). A resource that accepts a write only with a
//     token above every token it has seen, and a read only with a token at
//     least the largest write token it has accepted, rejects the reads and
//     writes of a holder whose lease was lost once a later writer has written.
//
//   SemaphoreBackend (Semaphore):
//     b.try_acquire_permit(req, permits) -> AcquireResult<H>
//          Grants one permit (a lease with its own owner id and expiry) when
//          fewer than N live permits are held, where N is the operator's count
//          for the name if one is set (set_permits), else `permits` (the
//          caller's configured count). Each grant gets a strictly greater
//          fencing token.
//     b.release_permit(name, lease) / b.extend_permit(name, lease, ttl, started)
//     b.permits(name, permits) -> std::uint32_t      the count in force (N above)
//     b.set_permits(name, std::optional<std::uint32_t>)  operator: set the
//          count, or clear it (nullopt) so each caller's own count applies.
//          Lowering it below the permits held revokes none: new grants wait
//          until enough are released or expire.
//
//   ElectionBackend (Election):
//     b.try_acquire_leader(req, candidate) -> AcquireResult<H>
//          A mutex on the name that also stores `candidate` (a readable id of
//          the campaigning process) for observers. Token = the term.
//     b.release_leader(name, lease) / b.extend_leader(name, lease, ttl, started)
//     b.leader(name) -> std::optional<LeaderInfo>   who leads now, if anyone.
//
// A backend may also wait in the server's queue for a family:
// b.acquire_wait_shared(req, max_wait), b.acquire_wait_exclusive(req, max_wait),
// b.acquire_wait_leader(req, candidate, max_wait) (as WaitsOnServer in
// backend.hpp); the view then models WaitsOnServer, so a blocked acquire waits
// on the server. PostgresBackend has them: a writer waiting there blocks new
// readers by the server's own queue rule.
//
// A backend may also offer b.subscribe_release(name) (NotifiesRelease in
// backend.hpp) for a name's primitives: every view forwards it, so blocked
// acquires wake on a release instead of polling.
//
// Asynchronous forms (docs/async.md, "Primitives"): a backend that can do a
// family's operations without blocking a thread offers them as AsyncBackend
// operations (backend.hpp) with the family's name in them, each calling its
// completion exactly once through `ex`:
//   b.async_try_acquire_shared(req, ex, done) / async_release_shared(name, lease, ex, done)
//     / async_extend_shared(name, lease, ttl, started, ex, done); the same for
//     _exclusive; b.async_try_acquire_permit(req, permits, ex, done) /
//     async_release_permit / async_extend_permit; b.async_try_acquire_leader(req,
//     candidate, ex, done) / async_release_leader / async_extend_leader.
// The view then models AsyncBackend, so Lock<view> has the async forms and the
// primitives' async members (RwLock::async_lock_shared, ...) compile. A
// backend without them has none: those members are constrained on it (a
// compile-time error), never run blocking underneath. MemoryPrimitives,
// RedisBackend and PostgresBackend have them (AsyncSharedLockBackend,
// AsyncSemaphoreBackend, AsyncElectionBackend below).
//
// Backends: MemoryPrimitives (memory_primitives.hpp), PostgresBackend
// (postgres.hpp) and RedisBackend (redis.hpp; its scripts are in
// detail/redis_primitive_scripts.hpp) have all three; docs/primitives.md says
// what each backend has today.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <stop_token>
#include <string_view>
#include <utility>

#include <boost/asio/any_io_executor.hpp>

#include "backend.hpp"

namespace dlock {

/// Who leads an election (ElectionBackend::leader()).
struct LeaderInfo {
  std::string candidate;              ///< the leader's candidate id
  std::optional<std::uint64_t> term;  ///< its term (fencing token), where the backend has tokens
  friend bool operator==(const LeaderInfo&, const LeaderInfo&) = default;
};

template <class B>
concept SharedLockBackend = requires(B& b, const B& cb, const AcquireRequest& request, std::string_view name,
                                     Lease<typename B::Handle>& lease, std::chrono::milliseconds ttl,
                                     TimePoint started) {
  typename B::Handle;
  { cb.kind() } -> std::convertible_to<std::string_view>;
  { cb.endpoint() } -> std::convertible_to<std::string_view>;
  { b.try_acquire_shared(request) } -> std::same_as<AcquireResult<typename B::Handle>>;
  { b.release_shared(name, lease) } -> std::same_as<ReleaseResult>;
  { b.extend_shared(name, lease, ttl, started) } -> std::same_as<std::optional<TimePoint>>;
  { b.try_acquire_exclusive(request) } -> std::same_as<AcquireResult<typename B::Handle>>;
  { b.release_exclusive(name, lease) } -> std::same_as<ReleaseResult>;
  { b.extend_exclusive(name, lease, ttl, started) } -> std::same_as<std::optional<TimePoint>>;
};

template <class B>
concept SemaphoreBackend = requires(B& b, const B& cb, const AcquireRequest& request, std::string_view name,
                                    Lease<typename B::Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                                    std::uint32_t permits) {
  typename B::Handle;
  { cb.kind() } -> std::convertible_to<std::string_view>;
  { cb.endpoint() } -> std::convertible_to<std::string_view>;
  { b.try_acquire_permit(request, permits) } -> std::same_as<AcquireResult<typename B::Handle>>;
  { b.release_permit(name, lease) } -> std::same_as<ReleaseResult>;
  { b.extend_permit(name, lease, ttl, started) } -> std::same_as<std::optional<TimePoint>>;
  { b.permits(name, permits) } -> std::same_as<std::uint32_t>;
  b.set_permits(name, std::optional<std::uint32_t>{});
};

template <class B>
concept ElectionBackend = requires(B& b, const B& cb, const AcquireRequest& request, std::string_view name,
                                   Lease<typename B::Handle>& lease, std::chrono::milliseconds ttl, TimePoint started) {
  typename B::Handle;
  { cb.kind() } -> std::convertible_to<std::string_view>;
  { cb.endpoint() } -> std::convertible_to<std::string_view>;
  { b.try_acquire_leader(request, name) } -> std::same_as<AcquireResult<typename B::Handle>>;
  { b.release_leader(name, lease) } -> std::same_as<ReleaseResult>;
  { b.extend_leader(name, lease, ttl, started) } -> std::same_as<std::optional<TimePoint>>;
  { b.leader(name) } -> std::same_as<std::optional<LeaderInfo>>;
};

// ---- asynchronous capabilities (see "Asynchronous forms" above) ----

template <class B>
concept AsyncSharedLockBackend = SharedLockBackend<B> &&
    requires(B& b, const AcquireRequest& request, std::string_view name, Lease<typename B::Handle>& lease,
             std::chrono::milliseconds ttl, TimePoint started, const boost::asio::any_io_executor& ex,
             AcquireCompletion<typename B::Handle> on_acquire, ReleaseCompletion on_release,
             ExtendCompletion on_extend) {
  b.async_try_acquire_shared(request, ex, on_acquire);
  b.async_release_shared(name, lease, ex, on_release);
  b.async_extend_shared(name, lease, ttl, started, ex, on_extend);
  b.async_try_acquire_exclusive(request, ex, on_acquire);
  b.async_release_exclusive(name, lease, ex, on_release);
  b.async_extend_exclusive(name, lease, ttl, started, ex, on_extend);
};

template <class B>
concept AsyncSemaphoreBackend = SemaphoreBackend<B> &&
    requires(B& b, const AcquireRequest& request, std::string_view name, Lease<typename B::Handle>& lease,
             std::chrono::milliseconds ttl, TimePoint started, std::uint32_t permits,
             const boost::asio::any_io_executor& ex, AcquireCompletion<typename B::Handle> on_acquire,
             ReleaseCompletion on_release, ExtendCompletion on_extend) {
  b.async_try_acquire_permit(request, permits, ex, on_acquire);
  b.async_release_permit(name, lease, ex, on_release);
  b.async_extend_permit(name, lease, ttl, started, ex, on_extend);
};

template <class B>
concept AsyncElectionBackend = ElectionBackend<B> &&
    requires(B& b, const AcquireRequest& request, std::string_view name, Lease<typename B::Handle>& lease,
             std::chrono::milliseconds ttl, TimePoint started, const boost::asio::any_io_executor& ex,
             AcquireCompletion<typename B::Handle> on_acquire, ReleaseCompletion on_release,
             ExtendCompletion on_extend) {
  b.async_try_acquire_leader(request, name, ex, on_acquire);
  b.async_release_leader(name, lease, ex, on_release);
  b.async_extend_leader(name, lease, ttl, started, ex, on_extend);
};

namespace detail {

/// A Backend made of one family of B's operations, chosen by Ops (which may
/// carry arguments, e.g. a semaphore's configured count). Copyable: it keeps
/// a copy of a copyable (handle) backend, else a reference to B, which must
/// then outlive every Lock over the view.
template <class B, class Ops>
class BackendView {
 public:
  using Handle = typename B::Handle;

  explicit BackendView(B& backend, Ops ops = {}) : backend_(backend), ops_(std::move(ops)) {}

  [[nodiscard]] std::string_view kind() const { return backend_.kind(); }
  [[nodiscard]] std::string_view endpoint() const { return backend_.endpoint(); }
  /// Forwarded when B names the server a lock lives on (RedisBackend with
  /// Sentinel or Cluster): the primitive's keys share the name's hash tag, so
  /// they live where the name's mutex would (events and metrics, issue 14).
  [[nodiscard]] std::string_view endpoint_of(std::string_view name) const noexcept requires requires(const B& b) {
    { b.endpoint_of(name) } -> std::convertible_to<std::string_view>;
  }
  { return backend_.endpoint_of(name); }
  /// The primitive for events and metrics (Event::primitive): Ops::primitive.
  [[nodiscard]] std::string_view primitive() const noexcept { return Ops::primitive; }
  /// Views of one backend (handle) are one backend for batching and ordering.
  [[nodiscard]] const void* identity() const noexcept { return backend_identity(backend_); }

  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& request) {
    return ops_.try_acquire(backend_, request);
  }
  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease) {
    return ops_.release(backend_, name, lease);
  }
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started) {
    return ops_.extend(backend_, name, lease, ttl, started);
  }
  /// Forwarded when B waits on the server for this family (WaitsOnServer):
  /// b.acquire_wait_shared / _exclusive / _leader(request[, candidate], max_wait).
  [[nodiscard]] AcquireResult<Handle> acquire_wait(const AcquireRequest& request,
                                                   std::chrono::milliseconds max_wait) requires
      requires(B& b, const Ops& o) {
    o.acquire_wait(b, request, max_wait);
  }
  { return ops_.acquire_wait(backend_, request, max_wait); }
  /// Forwarded when B notifies releases (NotifiesRelease).
  [[nodiscard]] auto subscribe_release(std::string_view name) requires requires(B& b) { b.subscribe_release(name); }
  { return backend_.subscribe_release(name); }

  // ---- AsyncBackend, when B has this family's asynchronous operations ----
  void async_try_acquire(const AcquireRequest& request, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done) requires requires(B& b, const Ops& o) {
    o.async_try_acquire(b, request, ex, std::move(done));
  }
  { ops_.async_try_acquire(backend_, request, ex, std::move(done)); }
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done) requires requires(B& b, const Ops& o) {
    o.async_release(b, name, lease, ex, std::move(done));
  }
  { ops_.async_release(backend_, name, lease, ex, std::move(done)); }
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done) requires
      requires(B& b, const Ops& o) {
    o.async_extend(b, name, lease, ttl, started, ex, std::move(done));
  }
  { ops_.async_extend(backend_, name, lease, ttl, started, ex, std::move(done)); }
  /// Forwarded when B waits on the server asynchronously for this family
  /// (AsyncWaitsOnServer): b.async_acquire_wait_shared / _exclusive.
  void async_acquire_wait(const AcquireRequest& request, std::chrono::milliseconds max_wait, std::stop_token stop,
                          const boost::asio::any_io_executor& ex, AcquireCompletion<Handle> done) requires
      requires(B& b, const Ops& o) {
    o.async_acquire_wait(b, request, max_wait, stop, ex, std::move(done));
  }
  { ops_.async_acquire_wait(backend_, request, max_wait, std::move(stop), ex, std::move(done)); }
  /// Forwarded when B can subscribe without waiting for the server
  /// (RedisBackend), for the asynchronous acquire.
  [[nodiscard]] auto subscribe_release_nowait(std::string_view name) requires requires(B& b) {
    b.subscribe_release_nowait(name);
  }
  { return backend_.subscribe_release_nowait(name); }

  // Not forwarded, on purpose: extend_many (BatchesExtend) and abandon
  // (AbandonsInDoubt) act on the *mutex's* key of a name, so forwarding them
  // would extend or delete the wrong lease; the heartbeat then extends each
  // primitive lease by extend() above, and an in-doubt grant of a primitive
  // expires by its TTL. record_wait (RecordsWaits) is left to the mutex too:
  // `dlockctl deadlocks` reads mutex waits only.

  [[nodiscard]] B& backend() noexcept { return backend_; }
  [[nodiscard]] const B& backend() const noexcept { return backend_; }
  [[nodiscard]] const Ops& ops() const noexcept { return ops_; }

 private:
  BackendStorage<B> backend_;
  Ops ops_;
};

struct SharedOps {
  static constexpr std::string_view primitive = "rw_read";
  template <class B>
  static auto try_acquire(B& b, const AcquireRequest& r) {
    return b.try_acquire_shared(r);
  }
  template <class B>
  static auto acquire_wait(B& b, const AcquireRequest& r, std::chrono::milliseconds w)
      -> decltype(b.acquire_wait_shared(r, w)) {
    return b.acquire_wait_shared(r, w);
  }
  template <class B, class L>
  static ReleaseResult release(B& b, std::string_view name, L& lease) {
    return b.release_shared(name, lease);
  }
  template <class B, class L>
  static std::optional<TimePoint> extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl,
                                         TimePoint started) {
    return b.extend_shared(name, lease, ttl, started);
  }
  // asynchronous (Async*Backend), when B has them
  template <class B>
  static auto async_try_acquire(B& b, const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                                AcquireCompletion<typename B::Handle> done)
      -> decltype(b.async_try_acquire_shared(r, ex, std::move(done))) {
    return b.async_try_acquire_shared(r, ex, std::move(done));
  }
  template <class B>
  static auto async_acquire_wait(B& b, const AcquireRequest& r, std::chrono::milliseconds w, std::stop_token stop,
                                 const boost::asio::any_io_executor& ex, AcquireCompletion<typename B::Handle> done)
      -> decltype(b.async_acquire_wait_shared(r, w, std::move(stop), ex, std::move(done))) {
    return b.async_acquire_wait_shared(r, w, std::move(stop), ex, std::move(done));
  }
  template <class B, class L>
  static auto async_release(B& b, std::string_view name, L& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done)
      -> decltype(b.async_release_shared(name, lease, ex, std::move(done))) {
    return b.async_release_shared(name, lease, ex, std::move(done));
  }
  template <class B, class L>
  static auto async_extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl, TimePoint started,
                           const boost::asio::any_io_executor& ex, ExtendCompletion done)
      -> decltype(b.async_extend_shared(name, lease, ttl, started, ex, std::move(done))) {
    return b.async_extend_shared(name, lease, ttl, started, ex, std::move(done));
  }
};

struct ExclusiveOps {
  static constexpr std::string_view primitive = "rw_write";
  template <class B>
  static auto try_acquire(B& b, const AcquireRequest& r) {
    return b.try_acquire_exclusive(r);
  }
  template <class B>
  static auto acquire_wait(B& b, const AcquireRequest& r, std::chrono::milliseconds w)
      -> decltype(b.acquire_wait_exclusive(r, w)) {
    return b.acquire_wait_exclusive(r, w);
  }
  template <class B, class L>
  static ReleaseResult release(B& b, std::string_view name, L& lease) {
    return b.release_exclusive(name, lease);
  }
  template <class B, class L>
  static std::optional<TimePoint> extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl,
                                         TimePoint started) {
    return b.extend_exclusive(name, lease, ttl, started);
  }
  // asynchronous (Async*Backend), when B has them
  template <class B>
  static auto async_try_acquire(B& b, const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                                AcquireCompletion<typename B::Handle> done)
      -> decltype(b.async_try_acquire_exclusive(r, ex, std::move(done))) {
    return b.async_try_acquire_exclusive(r, ex, std::move(done));
  }
  template <class B>
  static auto async_acquire_wait(B& b, const AcquireRequest& r, std::chrono::milliseconds w, std::stop_token stop,
                                 const boost::asio::any_io_executor& ex, AcquireCompletion<typename B::Handle> done)
      -> decltype(b.async_acquire_wait_exclusive(r, w, std::move(stop), ex, std::move(done))) {
    return b.async_acquire_wait_exclusive(r, w, std::move(stop), ex, std::move(done));
  }
  template <class B, class L>
  static auto async_release(B& b, std::string_view name, L& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done)
      -> decltype(b.async_release_exclusive(name, lease, ex, std::move(done))) {
    return b.async_release_exclusive(name, lease, ex, std::move(done));
  }
  template <class B, class L>
  static auto async_extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl, TimePoint started,
                           const boost::asio::any_io_executor& ex, ExtendCompletion done)
      -> decltype(b.async_extend_exclusive(name, lease, ttl, started, ex, std::move(done))) {
    return b.async_extend_exclusive(name, lease, ttl, started, ex, std::move(done));
  }
};

struct PermitOps {
  static constexpr std::string_view primitive = "permit";
  std::uint32_t permits = 1;  ///< the caller's configured count

  template <class B>
  auto try_acquire(B& b, const AcquireRequest& r) const {
    return b.try_acquire_permit(r, permits);
  }
  template <class B, class L>
  static ReleaseResult release(B& b, std::string_view name, L& lease) {
    return b.release_permit(name, lease);
  }
  template <class B, class L>
  static std::optional<TimePoint> extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl,
                                         TimePoint started) {
    return b.extend_permit(name, lease, ttl, started);
  }
  // asynchronous (Async*Backend), when B has them
  template <class B>
  auto async_try_acquire(B& b, const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<typename B::Handle> done) const
      -> decltype(b.async_try_acquire_permit(r, permits, ex, std::move(done))) {
    return b.async_try_acquire_permit(r, permits, ex, std::move(done));
  }
  template <class B, class L>
  static auto async_release(B& b, std::string_view name, L& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done)
      -> decltype(b.async_release_permit(name, lease, ex, std::move(done))) {
    return b.async_release_permit(name, lease, ex, std::move(done));
  }
  template <class B, class L>
  static auto async_extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl, TimePoint started,
                           const boost::asio::any_io_executor& ex, ExtendCompletion done)
      -> decltype(b.async_extend_permit(name, lease, ttl, started, ex, std::move(done))) {
    return b.async_extend_permit(name, lease, ttl, started, ex, std::move(done));
  }
};

struct LeaderOps {
  static constexpr std::string_view primitive = "leader";
  std::string candidate;  ///< stored with the leadership for observers

  template <class B>
  auto try_acquire(B& b, const AcquireRequest& r) const {
    return b.try_acquire_leader(r, candidate);
  }
  template <class B>
  auto acquire_wait(B& b, const AcquireRequest& r, std::chrono::milliseconds w) const
      -> decltype(b.acquire_wait_leader(r, candidate, w)) {
    return b.acquire_wait_leader(r, candidate, w);
  }
  template <class B, class L>
  static ReleaseResult release(B& b, std::string_view name, L& lease) {
    return b.release_leader(name, lease);
  }
  template <class B, class L>
  static std::optional<TimePoint> extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl,
                                         TimePoint started) {
    return b.extend_leader(name, lease, ttl, started);
  }
  // asynchronous (Async*Backend), when B has them
  template <class B>
  auto async_try_acquire(B& b, const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<typename B::Handle> done) const
      -> decltype(b.async_try_acquire_leader(r, candidate, ex, std::move(done))) {
    return b.async_try_acquire_leader(r, candidate, ex, std::move(done));
  }
  template <class B, class L>
  static auto async_release(B& b, std::string_view name, L& lease, const boost::asio::any_io_executor& ex,
                            ReleaseCompletion done)
      -> decltype(b.async_release_leader(name, lease, ex, std::move(done))) {
    return b.async_release_leader(name, lease, ex, std::move(done));
  }
  template <class B, class L>
  static auto async_extend(B& b, std::string_view name, L& lease, std::chrono::milliseconds ttl, TimePoint started,
                           const boost::asio::any_io_executor& ex, ExtendCompletion done)
      -> decltype(b.async_extend_leader(name, lease, ttl, started, ex, std::move(done))) {
    return b.async_extend_leader(name, lease, ttl, started, ex, std::move(done));
  }
};

template <class B>
using SharedView = BackendView<B, SharedOps>;
template <class B>
using ExclusiveView = BackendView<B, ExclusiveOps>;
template <class B>
using PermitView = BackendView<B, PermitOps>;
template <class B>
using LeaderView = BackendView<B, LeaderOps>;

}  // namespace detail
}  // namespace dlock
