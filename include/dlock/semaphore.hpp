// dlock/semaphore.hpp: Semaphore<Backend>, a distributed counting semaphore
// whose permits are leases, shaped like std::counting_semaphore.
//
//   dlock::MemoryPrimitives prims;
//   dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "tenant:7", 4, {.ttl = 30s, .auto_extend = true});
//   {
//     auto permit = sem.acquire_permit();        // at most 4 holders fleet-wide
//     work(permit.stop_token());
//   }                                            // released here
//   sem.acquire(); ... sem.release();           // the std::counting_semaphore form
//
// N permits per name across all processes. Each permit is a lease of its own
// (owner id, TTL, fencing token), so a crashed holder's permit comes back by
// itself when its TTL passes, and with LockOptions::auto_extend each held
// permit is extended by the heartbeat and its loss signalled (stop_token,
// on_lost, observer) like a Lock's. N is the count an operator set for the
// name (set_permits(), e.g. from dlockctl), else the `permits` given here;
// permits() reads it.
//
// Each permit is one Lock over a PermitView of the backend
// (primitives_backend.hpp), so acquire* retries, backs off, honours
// acquire_timeout and wakes on releases exactly as Lock::lock() does, and
// throws what it throws (TimeoutError, ConnectionError, ...).
//
// Thread safety: all members may be called from any thread; one object may
// hold several permits at once (one per acquire). release() gives back the
// most recently acquired permit this object still holds (counting_semaphore's
// release() names no permit); a Permit guard gives back its own. A Permit must
// not outlive its Semaphore. Not copyable or movable.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "async_lease_guard.hpp"
#include "detail/lock_pool.hpp"
#include "error.hpp"
#include "lock.hpp"
#include "options.hpp"
#include "primitives_backend.hpp"

namespace dlock {

template <SemaphoreBackend B>
class Semaphore {
 public:
  using backend_type = B;
  using lock_type = Lock<detail::PermitView<B>>;

  /// One held permit; releases it on destruction (never throws; failures go
  /// to the observer). Move-only; empty when an acquire failed (test `if (p)`).
  class [[nodiscard]] Permit {
   public:
    Permit() noexcept = default;
    Permit(Permit&& o) noexcept : sem_(std::exchange(o.sem_, nullptr)), lock_(std::move(o.lock_)) {}
    Permit& operator=(Permit&& o) noexcept {
      if (this != &o) {
        unlock();
        sem_ = std::exchange(o.sem_, nullptr);
        lock_ = std::move(o.lock_);
      }
      return *this;
    }
    ~Permit() { unlock(); }

    explicit operator bool() const noexcept { return lock_ != nullptr; }
    /// True while the permit is held and within its validity.
    [[nodiscard]] bool owns_permit() const noexcept { return lock_ && lock_->owns_lock(); }
    /// See Lock::fencing_token(): strictly increasing per name over all grants.
    [[nodiscard]] std::uint64_t fencing_token() const { return checked().fencing_token(); }
    [[nodiscard]] std::string owner_id() const { return lock_ ? lock_->owner_id() : std::string(); }
    [[nodiscard]] TimePoint valid_until() const noexcept { return lock_ ? lock_->valid_until() : TimePoint{}; }
    void extend(std::chrono::milliseconds ttl) { checked().extend(ttl); }
    /// Requested when this permit is lost; see Lock::stop_token().
    [[nodiscard]] std::stop_token stop_token() const { return lock_ ? lock_->stop_token() : std::stop_token{}; }
    void on_lost(std::function<void(const LostEvent&)> callback) { checked().on_lost(std::move(callback)); }

    /// Releases now and tells the outcome (see Lock::release()). Empty afterwards.
    ReleaseResult release() {
      if (!lock_) return ReleaseResult::not_held;
      std::unique_ptr<lock_type> l = std::move(lock_);
      Semaphore* s = std::exchange(sem_, nullptr);
      struct Back {  // the slot goes back to the semaphore whatever release() does
        Semaphore* s;
        std::unique_ptr<lock_type>& l;
        ~Back() { s->pool_.give_back(std::move(l)); }
      } back{s, l};
      return l->release();
    }
    /// Releases now; never throws. Idempotent.
    void unlock() noexcept {
      try {
        (void)release();
      } catch (...) {  // reported to the observer
      }
    }

