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
// the deadline, or until they have lasted LockOptions::outage_timeout (30 s by
// default) without an answer from the service; the last one is then rethrown
// rather than reported as contention, so an outage fails closed. Other errors
// are thrown at once.
//
// Thread safety: all members may be called from any thread, concurrently
// (queries return copies, e.g. owner_id()). Like a mutex, one Lock object is
// held by at most one thread of this process at a time: other threads calling
// lock() on the same object wait in-process without touching the backend.
// unlock() may be called from another thread than lock(). For independent
// owners (e.g. in tests), use one Lock object each.
//
// Not recursive: a second acquire of a Lock by the thread that acquired it
// (lock(), try_lock(), the timed forms, acquire(), try_acquire*(), lock_all)
// throws DeadlockError at once, naming the lock, instead of waiting for
// itself. Why not count re-entries instead: every acquisition is one lease
// with its own owner id, fencing token, TTL and loss signal; a nested
// "acquire" that took no new lease would hand out a token and a stop token
// that are not its own, and its release would end the outer critical section
// early. Release and re-acquire instead, or structure the code so that one
// scope holds the lock.
// Not copyable and not movable: guards and the heartbeat refer to it; keep it
// in place (or behind a unique_ptr) for as long as it is used.
//
// Guards (acquire(), try_acquire*(), lock_all()) are bound to the acquisition
// they adopted, not to the Lock: after unlock() and a new acquire, an old guard
// reports its own acquisition as not held and its destructor leaves the new
// one alone. A guard must not outlive its Lock, as a std::unique_lock must not
// outlive its mutex.
//
// fork(): a lease is owned by the process that acquired it. In a forked child
// an inherited lease reads as lost (owns_lock() false, fencing_token() and
// extend() throw LockLostError, stop_token() requested), and release() or
// destruction never contacts the server, where the parent still holds it.
// New acquisitions in the child get owner ids of their own (docs/safety.md).
//
// Validity: a lease is valid until valid_until() on the steady clock. Without
// extension it lapses then; owns_lock() turns false and fencing_token()
// throws LockLostError. Durations too long for the clock (try_lock_for(
// hours::max()), acquire_timeout = milliseconds::max()) mean "no deadline";
// TTLs are bounded by dlock::max_ttl.
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
#include <random>
#include <string>
#include <stop_token>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/system_executor.hpp>
#include <fmt/format.h>

#include "backend.hpp"
#include "detail/acquire_fsm.hpp"
#include "detail/format.hpp"
#include "detail/random.hpp"
#include "detail/held.hpp"
#include "detail/thread_holds.hpp"
#include "detail/time.hpp"
#include "error.hpp"
#include "async_guard.hpp"
#include "guard.hpp"
#include "heartbeat.hpp"
#include "observer.hpp"
#include "options.hpp"
#include "owner_id.hpp"
#include "retry.hpp"

namespace dlock {

/// Optional capability, with NotifiesRelease: the subscription can also wait
/// without blocking a thread, for the asynchronous acquire (docs/async.md).
///   S.on_release(std::function<void()> f): `f` runs once, on whatever thread
///        observes it (the releasing one for MemoryBackend), at the next
///        release of the name, or at once (possibly inside the call) when a
///        release happened since subscribing or since the last wake-up; so a
///        subscription made before an attempt loses no release. A later call
///        replaces the callback; destroying S drops it (a release racing the
///        destruction may still run it once, so `f` holds no owning pointer to
///        S's owner). `f` must not throw or block.
/// An asynchronous acquire on such a backend subscribes before its second
/// attempt, as the blocking loop does, and ends each backoff wait early when a
/// release comes; on other backends it polls with backoff.
template <class B>
concept AsyncNotifiesRelease = NotifiesRelease<B> && requires(B& b, std::string_view name, std::function<void()> f) {
  { b.subscribe_release(name).on_release(std::move(f)) } -> std::same_as<void>;
};

/// Optional capability: fair (FIFO) mode in a queue the client keeps on the
/// server (LockOptions::fair; RedisBackend):
///   b.try_acquire_fair(request, waiter_ttl): one attempt that grants only to
///        the queue's head (or when nobody waits); otherwise the caller joins
///        the queue (or keeps its place), which it loses after waiter_ttl
///        without an attempt;
///   b.release_fair(name, lease): the release, which wakes only the new head;
///   b.leave_fair(name, owner) noexcept: a waiter that gives up leaves at once;
///   b.subscribe_release(name, owner): a subscription woken only by a release
///        that names `owner` as the head (or names nobody).
/// Extension is the mutex's. A backend that waits on the server
/// (WaitsOnServer) queues its waiters itself, so it takes fair mode too.
template <class B>
concept QueuesFairly = NotifiesRelease<B> &&
    requires(B& b, const AcquireRequest& request, std::chrono::milliseconds waiter_ttl, std::string_view name,
             Lease<typename B::Handle>& lease, const OwnerId& owner) {
  { b.try_acquire_fair(request, waiter_ttl) } -> std::same_as<AcquireResult<typename B::Handle>>;
  { b.release_fair(name, lease) } -> std::same_as<ReleaseResult>;
  { b.leave_fair(name, owner) }
  noexcept;
  { b.subscribe_release(name, owner) } -> std::same_as<decltype(b.subscribe_release(name))>;
};

/// Optional capability: fair mode for the asynchronous acquire too
/// (RedisBackend): QueuesFairly's operations without blocking a thread,
///   b.async_try_acquire_fair(request, waiter_ttl, ex, done) and
///   b.async_release_fair(name, lease, ex, done) (AsyncBackend's rules),
///   b.async_leave_fair(name, owner) noexcept: leave_fair, fire and forget,
///   b.subscribe_release_nowait(name, owner): the targeted subscription
///        without waiting for the server (AsyncNotifiesRelease's on_release).
/// Without it (or AsyncWaitsOnServer, backend.hpp: the server's queue keeps
/// the order) an asynchronous acquire of a fair Lock is refused (InvalidArgument).
template <class B>
concept AsyncQueuesFairly = QueuesFairly<B> && AsyncNotifiesRelease<B> &&
    requires(B& b, const AcquireRequest& request, std::chrono::milliseconds waiter_ttl, std::string_view name,
             Lease<typename B::Handle>& lease, const OwnerId& owner, const boost::asio::any_io_executor& ex,
             AcquireCompletion<typename B::Handle> on_acquire, ReleaseCompletion on_release) {
  b.async_try_acquire_fair(request, waiter_ttl, ex, on_acquire);
  b.async_release_fair(name, lease, ex, on_release);
  { b.async_leave_fair(name, owner) }
  noexcept;
  { b.subscribe_release_nowait(name, owner) } -> std::same_as<decltype(b.subscribe_release(name))>;
};

namespace detail {
template <class B, bool = NotifiesRelease<B>>
struct SubscriptionOf {
  using type = std::monostate;
};
template <class B>
struct SubscriptionOf<B, true> {
  using type = decltype(std::declval<B&>().subscribe_release(std::string_view{}));
};

/// The steady-clock time `d` from now, for a real-time wait (the in-process
/// gate); "forever" saturates.
[[nodiscard]] inline std::chrono::steady_clock::time_point steady_deadline(Clock::duration d) noexcept {
  return saturating_add(std::chrono::steady_clock::now(), d);
}

/// Time left until `deadline` of any clock, saturating (a deadline such as
/// system_clock::time_point::max() is "forever", not an overflow).
template <class C, class D>
[[nodiscard]] std::chrono::nanoseconds time_left(const std::chrono::time_point<C, D>& deadline) {
  using Wide = std::chrono::duration<long double, std::nano>;  // holds any clock's range without overflow
  return saturating_ceil<std::chrono::nanoseconds>(Wide(deadline.time_since_epoch()) -
                                                   Wide(C::now().time_since_epoch()));
}

/// A cancellable wait on a release subscription whose wait_for() takes no
/// stop token is made in slices of at most this long, so a stop request ends
/// it within one slice.
inline constexpr std::chrono::milliseconds cancel_poll_slice{20};

/// Waits for a release on `s` for at most `d`; a stop request ends the wait
/// (at once when S::wait_for takes a stop token, else within cancel_poll_slice).
template <class S>
bool wait_for_release(S& s, Clock::duration d, const std::stop_token& stop) {
  if constexpr (requires { s.wait_for(std::chrono::nanoseconds{}, stop); }) {
    return s.wait_for(d, stop);
  } else {
    if (!stop.stop_possible()) return s.wait_for(d);
    const auto end = steady_deadline(d);
    while (!stop.stop_requested()) {
      const auto left = end - std::chrono::steady_clock::now();
      if (left <= left.zero()) return false;
      if (s.wait_for(std::min<std::chrono::nanoseconds>(left, cancel_poll_slice))) return true;
    }
    return false;
  }
}

/// Sleeps for `d` (real time), or until `stop` is requested.
inline void sleep_for(Clock::duration d, const std::stop_token& stop) {
  if (!stop.stop_possible()) {
    std::this_thread::sleep_for(d);
    return;
  }
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lk(mu);
  (void)cv.wait_until(lk, stop, steady_deadline(d), [] { return false; });
}

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
    retry_ = retry_policy();
    if (options_.fair && !QueuesFairly<B> && !WaitsOnServer<B>)
      throw InvalidArgument(
          fmt::format("dlock: LockOptions.fair = true for lock '{}': the {} backend at {} has no fair "
                      "(FIFO) mode (docs/primitives.md, \"Fair mode\")",
                      name_, backend_.kind(), backend_.endpoint()));
  }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  /// Releases a held lock (never throws; failures go to the observer).
  ~Lock() { unlock(); }

