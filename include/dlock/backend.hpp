// dlock/backend.hpp: the Backend concept every lock service plugs in through.
//
// A backend performs single operations against its lock service: one acquire
// attempt, one release, one extension. It never loops, sleeps or retries:
// retry, backoff, jitter and deadlines belong to Lock<Backend>. A backend must
// be safe to call from several threads at once.
//
// Lifetime: a backend that is copyable is treated as a handle: copies share
// one state (connection pool, ...), each Lock keeps a copy, so destroying the
// application's backend object before its locks and guards is safe; such a
// backend provides identity(), equal for all copies. A non-copyable backend
// is kept by reference and must outlive every Lock that uses it.
//
// Required (B is the backend, H = typename B::Handle):
//
//   typename B::Handle        per-lease state the backend needs until release,
//                             e.g. a pinned connection; NoHandle when none.
//   b.kind() -> string_view   short backend name for metrics and logs ("redis").
//   b.endpoint() -> string_view  where locks live, for errors and logs; must
//                             never contain a password.
//   b.try_acquire(const AcquireRequest&) -> AcquireResult<H>
//        One atomic attempt. Grant{token, valid_until, handle} when the lock
//        was free; Contended{holder_ttl} when someone else holds it (contention
//        is a value, not an exception). valid_until must be computed from
//        request.started, the time taken just before the request was sent, so
//        that network delay only shortens the validity the caller sees.
//   b.release(name, Lease<H>&) -> ReleaseResult
//        Owner-checked and atomic: deletes the lock only if lease.owner still
//        holds it. released, or not_held when it had expired or been taken;
//        calling it again for the same lease returns not_held.
//   b.extend(name, Lease<H>&, ttl, started) -> std::optional<time_point>
//        Owner-checked: resets the TTL to `ttl` and returns the new valid_until
//        (computed from `started`), or nullopt when the lease is no longer this
//        owner's (lost).
//
// Failures of the service itself (unreachable, timed out, refused) are thrown
// as dlock::Error subclasses; a ConnectionError means the outcome is unknown.
//
// Optional capabilities, detected at compile time:
//
//   NotifiesRelease: b.subscribe_release(name) -> S, where S is movable and
//        S.wait_for(duration) -> bool blocks until a release of `name` is
//        observed (true) or the duration passes (false). A blocking acquire
//        subscribes *before* its next attempt, so a release between that
//        attempt and the wait still wakes it: no lost wake-up.
//   WaitsOnServer: b.acquire_wait(const AcquireRequest&, max_wait) -> AcquireResult<H>
//        waits for the lock inside the server (in the server's queue order)
//        for at most max_wait; the front end then never polls.
//   BatchesExtend: b.extend_many(std::span<ExtendItem>) extends many leases
//        in as few round trips as it can (one pipelined batch per server),
//        filling each item's `valid_until` (nullopt: lost) or `error`. The
//        heartbeat uses it for leases that fall due together.
//   RecordsWaits: b.record_wait(const WaitRecord&) / b.clear_wait(const WaitRecord&)
//        publish, while an acquire is blocked, what it waits for and what its
//        thread already holds, with a TTL so the record vanishes with the
//        waiter; operator tools build the cross-process wait-for graph from
//        them (dlockctl deadlocks). Diagnostics only: never throw.
//
//   AbandonsInDoubt: b.abandon(name, owner) noexcept: a best-effort,
//        owner-checked delete of whatever an attempt by `owner` whose outcome
//        is unknown (its reply timed out or the connection broke after the
//        request was sent) may have left on the server. The front end calls it
//        when it gives up on that owner id (a failed try_lock(), or a blocking
//        acquire that ends on such an error), so an in-doubt grant does not
//        block everyone for a TTL. Never throws.
//
//   AsyncBackend: the three single operations without blocking a thread, for
//        Lock's asynchronous API (docs/async.md). Each takes an Asio executor
//        and a completion, returns at once, and calls the completion exactly
//        once, through the executor (never inside the initiating call), with
//        an exception_ptr (null on success; else the dlock::Error the blocking
//        call would have thrown, same meaning) and the blocking call's result:
//          b.async_try_acquire(const AcquireRequest&, executor, AcquireCompletion<H>)
//          b.async_release(name, Lease<H>&, executor, ReleaseCompletion)
//          b.async_extend(name, Lease<H>&, ttl, started, executor, ExtendCompletion)
//        The request's name and owner, and the lease, stay valid until the
//        completion runs; the backend copies nothing else. Server I/O must be
//        asynchronous on that executor (or on the backend's own I/O thread,
//        completing through the executor); backoff and deadlines stay in the
//        front end, as for the blocking calls. A lease's release and
//        extensions are serialised by the front end as for the blocking calls.
//        MemoryBackend has it; RedisBackend (on its Asio transport) and
//        PostgresBackend (libpq in non-blocking mode on a stream_descriptor)
//        are meant to.
//
//   AsyncWaitsOnServer: AsyncBackend and WaitsOnServer, and acquire_wait
//        without blocking a thread:
//          b.async_acquire_wait(const AcquireRequest&, max_wait, std::stop_token, executor, AcquireCompletion<H>)
//        waits in the server's queue as acquire_wait does (AsyncBackend's
//        rules for the completion); a stop request ends the wait promptly and
//        leaves nothing queued or held on the server (it may complete as
//        Contended, or with a grant that raced it, which the front end
//        releases). The asynchronous acquire then uses it as the blocking one
//        uses acquire_wait, and fair mode (LockOptions::fair) works
//        asynchronously on that backend (PostgresBackend).
//
// extend() may also throw LockLostError when the lease is certainly gone for a
// reason other than the server's word (e.g. the session that held it died).
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include <boost/asio/any_io_executor.hpp>

