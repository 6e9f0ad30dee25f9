// dlock/lock.hpp: Lock<Backend>, a distributed lock used like std::timed_mutex.
//
//   dlock::MemoryBackend mem;
//   dlock::Lock<dlock::MemoryBackend> lock(mem, "orders:42", {.ttl = 10s});
//   {
//     std::scoped_lock hold(lock);       // or: auto g = lock.acquire();
//     write(lock.fencing_token());       // pass the token to the protected resource
//   }
//
// Lock models the standard Lockable and TimedLockable requirements, so
// std::scoped_lock, std::unique_lock, std::lock_guard and std::lock work.
// Each successful acquire is a new acquisition with a fresh owner id (UUIDv7)
// and, where the backend has them, a fencing token that is strictly greater
// than any earlier token for the same name.
//
// Blocking acquires retry with the LockOptions::retry policy (capped
// exponential backoff with jitter). Each wait is also capped by the holder's
// remaining TTL and by the deadline, and ends early when the backend reports a
// release. ConnectionError and TimeoutError from the backend are retried until
// the deadline; if the last attempt failed that way, it is rethrown rather than
// reported as contention. Other errors are thrown at once.
//
// Thread safety: all members may be called from any thread. Like a mutex, one
// Lock object is held by at most one thread of this process at a time: other
// threads calling lock() on the same object wait in-process without touching
// the backend. unlock() may be called from another thread than lock().
// For independent owners (e.g. in tests), use one Lock object each.
//
// Validity: a lease is valid until valid_until() on the steady clock. Without
// extension it lapses then; owns_lock() turns false and fencing_token()
// throws LockLostError.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "backend.hpp"
#include "detail/format.hpp"
#include "error.hpp"
#include "guard.hpp"
#include "observer.hpp"
#include "options.hpp"
#include "owner_id.hpp"
#include "retry.hpp"

namespace dlock {

namespace detail {
template <class B, bool = NotifiesRelease<B>>
struct SubscriptionOf {
  using type = std::monostate;
};
template <class B>
struct SubscriptionOf<B, true> {
  using type = decltype(std::declval<B&>().subscribe_release(std::string_view{}));
};

/// How long one server-side wait may last when the caller gave no deadline, so
/// that a dead connection is noticed and the attempt is made again.
inline constexpr std::chrono::milliseconds server_wait_slice{std::chrono::seconds(5)};

[[nodiscard]] inline bool is_transient(const Error& e) noexcept {
  return e.code() == errc::connection || e.code() == errc::timeout;
}
}  // namespace detail

template <Backend B>
class Lock {
 public:
  using backend_type = B;
  using handle_type = typename B::Handle;
  using guard_type = Guard<Lock>;

  /// Validates name and options (throws InvalidArgument). `backend` must
  /// outlive the Lock. Does not contact the backend.
  Lock(B& backend, std::string name, LockOptions options = {})
      : backend_(backend),
        name_(std::move(name)),
        options_(std::move(options)),
        clock_(options_.clock ? *options_.clock : steady_clock()),
        observer_(options_.observer ? options_.observer : default_observer()) {
    detail::validate_lock_name(name_);
    detail::validate(options_);
  }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  /// Releases a held lock (never throws; failures go to the observer).
  ~Lock() { unlock(); }

  // ---- Lockable / TimedLockable ----

  /// Blocks until acquired. Throws TimeoutError when options().acquire_timeout
  /// passes or retry.max_attempts are used up, ConnectionError if the backend
  /// was unreachable at that point, other dlock::Error subclasses at once.
  void lock() {
    const TimePoint start = clock_.now();
    std::optional<TimePoint> deadline;
    if (options_.acquire_timeout) deadline = start + *options_.acquire_timeout;
    if (!acquire_until(deadline, false)) {
      const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(clock_.now() - start);
      throw TimeoutError(fmt::format(
          "dlock: could not acquire lock '{}' on {} {} within {} (waited {}); another owner still holds it",
          name_, backend_.kind(), backend_.endpoint(),
          options_.acquire_timeout ? "acquire_timeout " + detail::format_duration(*options_.acquire_timeout)
                                   : fmt::format("retry.max_attempts {}", options_.retry.max_attempts),
          detail::format_duration(waited)));
    }
  }
  /// Exactly one attempt: true if acquired, false on contention (also when
  /// another thread holds this same Lock object). Throws on backend errors.
  [[nodiscard]] bool try_lock() { return acquire_until(std::nullopt, true); }