  // ---- Lockable / TimedLockable ----

  /// Blocks until acquired. Throws TimeoutError when options().acquire_timeout
  /// passes or retry.max_attempts are used up, ConnectionError if the backend
  /// was unreachable at that point, DeadlockError at once if this thread
  /// holds this Lock already, other dlock::Error subclasses at once.
  void lock() { lock(std::stop_token{}); }
  /// lock(), cancellable: throws CancelledError (errc::cancelled) as soon as
  /// `stop` is requested, also while waiting (see docs/usage.md,
  /// "Cancellation"), leaving nothing held.
  void lock(const std::stop_token& stop) {
    const TimePoint start = clock_.now();
    std::optional<TimePoint> deadline;
    if (options_.acquire_timeout) deadline = detail::saturating_add(start, *options_.acquire_timeout);
    if (!acquire_until(deadline, false, stop)) {
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
  /// another thread holds this same Lock object). Throws on backend errors,
  /// and DeadlockError if this thread holds this Lock already.
  [[nodiscard]] bool try_lock() { return acquire_until(std::nullopt, true); }

  /// Retries until acquired (true) or `timeout` passed (false). Throws
  /// ConnectionError if the backend was unreachable at the deadline.
  /// A timeout too long for the clock (hours::max()) means "no deadline".
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout) {
    return try_lock_for(timeout, std::stop_token{});
  }
  /// try_lock_for(), cancellable: throws CancelledError once `stop` is requested.
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout, const std::stop_token& stop) {
    return acquire_until(detail::saturating_add(clock_.now(), timeout), false, stop);
  }
  /// As try_lock_for; deadlines of other clocks are converted to the steady clock.
  template <class C, class D>
  [[nodiscard]] bool try_lock_until(const std::chrono::time_point<C, D>& deadline) {
    return try_lock_until(deadline, std::stop_token{});
  }
  /// try_lock_until(), cancellable: throws CancelledError once `stop` is requested.
  template <class C, class D>
  [[nodiscard]] bool try_lock_until(const std::chrono::time_point<C, D>& deadline, const std::stop_token& stop) {
    if constexpr (std::is_same_v<C, std::chrono::steady_clock>) {
      if (options_.clock == &steady_clock())
        return acquire_until(detail::saturating_add(TimePoint{}, deadline.time_since_epoch()), false, stop);
    }
    return try_lock_for(detail::time_left(deadline), stop);
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
  ReleaseResult release() { return release_acquisition(nullptr); }

  // ---- RAII ----

  /// lock(), returning a guard that releases on destruction.
  [[nodiscard]] guard_type acquire() { return acquire(std::stop_token{}); }
  /// acquire(), cancellable: throws CancelledError once `stop` is requested.
  [[nodiscard]] guard_type acquire(const std::stop_token& stop) {
    lock(stop);
    return guard_type(*this, std::adopt_lock);
  }
  /// try_lock(); the guard is empty on contention.
  [[nodiscard]] guard_type try_acquire() { return try_lock() ? guard_type(*this, std::adopt_lock) : guard_type(); }
  /// try_lock_for() / try_lock_until(); the guard is empty when the time
  /// ran out. With a stop token: throws CancelledError once it is requested.
  template <class Rep, class Period>
  [[nodiscard]] guard_type try_acquire_for(const std::chrono::duration<Rep, Period>& timeout,
                                           const std::stop_token& stop = {}) {
    return try_lock_for(timeout, stop) ? guard_type(*this, std::adopt_lock) : guard_type();
  }
  template <class C, class D>
  [[nodiscard]] guard_type try_acquire_until(const std::chrono::time_point<C, D>& deadline,
                                             const std::stop_token& stop = {}) {
    return try_lock_until(deadline, stop) ? guard_type(*this, std::adopt_lock) : guard_type();
  }

  // ---- asynchronous (AsyncBackend backends only; docs/async.md) ----
  //
  // Any Asio completion token: use_awaitable, use_future, a callback. The
  // operation runs on the completion's associated executor (the coroutine's
  // with use_awaitable; bind one with boost::asio::bind_executor for
  // callbacks and use_future): backoff waits are steady_timers there and the
  // backend's operations complete there; nothing blocks a thread. Errors are
  // boost::system::error_codes of async_error_category() with dlock::errc
  // values (use_awaitable and use_future throw them as system_error;
  // dlock::to_std(ec) == dlock::errc::timeout), with the blocking API's
  // meanings. A std::stop_token argument makes the acquire cancellable: it
  // completes with errc::cancelled, holding nothing. The heartbeat,
  // stop_token(), on_lost() and the observer work as for blocking acquisitions.

  /// Acquires, waiting as lock() does; completes with (error_code,
  /// AsyncGuard): errc::timeout when acquire_timeout or retry.max_attempts
  /// ran out, errc::connection after an outage, errc::cancelled.
  template <class Token>
  auto async_acquire(Token&& token) requires AsyncBackend<B> {
    return async_acquire(std::stop_token{}, std::forward<Token>(token));
  }
  template <class Token>
  auto async_acquire(std::stop_token stop, Token&& token) requires AsyncBackend<B> {
    std::optional<TimePoint> deadline;
    if (options_.acquire_timeout) deadline = detail::saturating_add(clock_.now(), *options_.acquire_timeout);
    return async_acquire_until<true>(deadline, std::move(stop), std::forward<Token>(token));
  }
  /// As try_lock_for(); completes with (error_code, bool acquired). Once
  /// acquired, this Lock holds it (unlock(), async_release()).
  template <class Rep, class Period, class Token>
  auto async_try_lock_for(const std::chrono::duration<Rep, Period>& timeout, Token&& token) requires AsyncBackend<B> {
    return async_try_lock_for(timeout, std::stop_token{}, std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_lock_for(const std::chrono::duration<Rep, Period>& timeout, std::stop_token stop,
                          Token&& token) requires AsyncBackend<B> {
    return async_acquire_until<false>(detail::saturating_add(clock_.now(), timeout), std::move(stop),
                                      std::forward<Token>(token));
  }
  template <class C, class D, class Token>
  auto async_try_lock_until(const std::chrono::time_point<C, D>& deadline, Token&& token) requires AsyncBackend<B> {
    return async_try_lock_until(deadline, std::stop_token{}, std::forward<Token>(token));
  }
  template <class C, class D, class Token>
  auto async_try_lock_until(const std::chrono::time_point<C, D>& deadline, std::stop_token stop,
                            Token&& token) requires AsyncBackend<B> {
    if constexpr (std::is_same_v<C, std::chrono::steady_clock>) {
      if (options_.clock == &steady_clock())
        return async_acquire_until<false>(detail::saturating_add(TimePoint{}, deadline.time_since_epoch()),
                                          std::move(stop), std::forward<Token>(token));
    }
    return async_try_lock_for(detail::time_left(deadline), std::move(stop), std::forward<Token>(token));
  }
  /// As release(), without blocking; completes with (error_code, ReleaseResult).
  template <class Token>
  auto async_release(Token&& token) requires AsyncBackend<B> {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, ReleaseResult)>(
        [this](auto handler) {
          auto ex = boost::asio::get_associated_executor(handler);
          auto h = std::make_shared<decltype(handler)>(std::move(handler));
          async_release_acquisition(nullptr, ex,
                                    [h](std::exception_ptr e, ReleaseResult r) { (*h)(detail::error_code_of(e), r); });
        },
        token);
  }
  /// As extend(ttl), without blocking; completes with an error_code.
  template <class Token>
  auto async_extend(std::chrono::milliseconds ttl, Token&& token) requires AsyncBackend<B> {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, ttl](auto handler) {
          auto ex = boost::asio::get_associated_executor(handler);
          auto h = std::make_shared<decltype(handler)>(std::move(handler));
          auto done = [h](std::exception_ptr e) { (*h)(detail::error_code_of(e)); };
          if (auto held = current_or_null()) return async_extend_acquisition(held, ttl, ex, std::move(done));
          auto e = std::make_exception_ptr(
              LockLostError(fmt::format("dlock: lock '{}' is not held", name_), errc::not_held));
          boost::asio::post(ex, [done, e] { done(e); });
        },
        token);
  }

