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
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <stop_token>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "backend.hpp"
#include "detail/format.hpp"
#include "detail/held.hpp"
#include "detail/thread_holds.hpp"
#include "error.hpp"
#include "guard.hpp"
#include "heartbeat.hpp"
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

  /// Validates name and options (throws InvalidArgument). Does not contact
  /// the backend. A copyable backend (a handle, like the built-in ones) is
  /// copied, so it may be destroyed before the Lock; a non-copyable one must
  /// outlive it.
  Lock(B& backend, std::string name, LockOptions options = {})
      : backend_(backend), name_(std::move(name)), options_(normalized(std::move(options))), clock_(*options_.clock) {
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
      throw TimeoutError(
          fmt::format("dlock: could not acquire lock '{}' on {} {} within {} (waited {}); another owner still holds it",
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
      if (options_.clock == &steady_clock()) return acquire_until(deadline, false);
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
  /// had expired, been taken or been lost (the end of the critical section
  /// ran unprotected) or was not acquired. Throws when the release could not
  /// be delivered (ConnectionError, ...); the lock then expires by its TTL.
  /// Either way this object no longer holds the lock afterwards.
  ReleaseResult release() {
    std::shared_ptr<detail::Held<B>> held;
    std::shared_ptr<Heartbeat> heartbeat;
    {
      std::lock_guard lk(mu_);
      if (!engaged_) return ReleaseResult::not_held;
      engaged_ = false;
      held.swap(held_);
      heartbeat = heartbeat_;
    }
    struct Leave {  // lets the next in-process waiter in, whatever happens below
      Lock* self;
      ~Leave() { self->leave_gate(); }
    } leave{this};
    if (heartbeat && held->watched()) heartbeat->unwatch(*held);
    if (options_.lock_order) options_.lock_order->released(this);
    if constexpr (RecordsWaits<B>) detail::forget_hold(held.get());
    return held->release();
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
  /// LockLostError if the lock is not held or was lost (the loss is then
  /// signalled like any other), ConnectionError etc. if the backend could not
  /// be reached (the lease stays as it was; try again within its validity).
  void extend(std::chrono::milliseconds ttl) {
    if (ttl <= ttl.zero()) detail::invalid_field("extend ttl", "must be positive", detail::format_duration(ttl));
    current()->extend(ttl);
  }
  /// extend(options().ttl).
  void extend() { extend(options_.ttl); }

  /// True while this object holds the lock, it was not lost, and its
  /// validity has not ended.
  [[nodiscard]] bool owns_lock() const noexcept {
    auto held = current_or_null();
    return held && held->owns(clock_.now());
  }
  /// The fencing token of the current acquisition: strictly greater than the
  /// token of every earlier acquisition of this name. Pass it to the resource
  /// you protect so it can reject writes from a holder whose lock was lost.
  /// Throws LockLostError if not held, lost or past validity, and
  /// Error(errc::no_fencing_token) if the backend provides no tokens.
  [[nodiscard]] std::uint64_t fencing_token() const { return current()->fencing_token(); }
  /// The owner id (UUIDv7 text) of the current or last acquisition; empty
  /// before the first. Valid until the next acquisition of this object.
  [[nodiscard]] std::string_view owner_id() const noexcept {
    std::lock_guard lk(mu_);
    return owner_ ? owner_->str() : std::string_view{};
  }
  /// End of validity on the steady clock; a default time_point if not held or lost.
  [[nodiscard]] TimePoint valid_until() const noexcept {
    auto held = current_or_null();
    return held ? held->valid_until() : TimePoint{};
  }

  /// Requested when the current acquisition is lost: its validity ended
  /// without extension, an extension found it taken, its connection died, or
  /// max_hold passed. Check it before each step of a long critical section.
  /// With auto_extend off, the first call starts a heartbeat watch that
  /// requests it when the validity ends. Throws LockLostError if not held.
  [[nodiscard]] std::stop_token stop_token() {
    auto held = current();
    watch(held);
    return held->stop_token();
  }
  /// Calls `callback` once if the current acquisition is lost (see
  /// stop_token()), on a heartbeat callback thread, or at once on this
  /// thread if it is already lost. Not called after a normal release.
  /// Exceptions from it are caught and reported to the observer.
  void on_lost(std::function<void(const LostEvent&)> callback) {
    auto held = current();
    watch(held);
    held->on_lost(std::move(callback));
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const LockOptions& options() const noexcept { return options_; }
  [[nodiscard]] B& backend() noexcept { return backend_; }
  [[nodiscard]] const B& backend() const noexcept { return backend_; }

 private:
  using Subscription = typename detail::SubscriptionOf<B>::type;

  static LockOptions normalized(LockOptions o) {
    if (!o.observer) o.observer = default_observer();
    if (!o.clock) o.clock = &steady_clock();
    return o;
  }

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
    if (options_.lock_order && !single) {
      if (auto violation = options_.lock_order->before_acquire(this, name_)) {
        Event ev = source().make(EventType::order_violation, {}, std::nullopt);
        ev.message = *violation;
        source().emit(ev);
      }
    }
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
    std::optional<Subscription> subscription;
    // RecordsWaits backends: published while blocked.
    std::optional<std::conditional_t<RecordsWaits<B>, detail::WaitPublisher<B>, std::monostate>> wait_record;
    detail::Backoff backoff(options_.retry, detail::thread_rng());
    std::uint32_t attempts = 0;
    std::exception_ptr failure;  // the last attempt's transient error, if it failed

    for (;;) {
      ++attempts;
      std::optional<std::chrono::milliseconds> holder_ttl;
      const TimePoint sent = clock_.now();
      try {
        source().emit(source().make(EventType::attempt, owner.str(), std::nullopt));
        AcquireResult<handle_type> result = attempt(AcquireRequest{name_, owner, options_.ttl, sent}, deadline, single);
        if (auto* grant = std::get_if<Grant<handle_type>>(&result)) {
          if (!grant->degraded.empty()) report_degraded(owner, *grant);
          Event ev = source().make(EventType::acquired, owner.str(), grant->token);
          adopt(owner, std::move(*grant), sent);
          acquired = true;
          ev.attempts = attempts;
          ev.wait = clock_.now() - start;
          source().emit(ev);
          return true;
        }
        holder_ttl = std::get<Contended>(result).holder_ttl;
        failure = nullptr;
        source().emit(source().make(EventType::contended, owner.str(), std::nullopt));
        if (!single && !subscription) subscription = subscribe();  // then try once more before waiting
        if constexpr (RecordsWaits<B>) {
          if (!single) {
            if (!wait_record) {
              wait_record.emplace(backend_, name_, owner.str(), wait_record_ttl());
            } else {
              wait_record->refresh();
            }
          }
        }
      } catch (const Error& e) {
        if (single || !detail::is_transient(e)) {
          report_acquire_failure(owner, attempts, clock_.now() - start, &e);
          throw;
        }
        failure = std::current_exception();
        report_acquire_failure(owner, attempts, clock_.now() - start, &e);
      }
      if (single) return false;

      const TimePoint now = clock_.now();
      const bool attempts_used = options_.retry.max_attempts != 0 && attempts >= options_.retry.max_attempts;
      if (attempts_used || (deadline && now >= *deadline)) {
        if (failure) std::rethrow_exception(failure);  // an outage is not contention
        report_acquire_failure(owner, attempts, now - start, nullptr);
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
    auto held = std::make_shared<detail::Held<B>>(
        backend_, name_, options_, clock_, options_.observer,
        Lease<handle_type>{owner, grant.token, sent, grant.valid_until, std::move(grant.handle)});
    {
      std::lock_guard lk(mu_);
      held_ = held;
      owner_ = owner;
      engaged_ = true;
    }
    if (options_.lock_order) options_.lock_order->acquired(this, name_);
    if constexpr (RecordsWaits<B>) {
      detail::thread_holds().push_back(
          detail::ThreadHold{held.get(), detail::backend_identity(backend_), name_, std::string(owner.str())});
    }
    if (held->needs_watch()) watch(held);
  }

  // Has the heartbeat look after `held` (once).
  void watch(const std::shared_ptr<detail::Held<B>>& held) {
    if (!held->mark_watched()) return;
    std::shared_ptr<Heartbeat> heartbeat;
    {
      std::lock_guard lk(mu_);
      if (!heartbeat_) heartbeat_ = options_.heartbeat ? options_.heartbeat : Heartbeat::process_wide();
      heartbeat = heartbeat_;
    }
    heartbeat->watch(held);
  }

  [[nodiscard]] std::shared_ptr<detail::Held<B>> current_or_null() const noexcept {
    std::lock_guard lk(mu_);
    return held_;
  }
  [[nodiscard]] std::shared_ptr<detail::Held<B>> current() const {
    auto held = current_or_null();
    if (!held) throw LockLostError(fmt::format("dlock: lock '{}' is not held", name_), errc::not_held);
    return held;
  }

  // A wait record outlives the longest wait between two refreshes.
  [[nodiscard]] std::chrono::milliseconds wait_record_ttl() const noexcept {
    const auto longest = std::chrono::duration_cast<std::chrono::milliseconds>(options_.retry.max_delay);
    return std::max<std::chrono::milliseconds>(std::chrono::seconds(5), 4 * longest);
  }

  [[nodiscard]] detail::EventSource source() const noexcept {
    return {backend_.kind(), backend_.endpoint(), name_, options_.observer.get()};
  }
  void report_degraded(const OwnerId& owner, const Grant<handle_type>& grant) const noexcept {
    Event ev = source().make(EventType::degraded, owner.str(), grant.token);
    ev.message = grant.degraded;
    if constexpr (requires { backend_.fallback_kind(); }) ev.reason = backend_.fallback_kind();
    source().emit(ev);
  }
  void report_acquire_failure(const OwnerId& owner, std::uint32_t attempts, Clock::duration waited,
                              const Error* e) const noexcept {
    Event ev = source().make(EventType::acquire_failed, owner.str(), std::nullopt);
    ev.attempts = attempts;
    ev.wait = waited;
    ev.error = e ? e->code() : make_error_code(errc::timeout);
    ev.message = e ? std::string_view(e->what()) : std::string_view("deadline passed or attempts used up");
    ev.reason = to_string(static_cast<errc>(ev.error.value()));
    source().emit(ev);
  }

  detail::BackendStorage<B> backend_;
  const std::string name_;
  const LockOptions options_;  // observer and clock always set
  const Clock& clock_;

  mutable std::mutex mu_;
  std::condition_variable gate_cv_;
  bool busy_ = false;                      // a thread is between acquire and unlock (the in-process gate)
  bool engaged_ = false;                   // the last successful acquire has not been released yet
  std::shared_ptr<detail::Held<B>> held_;  // the current acquisition, while engaged
  std::optional<OwnerId> owner_;
  std::shared_ptr<Heartbeat> heartbeat_;  // set by the first watched acquisition
};

}  // namespace dlock