  /// Retries until acquired (true) or `timeout` passed (false). Throws
  /// ConnectionError if the backend was unreachable at the deadline.
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout) {
    return acquire_until(clock_.now() + std::chrono::ceil<Clock::duration>(timeout), false);
  }
  /// As try_lock_for; deadlines of other clocks are converted to the steady clock.
  template <class C, class D>
  [[nodiscard]] bool try_lock_until(const std::chrono::time_point<C, D>& deadline) {
    if constexpr (std::is_same_v<C, std::chrono::steady_clock>) {
      if (options_.clock == nullptr) return acquire_until(deadline, false);
    }
    return try_lock_for(deadline - C::now());
  }

  /// Releases if held; never throws, and a second call is a no-op. A release
  /// that fails or finds the lock expired or taken is reported to the
  /// observer. Deletes the lock on the server only if this owner holds it.
  void unlock() noexcept {
    try {
      (void)release();
    } catch (...) {  // release() has reported it to the observer
    }
  }

  /// As unlock(), but tells the outcome: released, or not_held when the lock
  /// had expired or been taken (the end of the critical section ran
  /// unprotected) or was not acquired. Throws when the release could not be
  /// delivered (ConnectionError, ...); the lock then expires by its TTL.
  /// Either way this object no longer holds the lock afterwards.
  ReleaseResult release() {
    std::optional<Lease<handle_type>> lease;
    std::unique_lock op(op_mu_);
    {
      std::lock_guard lk(mu_);
      if (!engaged_) return ReleaseResult::not_held;
      engaged_ = false;
      lease.swap(lease_);
    }
    struct Leave {  // lets the next in-process waiter in, whatever happens below
      Lock* self;
      ~Leave() { self->leave_gate(); }
    } leave{this};
    if (!lease) return ReleaseResult::not_held;  // lost earlier, and reported then
    const auto held = [&] { return clock_.now() - lease->acquired_at; };
    ReleaseResult result{};
    try {
      result = backend_.release(name_, *lease);
    } catch (const std::exception& e) {
      report_failure(EventType::release_failed, *lease, held(), e,
                     fmt::format("release of '{}' failed ({}); the lock will expire by its TTL", name_, e.what()));
      throw;
    }
    Event ev = event(result == ReleaseResult::released ? EventType::released : EventType::release_not_held, *lease);
    ev.held = held();
    if (result == ReleaseResult::not_held) {
      ev.error = make_error_code(errc::lock_lost);
      ev.message = "the lock had already expired or been taken before release: the end of the critical section ran unprotected";
    }
    observer_->on_event(ev);
    return result;
  }

  // ---- RAII ----

  /// lock(), returning a guard that releases on destruction.
  [[nodiscard]] guard_type acquire() {
    lock();
    return guard_type(*this, std::adopt_lock);
  }
  /// try_lock(); the guard is empty on contention.
  [[nodiscard]] guard_type try_acquire() { return try_lock() ? guard_type(*this, std::adopt_lock) : guard_type(); }
  template <class Rep, class Period>
  [[nodiscard]] guard_type try_acquire_for(const std::chrono::duration<Rep, Period>& timeout) {
    return try_lock_for(timeout) ? guard_type(*this, std::adopt_lock) : guard_type();
  }
  template <class C, class D>
  [[nodiscard]] guard_type try_acquire_until(const std::chrono::time_point<C, D>& deadline) {
    return try_lock_until(deadline) ? guard_type(*this, std::adopt_lock) : guard_type();
  }

  // ---- the current acquisition ----

  /// Resets the lease's TTL to `ttl` (owner-checked on the server). Throws
  /// LockLostError if the lock is not held or was lost (the lease is then
  /// dropped, the observer told), ConnectionError etc. if the backend could
  /// not be reached (the lease stays as it was; try again within validity).
  void extend(std::chrono::milliseconds ttl) {
    if (ttl <= ttl.zero()) detail::invalid_field("extend ttl", "must be positive", detail::format_duration(ttl));
    std::lock_guard op(op_mu_);
    Lease<handle_type>* lease = current_lease();
    const TimePoint sent = clock_.now();
    std::optional<TimePoint> valid;
    try {
      valid = backend_.extend(name_, *lease, ttl, sent);
    } catch (const std::exception& e) {
      report_failure(EventType::extend_failed, *lease, sent - lease->acquired_at, e,
                     fmt::format("extend of '{}' failed ({})", name_, e.what()));
      throw;
    }
    if (!valid) {
      Event ev = event(EventType::lost, *lease);
      ev.held = sent - lease->acquired_at;
      ev.error = make_error_code(errc::lock_lost);
      ev.message = "extend found the lock expired or held by another owner";
      std::optional<Lease<handle_type>> gone;
      {
        std::lock_guard lk(mu_);
        gone.swap(lease_);
      }
      observer_->on_event(ev);
      throw LockLostError(fmt::format("dlock: lock '{}' on {} {} was lost (expired or taken) before it could be extended",
                                      name_, backend_.kind(), backend_.endpoint()));
    }
    {
      std::lock_guard lk(mu_);
      lease->valid_until = *valid;
    }
    Event ev = event(EventType::extended, *lease);
    ev.held = sent - lease->acquired_at;
    observer_->on_event(ev);
  }
  /// extend(options().ttl).
  void extend() { extend(options_.ttl); }

