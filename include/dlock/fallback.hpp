// dlock/fallback.hpp: graceful degradation when the lock service is down.
//
// The default is to fail closed: Lock<RedisBackend> throws ConnectionError
// when Redis cannot be reached, and nothing runs unprotected. That is the
// only correct choice for *correctness* locks (two holders would corrupt
// data). For *efficiency* locks, which only avoid duplicate work, a lock can
// opt in, per lock, to keep working during an outage:
//
//   // Fall back to exclusion within this process only:
//   dlock::FallbackBackend<dlock::RedisBackend, dlock::MemoryBackend> degrade(redis, local);
//   // Or run without any lock:
//   dlock::UnlockedBackend none;
//   dlock::FallbackBackend<dlock::RedisBackend, dlock::UnlockedBackend> degrade(redis, none);
//   dlock::Lock<decltype(degrade)> lock(degrade, "thumbnails:42", {.ttl = 30s});
//
// Each acquisition that the primary could not serve because it could not be
// reached (an error with errc::connection: ConnectionError, which every
// backend throws when it cannot connect, is refused, or gets no answer within
// its connect timeout) goes to the secondary and is reported as a `degraded`
// event naming the lock and the reason (a log line with the default
// observer, dlock_degraded_acquisitions_total in MetricsRegistry). Release and
// extend go to whichever backend granted the lease. Fencing tokens of the two
// backends are unrelated: a degraded grant carries the secondary's token (none
// for UnlockedBackend), so a resource that checks tokens rejects or must
// ignore them. Other errors are thrown as they are: a TimeoutError of a request
// the primary had already received (its outcome is unknown: it may have granted
// the lock), pool exhaustion, a refused login or a misconfiguration is not an
// outage to run through. See docs/choosing-a-backend.md.
//
// The primary's optional capabilities carry over: release notifications
// (NotifiesRelease: waiters wake when the primary reports a release; a
// subscription that fails only falls back to the waiter's backoff), in-doubt
// cleanup (AbandonsInDoubt) and wait records (RecordsWaits). A server-side wait
// (WaitsOnServer) and batched extension (BatchesExtend) do not: a degraded
// waiter must not spin on its secondary, and a batch may mix leases of both.
// When both backends model AsyncBackend, so does the fallback (docs/async.md):
// an asynchronous attempt degrades on the same errors, and release and extend
// go to the backend that granted the lease.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "backend.hpp"
#include "error.hpp"

namespace dlock {

/// Grants every request at once, with no exclusion and no fencing token: the
/// "run without the lock" fallback. Never use it as a primary backend.
class UnlockedBackend {
 public:
  using Handle = NoHandle;
  [[nodiscard]] std::string_view kind() const noexcept { return "unlocked"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "none"; }
  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& r) {
    return Grant<Handle>{.token = std::nullopt, .valid_until = r.started + r.ttl};
  }
  [[nodiscard]] ReleaseResult release(std::string_view, Lease<Handle>&) { return ReleaseResult::released; }
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view, Lease<Handle>&, std::chrono::milliseconds ttl,
                                                TimePoint started) {
    return started + ttl;
  }
};

template <Backend Primary, Backend Secondary>
class FallbackBackend {
  using PH = typename Primary::Handle;
  using SH = typename Secondary::Handle;

 public:
  /// Which backend granted the lease, and its handle.
  struct Handle {
    std::variant<PH, SH> of{};
  };

  /// Copyable backends (handles) are copied; others must outlive this
  /// object and the locks that use it.
  FallbackBackend(Primary& primary, Secondary& secondary) : primary_(primary), secondary_(secondary) {}

  [[nodiscard]] std::string_view kind() const noexcept { return primary_.kind(); }
  [[nodiscard]] std::string_view endpoint() const noexcept { return primary_.endpoint(); }
  /// The kind of the fallback, the `reason` of degraded events.
  [[nodiscard]] std::string_view fallback_kind() const noexcept { return secondary_.kind(); }

  [[nodiscard]] AcquireResult<Handle> try_acquire(const AcquireRequest& r) {
    std::string why;
    try {
      return wrap<0>(primary_.try_acquire(r), {});
    } catch (const Error& e) {
      if (e.code() != errc::connection) throw;  // only "could not reach the service" degrades
      why = fmt::format("{} {} unreachable ({}); lock '{}' taken from the fallback {} instead", primary_.kind(),
                        primary_.endpoint(), e.what(), r.name, secondary_.kind());
    }
    return wrap<1>(secondary_.try_acquire(r), std::move(why));
  }

  /// NotifiesRelease, when the primary has it: the primary's subscription.
  /// If subscribing fails, the subscription only waits out its duration.
  class Subscription {
   public:
    [[nodiscard]] bool wait_for(std::chrono::nanoseconds d) {
      if (inner_) return inner_->wait_for(d);
      std::this_thread::sleep_for(d);
      return false;
    }

   private:
    friend class FallbackBackend;
    using Inner = decltype(std::declval<Primary&>().subscribe_release(std::string_view{}));
    std::optional<Inner> inner_;
  };
  [[nodiscard]] Subscription subscribe_release(std::string_view name) requires NotifiesRelease<Primary> {
    Subscription s;
    try {
      s.inner_.emplace(primary_.subscribe_release(name));
    } catch (const std::exception&) {  // no notifications: the waiter's backoff takes over
    }
    return s;
  }