#include "owner_id.hpp"

namespace dlock {

using TimePoint = std::chrono::steady_clock::time_point;

/// Handle type of backends that need no per-lease state.
struct NoHandle {};

struct AcquireRequest {
  std::string_view name;          ///< the validated lock name
  const OwnerId& owner;           ///< identity stored with the lock
  std::chrono::milliseconds ttl;  ///< requested validity
  TimePoint started;              ///< taken just before the request is sent
};

template <class Handle>
struct Grant {
  std::optional<std::uint64_t> token;  ///< fencing token; empty if the backend has none
  TimePoint valid_until;
  Handle handle{};
  /// Set by degrading backends (FallbackBackend) when this grant did not come
  /// from the primary lock service: why, in a sentence. Reported as a
  /// `degraded` event.
  std::string degraded{};
};

struct Contended {
  /// The holder's remaining TTL when the backend knows it: the lock is free
  /// no later than that, so a waiter never sleeps past it.
  std::optional<std::chrono::milliseconds> holder_ttl{};
};

template <class Handle>
using AcquireResult = std::variant<Grant<Handle>, Contended>;

enum class ReleaseResult {
  released,  ///< this owner held the lock and it is now free
  not_held,  ///< the lock had expired or was held by another owner; nothing was deleted
};

/// The one object describing a held lock.
template <class Handle>
struct Lease {
  OwnerId owner;
  std::optional<std::uint64_t> token;
  TimePoint acquired_at;
  TimePoint valid_until;
  Handle handle{};
};

template <class B>
concept Backend = requires(B& b, const B& cb, const AcquireRequest& request, std::string_view name,
                           Lease<typename B::Handle>& lease, std::chrono::milliseconds ttl, TimePoint started) {
  typename B::Handle;
  { cb.kind() } -> std::convertible_to<std::string_view>;
  { cb.endpoint() } -> std::convertible_to<std::string_view>;
  { b.try_acquire(request) } -> std::same_as<AcquireResult<typename B::Handle>>;
  { b.release(name, lease) } -> std::same_as<ReleaseResult>;
  { b.extend(name, lease, ttl, started) } -> std::same_as<std::optional<TimePoint>>;
};

/// One lease of a BatchesExtend::extend_many() call.
struct ExtendItem {
  std::string_view name;
  const OwnerId* owner = nullptr;
  std::chrono::milliseconds ttl{};
  TimePoint started{};
  /// The lease's B::Handle (a `const B::Handle*`), for backends that need
  /// per-lease state to extend (EtcdBackend: the lease id); others ignore it.
  /// The heartbeat points it at a copy taken with the lease, valid during the call.
  const void* handle = nullptr;
  std::optional<TimePoint> valid_until{};  ///< out: the new validity, or nullopt when lost
  std::exception_ptr error{};              ///< out: set when this item could not be extended
};

namespace detail {
/// How the front end keeps a backend: a copy when the backend is a copyable
/// handle (copies share one state, so the lock keeps it alive), else a reference.
template <class B>
using BackendStorage = std::conditional_t<std::is_copy_constructible_v<B>, B, B&>;

/// Identity of a backend for ordering and batching: equal for copies of one
/// handle (B::identity()), else the object's address.
template <class B>
[[nodiscard]] const void* backend_identity(const B& b) noexcept {
  if constexpr (requires {
                  { b.identity() } -> std::convertible_to<const void*>;
                }) {
    return b.identity();
  } else {
    return &b;
  }
}
}  // namespace detail

/// A lock held by the thread of a blocked acquirer (see WaitRecord).
struct HeldLockRef {
  std::string_view name;
  std::string_view owner;  ///< the owner id stored with the lock
};

/// What a blocked acquirer publishes for deadlock detection.
struct WaitRecord {
  std::string_view agent;              ///< "host:pid:thread", the waiting thread
  std::string_view waiter;             ///< owner id of the blocked acquisition
  std::string_view lock;               ///< the lock name it waits for
  std::span<const HeldLockRef> holds;  ///< locks its thread holds on this backend
  std::chrono::milliseconds ttl{};     ///< the record expires unless refreshed
};

template <class B>
concept NotifiesRelease = Backend<B> && requires(B& b, std::string_view name, std::chrono::nanoseconds d) {
  { b.subscribe_release(name).wait_for(d) } -> std::same_as<bool>;
};

template <class B>
concept WaitsOnServer = Backend<B> &&
    requires(B& b, const AcquireRequest& request, std::chrono::milliseconds max_wait) {
  { b.acquire_wait(request, max_wait) } -> std::same_as<AcquireResult<typename B::Handle>>;
};

template <class B>
concept RecordsWaits = Backend<B> && requires(B& b, const WaitRecord& r) {
  { b.record_wait(r) }
  noexcept;
  { b.clear_wait(r) }
  noexcept;
};

template <class B>
concept AbandonsInDoubt = Backend<B> && requires(B& b, std::string_view name, const OwnerId& owner) {
  { b.abandon(name, owner) }
  noexcept;
};

template <class B>
concept BatchesExtend = Backend<B> && requires(B& b, std::span<ExtendItem> items) {
  { b.extend_many(items) } -> std::same_as<void>;
};

/// Completions of the AsyncBackend operations: an error (null on success) and
/// the result of the matching blocking call.
template <class Handle>
using AcquireCompletion = std::function<void(std::exception_ptr, AcquireResult<Handle>)>;
using ReleaseCompletion = std::function<void(std::exception_ptr, ReleaseResult)>;
using ExtendCompletion = std::function<void(std::exception_ptr, std::optional<TimePoint>)>;

template <class B>
concept AsyncBackend = Backend<B> &&
    requires(B& b, const AcquireRequest& request, std::string_view name, Lease<typename B::Handle>& lease,
             std::chrono::milliseconds ttl, TimePoint started, const boost::asio::any_io_executor& ex,
             AcquireCompletion<typename B::Handle> on_acquire, ReleaseCompletion on_release,
             ExtendCompletion on_extend) {
  { b.async_try_acquire(request, ex, std::move(on_acquire)) } -> std::same_as<void>;
  { b.async_release(name, lease, ex, std::move(on_release)) } -> std::same_as<void>;
  { b.async_extend(name, lease, ttl, started, ex, std::move(on_extend)) } -> std::same_as<void>;
};

template <class B>
concept AsyncWaitsOnServer = AsyncBackend<B> && WaitsOnServer<B> &&
    requires(B& b, const AcquireRequest& request, std::chrono::milliseconds max_wait, std::stop_token stop,
             const boost::asio::any_io_executor& ex, AcquireCompletion<typename B::Handle> on_acquire) {
  { b.async_acquire_wait(request, max_wait, stop, ex, std::move(on_acquire)) } -> std::same_as<void>;
};

}  // namespace dlock