  // ---- the current acquisition ----

  /// Resets the lease's TTL to `ttl` (owner-checked on the server). Throws
  /// LockLostError if the lock is not held or was lost (the loss is then
  /// signalled like any other), ConnectionError etc. if the backend could not
  /// be reached (the lease stays as it was; try again within its validity).
  /// `ttl` must be positive and at most max_ttl (else InvalidArgument).
  void extend(std::chrono::milliseconds ttl) { extend_acquisition(*current(), ttl); }
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
  /// before the first. A copy, so another thread's acquisition cannot change
  /// it under the caller (a guard's owner_id() is its own acquisition's).
  [[nodiscard]] std::string owner_id() const {
    std::lock_guard lk(mu_);
    return owner_ ? std::string(owner_->str()) : std::string();
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
  [[nodiscard]] std::stop_token stop_token() { return stop_token_of(current()); }
  /// Calls `callback` once if the current acquisition is lost (see
  /// stop_token()), on a heartbeat callback thread, or at once on this
  /// thread if it is already lost. Not called after a normal release.
  /// Exceptions from it are caught and reported to the observer.
  void on_lost(std::function<void(const LostEvent&)> callback) { on_lost_of(current(), std::move(callback)); }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const LockOptions& options() const noexcept { return options_; }
  [[nodiscard]] B& backend() noexcept { return backend_; }
  [[nodiscard]] const B& backend() const noexcept { return backend_; }

 private:
  template <class>
  friend class Guard;
  template <class>
  friend class AsyncGuard;
  using acquisition_type = detail::Held<B>;  // what a Guard binds to
  using Subscription = typename detail::SubscriptionOf<B>::type;

  // Releases the current acquisition. With `only` (a guard's), releases it
  // only if it is still the current one; otherwise the Lock has released it
  // already (or is doing so), and `only` is just told to release, which then
  // finds it released: a guard never releases a newer acquisition.
  ReleaseResult release_acquisition(acquisition_type* only) {
    auto held = detach(only);
    if (!held) return only ? only->release() : ReleaseResult::not_held;
    struct Leave {  // lets the next in-process waiter in, whatever happens below
      Lock* self;
      ~Leave() { self->leave_gate(); }
    } leave{this};
    return held->release();
  }
  // The current acquisition (if it is `only`, when given), no longer the
  // Lock's: unwatched and unlisted. The caller releases it and leaves the gate.
  std::shared_ptr<acquisition_type> detach(acquisition_type* only) noexcept {
    std::shared_ptr<acquisition_type> held;
    std::shared_ptr<Heartbeat> heartbeat;
    std::shared_ptr<detail::ThreadHoldList> hold_list;
    {
      std::lock_guard lk(mu_);
      if (engaged_ && (!only || held_.get() == only)) {
        engaged_ = false;
        held.swap(held_);
        hold_list.swap(hold_list_);
        heartbeat = heartbeat_;
      }
    }
    if (!held) return held;
    // An inherited lease (forked child) was never watched by this process's heartbeat.
    if (heartbeat && held->watched() && !held->inherited()) heartbeat->unwatch(*held);
    if (options_.lock_order) options_.lock_order->released(this);
    if (hold_list) hold_list->remove(held.get());
    return held;
  }
  // release_acquisition() without blocking: the gate opens at once (the
  // release on the server is owner-checked, so a new acquire may overlap it
  // safely), the completion runs on `ex`.
  void async_release_acquisition(const std::shared_ptr<acquisition_type>& only, const boost::asio::any_io_executor& ex,
                                 ReleaseCompletion done) requires AsyncBackend<B> {
    if (auto held = detach(only.get())) {
      leave_gate();
      held->async_release(ex, std::move(done));
    } else if (only) {
      only->async_release(ex, std::move(done));
    } else {
      boost::asio::post(ex, [done = std::move(done)] { done(nullptr, ReleaseResult::not_held); });
    }
  }
  void async_extend_acquisition(const std::shared_ptr<acquisition_type>& held, std::chrono::milliseconds ttl,
                                const boost::asio::any_io_executor& ex,
                                std::function<void(std::exception_ptr)> done) requires AsyncBackend<B> {
    try {
      detail::validate_ttl("extend ttl", ttl);
    } catch (...) {
      boost::asio::post(ex, [done = std::move(done), e = std::current_exception()] { done(e); });
      return;
    }
    held->async_extend(ttl, ex, std::move(done));
  }
  void extend_acquisition(acquisition_type& held, std::chrono::milliseconds ttl) {
    detail::validate_ttl("extend ttl", ttl);
    held.extend(ttl);
  }
  [[nodiscard]] std::stop_token stop_token_of(const std::shared_ptr<acquisition_type>& held) {
    watch(held);
    return held->stop_token();
  }
  void on_lost_of(const std::shared_ptr<acquisition_type>& held, std::function<void(const LostEvent&)> callback) {
    watch(held);
    held->on_lost(std::move(callback));
  }

  static LockOptions normalized(LockOptions o) {
    if (!o.observer) o.observer = default_observer();
    if (!o.clock) o.clock = &steady_clock();
    return o;
  }

  // The in-process gate: one thread at a time goes from acquire to unlock.
  // Remembers the thread that entered it (see check_reentry()).
  // False when the deadline passed or `stop` was requested first.
  bool enter_gate(std::optional<TimePoint> deadline, bool single, const std::stop_token& stop) {
    std::unique_lock lk(mu_);
    const auto self = std::this_thread::get_id();
    if (single || !busy_) {
      if (busy_) return false;
      busy_ = true;
      gate_thread_ = self;
      return true;
    }
    if (!deadline) {
      if (!gate_cv_.wait(lk, stop, [this] { return !busy_; })) return false;
    } else if (!gate_cv_.wait_until(lk, stop, detail::steady_deadline(detail::saturating_sub(*deadline, clock_.now())),
                                    [this] { return !busy_; })) {
      return false;
    }
    busy_ = true;
    gate_thread_ = self;
    return true;
  }
  // The gate for an asynchronous acquire, which must not block: entered if free.
  bool try_enter_gate_async() noexcept {
    std::lock_guard lk(mu_);
    if (busy_) return false;
    busy_ = true;
    gate_thread_ = {};  // an asynchronous acquisition belongs to no thread: a later acquire is not re-entry
    return true;
  }
  void leave_gate() noexcept {
    {
      std::lock_guard lk(mu_);
      busy_ = false;
      gate_thread_ = {};
    }
    gate_cv_.notify_one();
  }

  [[nodiscard]] DeadlockError reentry_error() const {
    return DeadlockError(
        fmt::format("dlock: lock '{}' on {} {} is already held (or being acquired) by this thread; a Lock is not "
                    "recursive, so a second acquire would wait for itself",
                    name_, backend_.kind(), backend_.endpoint()));
  }
  // A lock-order inversion of this thread's holdings (LockOptions::lock_order)
  // is reported before a waiting acquire.
  void check_order() {
    if (!options_.lock_order) return;
    if (auto violation = options_.lock_order->before_acquire(this, name_)) {
      Event ev = source().make(EventType::order_violation, {}, std::nullopt);
      ev.message = *violation;
      source().emit(ev);
    }
  }
  // The checks of a blocking acquire for an asynchronous one, on the thread
  // that starts it: re-entry (this thread holds this Lock object through a
  // blocking acquire: the error to complete with at once) and lock order.
  [[nodiscard]] std::exception_ptr check_async_start() {
    try {
      check_reentry();
      check_order();
      return nullptr;
    } catch (...) {
      return std::current_exception();
    }
  }
  // A second acquire by the thread in the gate would wait for itself.
  void check_reentry() const {
    std::lock_guard lk(mu_);
    if (busy_ && gate_thread_ == std::this_thread::get_id()) throw reentry_error();
  }

  // One acquire: its owner id, its state machine, and the side effects of
  // its steps (events, adoption of a grant, abandonment of an in-doubt owner
  // id), shared by the blocking loop and the asynchronous operation, which
  // only perform the machine's attempts and waits.
  template <class Rng>
  class AcquireRun {
   public:
    AcquireRun(Lock& lock, std::optional<TimePoint> deadline, detail::AcquirePlan plan, Rng& rng)
        : lock_(lock),
          start_(lock.clock_.now()),
          owner_(OwnerId::generate()),
          single_(plan.single),
          fsm_(lock.retry_, lock.options_.outage_timeout, deadline, plan, rng) {}
    AcquireRun(const AcquireRun&) = delete;
    AcquireRun& operator=(const AcquireRun&) = delete;
    // Giving up on an owner id whose attempt is in doubt abandons it, so it
    // does not block everyone for a TTL (AbandonsInDoubt backends).
    ~AcquireRun() {
      if (!acquired_ && fsm_.in_doubt()) without_blocking_ ? lock_.abandon_nowait(owner_) : lock_.abandon(owner_);
      if (!acquired_ && fsm_.attempts() > 0)  // fair mode: give up our place
        without_blocking_ ? lock_.leave_queue_nowait(owner_) : lock_.leave_queue(owner_);
    }

    [[nodiscard]] detail::AcquireFsm<Rng>& fsm() noexcept { return fsm_; }
    /// The asynchronous acquire: an in-doubt owner id is abandoned without
    /// blocking where the backend can (async_abandon).
    void abandon_without_blocking() noexcept { without_blocking_ = true; }
    [[nodiscard]] bool acquired() const noexcept { return acquired_; }
    [[nodiscard]] const OwnerId& owner() const noexcept { return owner_; }

    /// Emits `attempt` and tells the machine; returns the request to send
    /// and the server-side wait to ask for (zero: one plain attempt).
    std::pair<AcquireRequest, std::chrono::milliseconds> begin_attempt() {
      sent_ = lock_.clock_.now();
      lock_.source().emit(lock_.source().make(EventType::attempt, owner_.str(), std::nullopt));
      const auto server_wait = fsm_.attempt_started(sent_);
      return {AcquireRequest{lock_.name_, owner_, lock_.options_.ttl, sent_}, server_wait};
    }

    /// The attempt's answer. A grant is adopted (acquired), or released again
    /// when a stop was requested meanwhile (cancelled: `to_release` is set,
    /// for the caller to release).
    detail::AcquireDecision answered(AcquireResult<handle_type>&& result, bool stop_requested,
                                     std::optional<Lease<handle_type>>& to_release) {
      if (auto* grant = std::get_if<Grant<handle_type>>(&result)) {
        auto d = fsm_.granted(stop_requested);
        if (d.step == detail::AcquireStep::cancelled) {
          to_release.emplace(
              Lease<handle_type>{owner_, grant->token, sent_, grant->valid_until, std::move(grant->handle)});
          return d;
        }
        if (!grant->degraded.empty()) lock_.report_degraded(owner_, *grant);
        Event ev = lock_.source().make(EventType::acquired, owner_.str(), grant->token);
        lock_.adopt(owner_, std::move(*grant), sent_);
        acquired_ = true;
        ev.attempts = fsm_.attempts();
        ev.wait = lock_.clock_.now() - start_;
        lock_.source().emit(ev);
        return d;
      }
      lock_.source().emit(lock_.source().make(EventType::contended, owner_.str(), std::nullopt));
      return fsm_.contended(std::get<Contended>(result).holder_ttl, lock_.clock_.now(), stop_requested);
    }

    /// The attempt failed with `error`.
    detail::AcquireDecision failed(std::exception_ptr error, bool stop_requested) {
      failure_ = error;
      try {
        std::rethrow_exception(error);
      } catch (const Error& e) {
        const TimePoint now = lock_.clock_.now();
        lock_.report_failure(EventType::attempt_failed, owner_, fsm_.attempts(), now - start_, e);
        return fsm_.failed(detail::is_transient(e), sent_, now, stop_requested);
      } catch (...) {  // not a dlock error: thrown as it is
        return {.step = detail::AcquireStep::failed};
      }
    }

    /// The end without the lock: the error to deliver (null: contention, the
    /// caller gets false), reported to the observer.
    [[nodiscard]] std::exception_ptr end(detail::AcquireStep step) const {
      const auto waited = lock_.clock_.now() - start_;
      if (step == detail::AcquireStep::cancelled) {
        CancelledError e(fmt::format(
            "dlock: acquire of lock '{}' on {} {} was cancelled by a stop request after {} "
            "and {} attempt(s); it is not held",
            lock_.name_, lock_.backend_.kind(), lock_.backend_.endpoint(),
            detail::format_duration(std::chrono::duration_cast<std::chrono::milliseconds>(waited)), fsm_.attempts()));
        lock_.report_failure(EventType::acquire_failed, owner_, fsm_.attempts(), waited, e);
        return std::make_exception_ptr(e);
      }
      if (step == detail::AcquireStep::failed && failure_) {
        try {
          std::rethrow_exception(failure_);
        } catch (const Error& e) {
          lock_.report_failure(EventType::acquire_failed, owner_, fsm_.attempts(), waited, e);
        } catch (...) {
        }
        return failure_;
      }
      if (!single_) lock_.report_timed_out(owner_, fsm_.attempts(), waited);  // contention: a value
      return nullptr;
    }

    /// The first contention of a blocking acquire publishes a wait record,
    /// later ones refresh it (RecordsWaits backends).
    void record_wait() {
      if constexpr (RecordsWaits<B>) {
        if (!wait_record_) {
          wait_record_.emplace(lock_.backend_, lock_.name_, owner_.str(), lock_.wait_record_ttl());
        } else {
          wait_record_->refresh();
        }
      }
    }

   private:
    Lock& lock_;
    const TimePoint start_;
    const OwnerId owner_;
    const bool single_;
    detail::AcquireFsm<Rng> fsm_;
    TimePoint sent_{};
    std::exception_ptr failure_;  // the last attempt's error
    bool acquired_ = false;
    bool without_blocking_ = false;
    std::optional<std::conditional_t<RecordsWaits<B>, detail::WaitPublisher<B>, std::monostate>> wait_record_;
  };

  // The blocking acquire shared by lock(), try_lock() and the timed forms:
  // performs the state machine's decisions on this thread. Throws
  // CancelledError when `stop` is requested first.
  bool acquire_until(std::optional<TimePoint> deadline, bool single, const std::stop_token& stop = {}) {
    check_reentry();  // before the lock-order check, which would report it as an inversion
    if (!single) check_order();
    if (!enter_gate(deadline, single, stop)) {
      if (stop.stop_requested()) throw cancelled_error();
      return false;
    }
    bool acquired = false;
    struct Leave {
      Lock* self;
      const bool& acquired;
      ~Leave() {
        if (!acquired) self->leave_gate();
      }
    } leave{this, acquired};

    const detail::AcquirePlan plan{.single = single,
                                   .notifies_release = NotifiesRelease<B>,
                                   .waits_on_server = WaitsOnServer<B>,
                                   .cancellable = stop.stop_possible(),
                                   .wakes_one = wakes_one()};
    AcquireRun<std::mt19937_64> run(*this, deadline, plan, detail::thread_rng());
    std::optional<Subscription> subscription;
    if constexpr (requires { backend_.release_subscribed(name_); }) {
      // Already subscribed in this process: subscribing first costs no round
      // trip and spares the attempt after the first contention.
      if (!single && backend_.release_subscribed(name_)) {
        subscription = subscribe(&run.owner());
        run.fsm().subscribed_before_first_attempt();
      }
    }
    std::optional<Lease<handle_type>> to_release;
    detail::AcquireDecision d = run.fsm().start(stop.stop_requested());
    for (;;) {
      if (d.subscribe) subscription = subscribe(&run.owner());
      switch (d.step) {
        case detail::AcquireStep::attempt: {
          const auto [request, server_wait] = run.begin_attempt();
          try {
            auto result = attempt(request, server_wait);  // before asking whether a stop came meanwhile
            d = run.answered(std::move(result), stop.stop_requested(), to_release);
          } catch (...) {
            d = run.failed(std::current_exception(), stop.stop_requested());
            break;
          }
          if (d.step != detail::AcquireStep::acquired && d.step != detail::AcquireStep::cancelled && !single)
            run.record_wait();
          break;
        }
        case detail::AcquireStep::wait:
          wait(d, subscription, stop);
          d = run.fsm().woken(stop.stop_requested());
          break;
        case detail::AcquireStep::acquired:
          acquired = true;
          if constexpr (requires(Subscription & s) { s.taken(); }) {
            if (subscription) subscription->taken();  // a wake-one wake was used: not passed on
          }
          return true;
        case detail::AcquireStep::cancelled:
          if (to_release) release_quietly(*to_release);
          [[fallthrough]];
        case detail::AcquireStep::timed_out:
        case detail::AcquireStep::failed:
          if (auto error = run.end(d.step)) std::rethrow_exception(error);
          return false;
      }
    }
  }

  // A wait of the blocking acquire: on the release subscription when there
  // is one, else a plain sleep; a stop request ends either at once.
  void wait(const detail::AcquireDecision& d, std::optional<Subscription>& subscription, const std::stop_token& stop) {
    if constexpr (NotifiesRelease<B>) {
      if (d.on_subscription && subscription) {
        (void)detail::wait_for_release(*subscription, d.wait, stop);
        return;
      }
    }
    detail::sleep_for(d.wait, stop);
  }

  // A grant that raced a stop request: released at once (owner-checked).
  void release_quietly(Lease<handle_type>& lease) noexcept {
    try {
      (void)detail::release_lease(backend_, name_, lease, options_.fair);
    } catch (...) {  // it expires by its TTL
    }
  }

  [[nodiscard]] CancelledError cancelled_error() const {
    return CancelledError(
        fmt::format("dlock: acquire of lock '{}' on {} {} was cancelled by a stop request; it is "
                    "not held",
                    name_, backend_.kind(), backend_.endpoint()));
  }

  AcquireResult<handle_type> attempt(const AcquireRequest& request, std::chrono::milliseconds server_wait) {
    if constexpr (QueuesFairly<B>) {
      if (options_.fair) return backend_.try_acquire_fair(request, detail::fair_waiter_ttl(options_));
    }
    if constexpr (WaitsOnServer<B>) {
      if (server_wait > server_wait.zero()) return backend_.acquire_wait(request, server_wait);
    }
    (void)server_wait;
    return backend_.try_acquire(request);
  }

  // The asynchronous acquire: performs the state machine's decisions on the
  // completion's executor, with a steady_timer for every wait (the backoff,
  // and the in-process gate, which it polls at retry.initial_delay) and the
  // backend's asynchronous attempts. A stop request cancels the timer from
  // the executor. Completes with (error_code, bool) or (error_code, AsyncGuard).
  template <class Handler, bool Guarded>
  class AsyncAcquireOp : public std::enable_shared_from_this<AsyncAcquireOp<Handler, Guarded>> {
   public:
    AsyncAcquireOp(Lock& lock, Handler handler, std::optional<TimePoint> deadline, std::stop_token stop)
        : lock_(lock),
          handler_(std::move(handler)),
          ex_(boost::asio::get_associated_executor(handler_)),
          strand_(boost::asio::make_strand(boost::asio::any_io_executor(ex_))),
          deadline_(deadline),
          stop_(std::move(stop)),
          timer_(strand_),
          rng_(static_cast<std::uint_fast32_t>(detail::thread_rng()())) {}

    AsyncAcquireOp(const AsyncAcquireOp&) = delete;
    AsyncAcquireOp& operator=(const AsyncAcquireOp&) = delete;
    // Destroyed unfinished when its io_context stops or is destroyed: lets the
    // Lock object go (the Lock must still exist: docs/async.md).
    ~AsyncAcquireOp() {
      if (!in_gate_) return;
      run_.reset();  // abandons an in-doubt owner id
      lock_.leave_gate();
    }

    void start() {
      if (stop_.stop_possible()) stop_cb_.emplace(stop_, StopWake{this->weak_from_this(), strand_});
      boost::asio::post(strand_, [self = this->shared_from_this()] { self->enter_gate(); });
    }

   private:
    // Runs on the thread that requests the stop: wakes the op on its executor.
    struct StopWake {
      std::weak_ptr<AsyncAcquireOp> op;
      boost::asio::any_io_executor ex;
      void operator()() noexcept {
        try {
          boost::asio::post(ex, [op = op] {
            if (auto self = op.lock()) self->timer_.cancel();
          });
        } catch (...) {  // out of memory: the op notices the stop when its wait ends
        }
      }
    };

    void enter_gate() {
      if (stop_.stop_requested()) return finish(lock_.cancelled_exception(), false);
      if (lock_.try_enter_gate_async()) {
        in_gate_ = true;
        // A backend that waits on the server asynchronously (AsyncWaitsOnServer)
        // ends that wait at once on a stop request: its waits need not be
        // sliced short for cancellation (a slice's end loses the place in the queue).
        run_.emplace(lock_, deadline_,
                     detail::AcquirePlan{.notifies_release = AsyncNotifiesRelease<B>,
                                         .waits_on_server = AsyncWaitsOnServer<B>,
                                         .cancellable = !AsyncWaitsOnServer<B> && stop_.stop_possible()},
                     rng_);
        run_->abandon_without_blocking();
        return step(run_->fsm().start(stop_.stop_requested()));
      }
      const TimePoint now = lock_.clock_.now();
      if (deadline_ && now >= *deadline_) return finish(nullptr, false);  // another task kept this Lock object
      Clock::duration wait = detail::saturating_ceil<Clock::duration>(lock_.options_.retry.initial_delay);
      if (deadline_) wait = std::min(wait, detail::saturating_sub(*deadline_, now));
      timer_.expires_after(wait);
      timer_.async_wait([self = this->shared_from_this()](const boost::system::error_code&) { self->enter_gate(); });
    }

    void step(detail::AcquireDecision d) {
      auto self = this->shared_from_this();
      if (d.subscribe) subscription_ = lock_.subscribe_nowait(&run_->owner());  // before the attempt: no lost wake-up
      switch (d.step) {
        case detail::AcquireStep::attempt: {
          released_ = false;  // a release seen from here on ends the next wait at once
          const auto [request, server_wait] = run_->begin_attempt();  // server_wait: AsyncWaitsOnServer only
          auto answered = [self](std::exception_ptr e, AcquireResult<handle_type> result) {
            const bool stop = self->stop_.stop_requested();
            self->step(e ? self->run_->failed(e, stop)
                         : self->run_->answered(std::move(result), stop, self->to_release_));
          };
          if constexpr (AsyncQueuesFairly<B>) {
            if (lock_.options_.fair) {
              lock_.backend_.async_try_acquire_fair(request, detail::fair_waiter_ttl(lock_.options_), strand_,
                                                    std::move(answered));
              return;
            }
          }
          if constexpr (AsyncWaitsOnServer<B>) {  // as attempt(): the wait in the server's queue
            if (server_wait > server_wait.zero()) {
              lock_.backend_.async_acquire_wait(request, server_wait, stop_, strand_, std::move(answered));
              return;
            }
          }
          lock_.backend_.async_try_acquire(request, strand_, std::move(answered));
          return;
        }
        case detail::AcquireStep::wait:
          if (stop_.stop_requested()) return step(run_->fsm().woken(true));  // a cancel posted before this wait
          if (released_) return step(run_->fsm().woken(false));              // released during the attempt
          timer_.expires_after(d.wait);
          timer_.async_wait([self](const boost::system::error_code&) {
            self->step(self->run_->fsm().woken(self->stop_.stop_requested()));
          });
          if (d.on_subscription) wake_on_release();
          return;
        case detail::AcquireStep::acquired:
          return finish(nullptr, true);
        case detail::AcquireStep::cancelled:
          if (to_release_) {  // a grant that raced the stop request
            detail::async_release_lease(lock_.backend_, lock_.name_, *to_release_, lock_.options_.fair, strand_,
                                        [self](std::exception_ptr, ReleaseResult) {
                                          self->finish(self->run_->end(detail::AcquireStep::cancelled), false);
                                        });
            return;
          }
          [[fallthrough]];
        case detail::AcquireStep::timed_out:
        case detail::AcquireStep::failed:
          return finish(run_->end(d.step), false);
      }
    }

    // A release of the name ends the current wait, or the next one when it
    // comes during an attempt (no lost wake-up): the subscription's callback
    // marks it and cancels the timer from the strand.
    void wake_on_release() {
      if constexpr (AsyncNotifiesRelease<B>) {
        if (!subscription_) return;
        subscription_->on_release([op = this->weak_from_this(), ex = strand_]() noexcept {
          try {
            boost::asio::post(ex, [op] {
              if (auto self = op.lock()) {
                self->released_ = true;
                self->timer_.cancel();
              }
            });
          } catch (...) {  // out of memory: the wait ends when its backoff does
          }
        });
      }
    }

    void finish(std::exception_ptr error, bool acquired) {
      subscription_.reset();
      stop_cb_.reset();
      run_.reset();  // abandons an in-doubt owner id
      if (in_gate_ && !acquired) lock_.leave_gate();
      in_gate_ = false;  // left, or handed to the acquisition
      boost::system::error_code ec = detail::error_code_of(error);
      if constexpr (Guarded) {
        if (!acquired && !ec) ec = make_async_error_code(errc::timeout);  // acquire_timeout passed: lock() would throw
        complete(ec, acquired ? AsyncGuard<Lock>(lock_, ex_) : AsyncGuard<Lock>());
      } else {
        complete(ec, acquired);
      }
    }
    template <class R>
    void complete(boost::system::error_code ec, R result) {
      boost::asio::dispatch(
          ex_, [h = std::move(handler_), ec, result = std::move(result)]() mutable { h(ec, std::move(result)); });
    }

    Lock& lock_;
    Handler handler_;
    boost::asio::associated_executor_t<Handler> ex_;  // the completion's
    // Every step of the op runs here: the stop request's cancel, timer and
    // backend completions never overlap, even on a multi-threaded io_context.
    boost::asio::strand<boost::asio::any_io_executor> strand_;
    const std::optional<TimePoint> deadline_;
    const std::stop_token stop_;
    boost::asio::steady_timer timer_;
    std::minstd_rand rng_;  // the op's own: it may run on several threads of an executor in turn
    std::optional<AcquireRun<std::minstd_rand>> run_;
    std::optional<Lease<handle_type>> to_release_;
    std::optional<std::stop_callback<StopWake>> stop_cb_;
    std::optional<Subscription> subscription_;  // AsyncNotifiesRelease backends, after the first contention
    bool released_ = false;                     // a release was observed since the last attempt began
    bool in_gate_ = false;
  };

  template <bool Guarded, class Token>
  auto async_acquire_until(std::optional<TimePoint> deadline, std::stop_token stop, Token&& token) {
    if (options_.fair && !AsyncQueuesFairly<B> && !AsyncWaitsOnServer<B>)
      throw InvalidArgument(
          fmt::format("dlock: LockOptions.fair = true for lock '{}' on {} {}: fair mode has no "
                      "asynchronous acquire yet; use the blocking forms",
                      name_, backend_.kind(), backend_.endpoint()));
    using R = std::conditional_t<Guarded, AsyncGuard<Lock>, bool>;
    return boost::asio::async_initiate<Token, void(boost::system::error_code, R)>(
        [this, deadline, stop = std::move(stop)](auto handler) {
          using H = decltype(handler);
          static_assert(!std::is_same_v<boost::asio::associated_executor_t<H>, boost::asio::system_executor>,
                        "dlock: the completion needs an executor: use a token that has one (use_awaitable) or "
                        "bind one (boost::asio::bind_executor(io_context, token))");
          if (auto refused = check_async_start()) {  // re-entry: completes at once, the backend untouched
            auto ex = boost::asio::get_associated_executor(handler);
            boost::asio::post(ex, [h = std::move(handler), ec = detail::error_code_of(refused)]() mutable {
              h(ec, std::conditional_t<Guarded, AsyncGuard<Lock>, bool>{});
            });
            return;
          }
          std::make_shared<AsyncAcquireOp<H, Guarded>>(*this, std::move(handler), deadline, stop)->start();
        },
        token);
  }

  [[nodiscard]] std::exception_ptr cancelled_exception() const { return std::make_exception_ptr(cancelled_error()); }

  void abandon(const OwnerId& owner) noexcept {
    if constexpr (AbandonsInDoubt<B>) backend_.abandon(name_, owner);
  }
  // Fair mode on a queueing backend: a release wakes the queue's head itself,
  // so a waiter's attempts only renew its place, every retry.max_delay from
  // the start (no fast first retries: they would be calls for nothing).
  [[nodiscard]] RetryPolicy retry_policy() const {
    RetryPolicy r = options_.retry;
    if constexpr (QueuesFairly<B>) {
      if (options_.fair) r.initial_delay = r.max_delay;
    }
    return r;
  }
  void leave_queue(const OwnerId& owner) noexcept {
    if constexpr (QueuesFairly<B>) {
      if (options_.fair) backend_.leave_fair(name_, owner);
    }
  }
  // leave_queue() for the asynchronous acquire: started without blocking.
  void leave_queue_nowait(const OwnerId& owner) noexcept {
    if constexpr (AsyncQueuesFairly<B>) {
      if (options_.fair) backend_.async_leave_fair(name_, owner);
    } else {
      leave_queue(owner);  // not reached: an asynchronous acquire of a fair Lock needs AsyncQueuesFairly
    }
  }
  // abandon() started without blocking, when the backend can
  // (b.async_abandon(name, owner) noexcept: fire and forget).
  void abandon_nowait(const OwnerId& owner) noexcept {
    if constexpr (requires { backend_.async_abandon(name_, owner); }) {
      backend_.async_abandon(name_, owner);
    } else {
      abandon(owner);
    }
  }

  // Fair mode: woken only by a release naming `owner` as the queue's head.
  std::optional<Subscription> subscribe(const OwnerId* owner = nullptr) {
    if constexpr (QueuesFairly<B>) {
      if (options_.fair && owner != nullptr) return backend_.subscribe_release(name_, *owner);
    }
    if constexpr (requires { backend_.subscribe_release_one(name_); }) {
      // The blocking acquire (owner given): each release wakes one waiter
      // of this backend, which passes the wake on if it does not take it.
      if (owner != nullptr) return backend_.subscribe_release_one(name_);
    }
    if constexpr (NotifiesRelease<B>) {
      return backend_.subscribe_release(name_);
    } else {
      return std::nullopt;
    }
  }

  // The blocking acquire's subscription (subscribe(owner)) wakes one waiter
  // per release: AcquirePlan::wakes_one.
  [[nodiscard]] bool wakes_one() const noexcept {
    if constexpr (requires(B & b, std::string_view n) { b.subscribe_release_one(n); }) {
      if constexpr (QueuesFairly<B>) return !options_.fair;
      return true;
    } else {
      return false;
    }
  }

  // subscribe() for the asynchronous acquire: without waiting for the
  // server's acknowledgement where the backend can (subscribe_release_nowait:
  // the acknowledgement then wakes the waiter, so no release is lost).
  std::optional<Subscription> subscribe_nowait(const OwnerId* owner = nullptr) {
    if constexpr (AsyncQueuesFairly<B>) {  // fair mode: woken only by a release naming `owner` as the head
      if (options_.fair && owner != nullptr) return backend_.subscribe_release_nowait(name_, *owner);
    }
    if constexpr (requires { backend_.subscribe_release_nowait(name_); }) {
      return backend_.subscribe_release_nowait(name_);
    } else {
      return subscribe();
    }
  }

  void adopt(const OwnerId& owner, Grant<handle_type>&& grant, TimePoint sent) {
    auto held = std::make_shared<acquisition_type>(
        backend_, name_, options_, clock_, options_.observer,
        Lease<handle_type>{owner, grant.token, sent, grant.valid_until, std::move(grant.handle)});
    std::shared_ptr<detail::ThreadHoldList> hold_list;  // this thread's, for RecordsWaits backends
    if constexpr (RecordsWaits<B>) {
      hold_list = detail::thread_hold_list();
      hold_list->add(
          detail::ThreadHold{held.get(), detail::backend_identity(backend_), name_, std::string(owner.str())});
    }
    {
      std::lock_guard lk(mu_);
      held_ = held;
      hold_list_ = std::move(hold_list);
      owner_ = owner;
      engaged_ = true;
    }
    if (options_.lock_order) options_.lock_order->acquired(this, name_);
    if (held->needs_watch()) watch(held);
  }

  // Has the heartbeat look after `held` (once). Not an inherited lease: the
  // parent's heartbeat looks after that one.
  void watch(const std::shared_ptr<acquisition_type>& held) {
    if (held->inherited() || !held->mark_watched()) return;
    std::shared_ptr<Heartbeat> heartbeat;
    {
      std::lock_guard lk(mu_);
      if (!heartbeat_) heartbeat_ = options_.heartbeat ? options_.heartbeat : Heartbeat::process_wide();
      heartbeat = heartbeat_;
    }
    heartbeat->watch(held);
  }

  [[nodiscard]] std::shared_ptr<acquisition_type> current_or_null() const noexcept {
    std::lock_guard lk(mu_);
    return held_;
  }
  [[nodiscard]] std::shared_ptr<acquisition_type> current() const {
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
    return {backend_.kind(), detail::event_endpoint(backend_, name_), detail::primitive_of(backend_), name_,
            options_.observer.get()};
  }
  void report_degraded(const OwnerId& owner, const Grant<handle_type>& grant) const noexcept {
    Event ev = source().make(EventType::degraded, owner.str(), grant.token);
    ev.message = grant.degraded;
    if constexpr (requires { backend_.fallback_kind(); }) ev.reason = backend_.fallback_kind();
    source().emit(ev);
  }
  // Whether a run of failed attempts that began at `since` has lasted outage_timeout.
  [[nodiscard]] bool outage_exceeded(TimePoint since, TimePoint now) const noexcept {
    return options_.outage_timeout && now >= detail::saturating_add(since, *options_.outage_timeout);
  }
  // attempt_failed (one attempt) or acquire_failed (the acquire ends with `e`).
  void report_failure(EventType type, const OwnerId& owner, std::uint32_t attempts, Clock::duration waited,
                      const Error& e) const noexcept {
    Event ev = source().make(type, owner.str(), std::nullopt);
    ev.attempts = attempts;
    ev.wait = waited;
    ev.error = e.code();
    ev.message = e.what();
    ev.reason = to_string(static_cast<errc>(ev.error.value()));
    source().emit(ev);
  }
  // The acquire ends without the lock on contention: the deadline passed or
  // the attempts were used up while it stayed held.
  void report_timed_out(const OwnerId& owner, std::uint32_t attempts, Clock::duration waited) const noexcept {
    Event ev = source().make(EventType::acquire_timed_out, owner.str(), std::nullopt);
    ev.attempts = attempts;
    ev.wait = waited;
    ev.message = "the lock stayed held until the deadline or retry.max_attempts";
    source().emit(ev);
  }

  detail::BackendStorage<B> backend_;
  const std::string name_;
  const LockOptions options_;  // observer and clock always set
  RetryPolicy retry_;          // the acquires' backoff: options_.retry, or fair mode's (retry_policy())
  const Clock& clock_;

  mutable std::mutex mu_;
  std::condition_variable_any gate_cv_;                // _any: its waits end on a stop request
  bool busy_ = false;                                  // a thread is between acquire and unlock (the in-process gate)
  std::thread::id gate_thread_;                        // the thread that entered the gate, while busy_
  bool engaged_ = false;                               // the last successful acquire has not been released yet
  std::shared_ptr<acquisition_type> held_;             // the current acquisition, while engaged
  std::shared_ptr<detail::ThreadHoldList> hold_list_;  // the list held_ is in (RecordsWaits backends)
  std::optional<OwnerId> owner_;
  std::shared_ptr<Heartbeat> heartbeat_;  // set by the first watched acquisition
};

}  // namespace dlock