  /// AbandonsInDoubt, when the primary has it: only the primary can have
  /// granted in doubt (a degraded grant comes from an in-process secondary).
  void abandon(std::string_view name, const OwnerId& owner) noexcept requires AbandonsInDoubt<Primary> {
    primary_.abandon(name, owner);
  }

  /// RecordsWaits, when the primary has it.
  void record_wait(const WaitRecord& record) noexcept requires RecordsWaits<Primary> { primary_.record_wait(record); }
  void clear_wait(const WaitRecord& record) noexcept requires RecordsWaits<Primary> { primary_.clear_wait(record); }

  // ---- AsyncBackend, when both backends have it ----

  void async_try_acquire(const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done) requires AsyncBackend<Primary> && AsyncBackend<Secondary> {
    // The request object itself may not outlive this call; its name and owner do.
    primary_.async_try_acquire(
        r, ex, [this, r, ex, done = std::move(done)](std::exception_ptr error, AcquireResult<PH> result) mutable {
          if (!error) return done(nullptr, wrap<0>(std::move(result), {}));
          std::string why;
          try {
            std::rethrow_exception(error);
          } catch (const Error& e) {
            if (e.code() != errc::connection) return done(error, AcquireResult<Handle>{});
            why = fmt::format("{} {} unreachable ({}); lock '{}' taken from the fallback {} instead", primary_.kind(),
                              primary_.endpoint(), e.what(), r.name, secondary_.kind());
          } catch (...) {
            return done(error, AcquireResult<Handle>{});
          }
          secondary_.async_try_acquire(
              r, ex,
              [why = std::move(why), done = std::move(done)](std::exception_ptr e2, AcquireResult<SH> second) mutable {
                if (e2) return done(e2, AcquireResult<Handle>{});
                done(nullptr, wrap<1>(std::move(second), std::move(why)));
              });
        });
  }
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done) requires AsyncBackend<Primary> && AsyncBackend<Secondary> {
    async_visit(lease, [&](auto& backend, auto& inner, auto restore) {
      backend.async_release(name, inner, ex, [restore, done = std::move(done)](std::exception_ptr e, ReleaseResult r) {
        restore();
        done(e, r);
      });
    });
  }
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex,
                    ExtendCompletion done) requires AsyncBackend<Primary> && AsyncBackend<Secondary> {
    async_visit(lease, [&](auto& backend, auto& inner, auto restore) {
      backend.async_extend(name, inner, ttl, started, ex,
                           [restore, done = std::move(done)](std::exception_ptr e, std::optional<TimePoint> until) {
                             restore();
                             done(e, until);
                           });
    });
  }

  [[nodiscard]] ReleaseResult release(std::string_view name, Lease<Handle>& lease) {
    return visit(lease, [&](auto& backend, auto& inner) { return backend.release(name, inner); });
  }
  [[nodiscard]] std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease,
                                                std::chrono::milliseconds ttl, TimePoint started) {
    return visit(lease, [&](auto& backend, auto& inner) { return backend.extend(name, inner, ttl, started); });
  }

 private:
  template <std::size_t I, class H>
  static AcquireResult<Handle> wrap(AcquireResult<H>&& result, std::string degraded) {
    if (auto* c = std::get_if<Contended>(&result)) return *c;
    auto& g = std::get<Grant<H>>(result);
    return Grant<Handle>{.token = g.token,
                         .valid_until = g.valid_until,
                         .handle = Handle{std::variant<PH, SH>(std::in_place_index<I>, std::move(g.handle))},
                         .degraded = std::move(degraded)};
  }

  // Runs `f(backend, inner_lease)` on the backend that granted `lease`, with a
  // lease of that backend's handle type, and copies the handle back.
  template <class F>
  auto visit(Lease<Handle>& lease, F&& f) {
    if (lease.handle.of.index() == 0) return with_inner<0>(primary_, lease, f);
    return with_inner<1>(secondary_, lease, f);
  }
  template <std::size_t I, class B, class F>
  static auto with_inner(B& backend, Lease<Handle>& lease, F& f) {
    auto& handle = std::get<I>(lease.handle.of);
    Lease<std::decay_t<decltype(handle)>> inner{lease.owner, lease.token, lease.acquired_at, lease.valid_until,
                                                std::move(handle)};
    struct Restore {  // the inner backend may have changed its handle
      decltype(handle)& out;
      decltype(inner)& in;
      ~Restore() { out = std::move(in.handle); }
    } restore{handle, inner};
    return f(backend, inner);
  }

  // The asynchronous visit: the inner lease lives on the heap until the
  // completion, which calls `restore` to copy its handle back into `lease`
  // (valid until then, by the AsyncBackend contract). Touches no member of
  // this object after the call: a release may complete after the Lock is gone.
  template <class F>
  void async_visit(Lease<Handle>& lease, F&& f) {
    if (lease.handle.of.index() == 0) return async_with_inner<0>(primary_, lease, f);
    async_with_inner<1>(secondary_, lease, f);
  }
  template <std::size_t I, class B, class F>
  static void async_with_inner(B& backend, Lease<Handle>& lease, F& f) {
    auto& handle = std::get<I>(lease.handle.of);
    using Inner = Lease<std::decay_t<decltype(handle)>>;
    auto inner = std::make_shared<Inner>(Inner{lease.owner, lease.token, lease.acquired_at, lease.valid_until, handle});
    f(backend, *inner, [inner, &lease] { std::get<I>(lease.handle.of) = std::move(inner->handle); });
  }

  detail::BackendStorage<Primary> primary_;
  detail::BackendStorage<Secondary> secondary_;
};

}  // namespace dlock