   private:
    friend class Semaphore;
    Permit(Semaphore* s, std::unique_ptr<lock_type> l) noexcept : sem_(s), lock_(std::move(l)) {}
    lock_type& checked() const {
      if (!lock_) throw LockLostError("dlock: the permit is empty (not acquired or already released)", errc::not_held);
      return *lock_;
    }
    Semaphore* sem_ = nullptr;
    std::unique_ptr<lock_type> lock_;
  };

  /// `permits` is this caller's count (used while no operator count is set);
  /// at least 1. Validates name and options; does not contact the backend.
  Semaphore(B& backend, std::string name, std::uint32_t permits, LockOptions options = {})
      : view_(backend, detail::PermitOps{permits}), name_(std::move(name)), options_(std::move(options)) {
    if (permits == 0) detail::invalid_field("Semaphore permits", "must be at least 1", "0");
    (void)lock_type(view_, name_, options_);  // validates name and options now
  }
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  // ---- std::counting_semaphore shape ----

  /// Blocks until a permit is held; throws as Lock::lock().
  void acquire() { keep(acquire_permit()); }
  [[nodiscard]] bool try_acquire() { return keep(try_acquire_permit()); }
  template <class Rep, class Period>
  [[nodiscard]] bool try_acquire_for(const std::chrono::duration<Rep, Period>& timeout) {
    return keep(try_acquire_permit_for(timeout));
  }
  template <class C, class D>
  [[nodiscard]] bool try_acquire_until(const std::chrono::time_point<C, D>& deadline) {
    return keep(try_acquire_permit_until(deadline));
  }
  /// Releases `update` permits this object holds, the most recent first;
  /// never throws for the release itself (failures go to the observer).
  /// Throws LockLostError(errc::not_held) if it holds fewer than `update`.
  void release(std::ptrdiff_t update = 1) {
    for (std::ptrdiff_t i = 0; i < update; ++i) {
      Permit p;
      {
        std::lock_guard lk(mu_);
        if (kept_.empty())
          throw LockLostError(fmt::format("dlock: semaphore '{}' release(): this object holds no permit", name_),
                              errc::not_held);
        p = std::move(kept_.back());
        kept_.pop_back();
      }
      p.unlock();
    }
  }

  // ---- guards ----

  [[nodiscard]] Permit acquire_permit() {
    return with_slot([](lock_type& l) {
      l.lock();
      return true;
    });
  }
  [[nodiscard]] Permit try_acquire_permit() {
    return with_slot([](lock_type& l) { return l.try_lock(); });
  }
  template <class Rep, class Period>
  [[nodiscard]] Permit try_acquire_permit_for(const std::chrono::duration<Rep, Period>& timeout) {
    return with_slot([&](lock_type& l) { return l.try_lock_for(timeout); });
  }
  template <class C, class D>
  [[nodiscard]] Permit try_acquire_permit_until(const std::chrono::time_point<C, D>& deadline) {
    return with_slot([&](lock_type& l) { return l.try_lock_until(deadline); });
  }

  // ---- the count ----

  /// The count in force for this name (the operator's, else this caller's).
  /// Contacts the backend.
  [[nodiscard]] std::uint32_t permits() { return view_.backend().permits(name_, view_.ops().permits); }
  /// Operator: sets the count for every process using this name (nullopt:
  /// each caller's own count). Lowering it revokes no held permit.
  void set_permits(std::optional<std::uint32_t> permits) { view_.backend().set_permits(name_, permits); }
  /// Permits this object holds through acquire()/try_acquire*() (not Permit guards).
  [[nodiscard]] std::size_t held() const {
    std::lock_guard lk(mu_);
    return kept_.size();
  }

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const LockOptions& options() const noexcept { return options_; }

  // ==== cancellable and asynchronous forms (docs/async.md, "Primitives") ====