  /// True while this object holds the lock and its validity has not ended.
  [[nodiscard]] bool owns_lock() const noexcept {
    std::lock_guard lk(mu_);
    return lease_ && clock_.now() < lease_->valid_until;
  }
  /// The fencing token of the current acquisition: strictly greater than the
  /// token of every earlier acquisition of this name. Pass it to the resource
  /// you protect so it can reject writes from a holder whose lock was lost.
  /// Throws LockLostError if not held or past validity, Error(no_fencing_token)
  /// if the backend provides no tokens.
  [[nodiscard]] std::uint64_t fencing_token() const {
    std::lock_guard lk(mu_);
    const Lease<handle_type>& lease = valid_lease();
    if (!lease.token)
      throw Error(errc::no_fencing_token,
                  fmt::format("dlock: backend {} provides no fencing tokens for lock '{}'", backend_.kind(), name_));
    return *lease.token;
  }
  /// The owner id (UUIDv7 text) of the current or last acquisition; empty
  /// before the first. Valid until the next acquisition of this object.
  [[nodiscard]] std::string_view owner_id() const noexcept {
    std::lock_guard lk(mu_);
    return owner_ ? owner_->str() : std::string_view{};
  }
  /// End of validity on the steady clock; a default time_point if not held.
  [[nodiscard]] TimePoint valid_until() const noexcept {
    std::lock_guard lk(mu_);
    return lease_ ? lease_->valid_until : TimePoint{};
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const LockOptions& options() const noexcept { return options_; }
  [[nodiscard]] B& backend() const noexcept { return backend_; }

 private:
  using Subscription = typename detail::SubscriptionOf<B>::type;

  // The in-process gate: one thread at a time goes from acquire to unlock.
  bool enter_gate(std::optional<TimePoint> deadline, bool single) {
    std::unique_lock lk(mu_);
    if (single || !busy_) return !std::exchange(busy_, true);
    if (!deadline) {
      gate_cv_.wait(lk, [this] { return !busy_; });
    } else if (!gate_cv_.wait_for(lk, *deadline - clock_.now(), [this] { return !busy_; })) {
      return false;
    }
    busy_ = true;
    return true;
  }
  void leave_gate() noexcept {
    {
      std::lock_guard lk(mu_);
      busy_ = false;
    }
    gate_cv_.notify_one();
  }

  // The acquire loop shared by lock(), try_lock() and the timed forms.
  bool acquire_until(std::optional<TimePoint> deadline, bool single) {
    const TimePoint start = clock_.now();
    if (!enter_gate(deadline, single)) return false;
    bool acquired = false;
    struct Leave {
      Lock* self;
      const bool& acquired;
      ~Leave() {
        if (!acquired) self->leave_gate();
      }
    } leave{this, acquired};

    const OwnerId owner = OwnerId::generate();
    Lease<handle_type> probe{owner, {}, start, start, {}};  // identifies this acquisition in events
    std::optional<Subscription> subscription;
    detail::Backoff backoff(options_.retry, detail::thread_rng());
    std::uint32_t attempts = 0;
    std::exception_ptr failure;  // the last attempt's transient error, if it failed

    for (;;) {
      ++attempts;
      std::optional<std::chrono::milliseconds> holder_ttl;
      const TimePoint sent = clock_.now();
      try {
        observer_->on_event(event(EventType::attempt, probe));
        AcquireResult<handle_type> result = attempt(AcquireRequest{name_, owner, options_.ttl, sent}, deadline, single);
        if (auto* grant = std::get_if<Grant<handle_type>>(&result)) {
          probe.token = grant->token;
          adopt(owner, std::move(*grant), sent);
          acquired = true;
          Event ev = event(EventType::acquired, probe);
          ev.attempts = attempts;
          ev.wait = clock_.now() - start;
          observer_->on_event(ev);
          return true;
        }
        holder_ttl = std::get<Contended>(result).holder_ttl;
        failure = nullptr;
        observer_->on_event(event(EventType::contended, probe));
        if (!single && !subscription) subscription = subscribe();  // then try once more before waiting
      } catch (const Error& e) {
        if (single || !detail::is_transient(e)) {
          report_acquire_failure(probe, attempts, clock_.now() - start, &e);
          throw;
        }
        failure = std::current_exception();
        report_acquire_failure(probe, attempts, clock_.now() - start, &e);
      }
      if (single) return false;

      const TimePoint now = clock_.now();
      const bool attempts_used = options_.retry.max_attempts != 0 && attempts >= options_.retry.max_attempts;
      if (attempts_used || (deadline && now >= *deadline)) {
        if (failure) std::rethrow_exception(failure);  // an outage is not contention
        report_acquire_failure(probe, attempts, now - start, nullptr);
        return false;
      }
      if (!failure && attempts == 1 && subscription) continue;  // subscribed: retry before waiting
      if (!failure && WaitsOnServer<B>) continue;               // the server did the waiting

      Clock::duration wait = std::chrono::duration_cast<Clock::duration>(backoff.next());
      if (holder_ttl) wait = std::min<Clock::duration>(wait, *holder_ttl);
      if (deadline) wait = std::min(wait, *deadline - now);
      if constexpr (NotifiesRelease<B>) {
        if (subscription) {
          (void)subscription->wait_for(wait);
          continue;
        }
      }
      std::this_thread::sleep_for(wait);
    }
  }

  AcquireResult<handle_type> attempt(const AcquireRequest& request, std::optional<TimePoint> deadline, bool single) {
    if constexpr (WaitsOnServer<B>) {
      if (!single) {
        auto max_wait = detail::server_wait_slice;
        if (deadline)
          max_wait = std::clamp(std::chrono::floor<std::chrono::milliseconds>(*deadline - request.started),
                                std::chrono::milliseconds::zero(), max_wait);
        return backend_.acquire_wait(request, max_wait);
      }
    }
    (void)deadline;
    (void)single;
    return backend_.try_acquire(request);
  }

  std::optional<Subscription> subscribe() {
    if constexpr (NotifiesRelease<B>) {
      return backend_.subscribe_release(name_);
    } else {
      return std::nullopt;
    }
  }

  void adopt(const OwnerId& owner, Grant<handle_type>&& grant, TimePoint sent) {
    std::lock_guard lk(mu_);
    lease_.emplace(Lease<handle_type>{owner, grant.token, sent, grant.valid_until, std::move(grant.handle)});
    owner_ = owner;
    engaged_ = true;
  }

  // Requires op_mu_. The held lease, or LockLostError.
  Lease<handle_type>* current_lease() {
    std::lock_guard lk(mu_);
    if (!lease_) throw not_held_error();
    return &*lease_;
  }
  // Requires mu_.
  const Lease<handle_type>& valid_lease() const {
    if (!lease_) throw not_held_error();
    if (clock_.now() >= lease_->valid_until)
      throw LockLostError(fmt::format("dlock: lock '{}' on {} {} is past its validity (not extended in time)", name_,
                                      backend_.kind(), backend_.endpoint()));
    return *lease_;
  }
  LockLostError not_held_error() const {
    return engaged_ ? LockLostError(fmt::format("dlock: lock '{}' on {} {} was lost", name_, backend_.kind(),
                                                backend_.endpoint()))
                    : LockLostError(fmt::format("dlock: lock '{}' is not held", name_), errc::not_held);
  }

  Event event(EventType type, const Lease<handle_type>& lease) const noexcept {
    Event ev;
    ev.type = type;
    ev.backend = backend_.kind();
    ev.endpoint = backend_.endpoint();
    ev.lock = name_;
    ev.owner = lease.owner.str();
    ev.token = lease.token;
    return ev;
  }
  void report_failure(EventType type, const Lease<handle_type>& lease, Clock::duration held, const std::exception& e,
                      const std::string& message) const noexcept {
    Event ev = event(type, lease);
    ev.held = held;
    const auto* err = dynamic_cast<const Error*>(&e);
    ev.error = err ? err->code() : make_error_code(errc::server);
    ev.message = message;
    observer_->on_event(ev);
  }
  void report_acquire_failure(const Lease<handle_type>& probe, std::uint32_t attempts, Clock::duration waited,
                              const Error* e) const noexcept {
    Event ev = event(EventType::acquire_failed, probe);
    ev.attempts = attempts;
    ev.wait = waited;
    ev.error = e ? e->code() : make_error_code(errc::timeout);
    ev.message = e ? std::string_view(e->what()) : std::string_view("deadline passed or attempts used up");
    observer_->on_event(ev);
  }

  B& backend_;
  const std::string name_;
  const LockOptions options_;
  const Clock& clock_;
  const std::shared_ptr<Observer> observer_;

  std::mutex op_mu_;  // serialises backend operations on lease_ (release, extend); taken before mu_
  mutable std::mutex mu_;
  std::condition_variable gate_cv_;
  bool busy_ = false;     // a thread is between acquire and unlock (the in-process gate)
  bool engaged_ = false;  // the last successful acquire has not been released yet
  std::optional<Lease<handle_type>> lease_;  // the backend lease; empty once released or lost
  std::optional<OwnerId> owner_;
};

}  // namespace dlock