  // ---- blocking, cancellable: as Lock's stop_token overloads (CancelledError,
  // errc::cancelled, as soon as `stop` is requested; nothing left held) ----
  void acquire(const std::stop_token& stop) { keep(acquire_permit(stop)); }
  template <class Rep, class Period>
  [[nodiscard]] bool try_acquire_for(const std::chrono::duration<Rep, Period>& timeout, const std::stop_token& stop) {
    return keep(try_acquire_permit_for(timeout, stop));
  }
  template <class C, class D>
  [[nodiscard]] bool try_acquire_until(const std::chrono::time_point<C, D>& deadline, const std::stop_token& stop) {
    return keep(try_acquire_permit_until(deadline, stop));
  }
  [[nodiscard]] Permit acquire_permit(const std::stop_token& stop) {
    return with_slot([&](lock_type& l) {
      l.lock(stop);
      return true;
    });
  }
  template <class Rep, class Period>
  [[nodiscard]] Permit try_acquire_permit_for(const std::chrono::duration<Rep, Period>& timeout,
                                              const std::stop_token& stop) {
    return with_slot([&](lock_type& l) { return l.try_lock_for(timeout, stop); });
  }
  template <class C, class D>
  [[nodiscard]] Permit try_acquire_permit_until(const std::chrono::time_point<C, D>& deadline,
                                                const std::stop_token& stop) {
    return with_slot([&](lock_type& l) { return l.try_lock_until(deadline, stop); });
  }

  // ---- asynchronous (backends with the asynchronous permit operations,
  // AsyncSemaphoreBackend; any completion token) ----
  //
  // Each completes with (error_code, AsyncPermit): one permit of its own,
  // released when the guard is destroyed (started, not awaited) or by
  // co_await p.async_release(...). async_acquire waits as acquire() does and
  // completes with errc::timeout (acquire_timeout), errc::connection or
  // errc::cancelled (stop requested: nothing is left held on the server);
  // async_try_acquire_for completes with an empty guard and no error when the
  // timeout passes. Nothing blocks a thread.
  using AsyncPermit = AsyncLeaseGuard<lock_type>;

  template <class Token>
  auto async_acquire(Token&& token) requires AsyncSemaphoreBackend<B> {
    return async_acquire(std::stop_token{}, std::forward<Token>(token));
  }
  template <class Token>
  auto async_acquire(std::stop_token stop, Token&& token) requires AsyncSemaphoreBackend<B> {
    return detail::async_pooled_acquire(
        pool_, make_slot(), [stop = std::move(stop)](lock_type& l, auto h) { l.async_acquire(stop, std::move(h)); },
        std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_acquire_for(const std::chrono::duration<Rep, Period>& timeout,
                             Token&& token) requires AsyncSemaphoreBackend<B> {
    return async_try_acquire_for(timeout, std::stop_token{}, std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_acquire_for(const std::chrono::duration<Rep, Period>& timeout, std::stop_token stop,
                             Token&& token) requires AsyncSemaphoreBackend<B> {
    return detail::async_pooled_acquire(
        pool_, make_slot(),
        [timeout, stop = std::move(stop)](lock_type& l, auto h) { l.async_try_lock_for(timeout, stop, std::move(h)); },
        std::forward<Token>(token));
  }

 private:
  auto make_slot() {
    return [this] { return std::make_unique<lock_type>(view_, name_, options_); };
  }

  // ==== end of the cancellable and asynchronous forms ====

  // A Permit for a pooled Lock on which `acquire` succeeded; else empty.
  template <class F>
  Permit with_slot(F acquire) {
    auto l = pool_.acquire([this] { return std::make_unique<lock_type>(view_, name_, options_); }, acquire);
    return l ? Permit(this, std::move(l)) : Permit();
  }
  bool keep(Permit p) {
    if (!p) return false;
    std::lock_guard lk(mu_);
    kept_.push_back(std::move(p));
    return true;
  }

  detail::PermitView<B> view_;
  const std::string name_;
  const LockOptions options_;
  detail::LockPool<lock_type> pool_;  // one Lock per permit held, reused
  mutable std::mutex mu_;
  std::vector<Permit> kept_;  // permits of acquire()/try_acquire*(), newest last
};

}  // namespace dlock
