// dlock/guard.hpp: Guard, the move-only RAII owner of one acquisition.
//
// A Guard is returned by Lock::acquire() (always engaged) and by
// Lock::try_acquire*() (empty on contention; test it with `if (g)`). Its
// destructor releases the lock. The destructor never throws: a release that
// fails, or finds the lock already expired or taken, is reported through the
// lock's Observer (by default a line on stderr), never swallowed. Call
// release() yourself when you want to handle that outcome as a value or an
// exception instead.
//
// A guard is bound to the acquisition it adopted, not to the Lock: if that
// acquisition ends some other way (lock.unlock(), loss) and the Lock is
// acquired again, the guard still describes its own acquisition (not held,
// its own owner id) and releasing or destroying it leaves the new one alone.
//
// Lifetime: like std::unique_lock and its mutex, a Guard must not outlive the
// Lock it came from (its release goes through the Lock). One Guard object is
// not meant to be used by two threads at once; its acquisition's state is
// thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <utility>

#include "backend.hpp"
#include "error.hpp"

namespace dlock {

template <class L>
class [[nodiscard]] Guard {
  using Acquisition = typename L::acquisition_type;

 public:
  Guard() noexcept = default;
  /// Takes over the acquisition `lock` holds now (just made by this thread's
  /// lock() or try_lock*()); empty if it holds none.
  Guard(L& lock, std::adopt_lock_t) noexcept : held_(lock.current_or_null()) {
    if (held_) lock_ = &lock;
  }

  Guard(Guard&& other) noexcept : lock_(std::exchange(other.lock_, nullptr)), held_(std::move(other.held_)) {}
  Guard& operator=(Guard&& other) noexcept {
    if (this != &other) {
      unlock();
      lock_ = std::exchange(other.lock_, nullptr);
      held_ = std::move(other.held_);
    }
    return *this;
  }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  ~Guard() { unlock(); }

  /// True if this guard owns an acquisition (it may since have been lost or
  /// released through the Lock; owns_lock() tells whether it is still valid).
  explicit operator bool() const noexcept { return held_ != nullptr; }
  /// True while this guard's acquisition is held and within its validity.
  [[nodiscard]] bool owns_lock() const noexcept { return held_ && held_->owns(held_->clock().now()); }

  /// This acquisition's token (see Lock::fencing_token()); throws
  /// LockLostError when empty, released, lost or past validity.
  [[nodiscard]] std::uint64_t fencing_token() const { return checked().fencing_token(); }
  /// This acquisition's owner id; empty for an empty guard.
  [[nodiscard]] std::string owner_id() const { return held_ ? std::string(held_->owner().str()) : std::string(); }
  [[nodiscard]] TimePoint valid_until() const noexcept { return held_ ? held_->valid_until() : TimePoint{}; }
  /// See Lock::extend(); throws LockLostError unless this acquisition is held.
  void extend(std::chrono::milliseconds ttl) {
    Acquisition& held = checked();
    lock_->extend_acquisition(held, ttl);
  }
  void extend() { extend(checked_lock().options().ttl); }
  /// See Lock::stop_token(); an empty guard gives a token that is never requested.
  [[nodiscard]] std::stop_token stop_token() const { return held_ ? lock_->stop_token_of(held_) : std::stop_token{}; }
  /// See Lock::on_lost().
  template <class F>
  void on_lost(F&& callback) {
    checked_lock().on_lost_of(held_, std::forward<F>(callback));
  }

  /// Releases this acquisition now (if it is still the Lock's current one)
  /// and reports the outcome; throws what Lock::release() throws. The guard
  /// is empty afterwards, even when it throws.
  ReleaseResult release() {
    L* l = std::exchange(lock_, nullptr);
    const std::shared_ptr<Acquisition> held = std::move(held_);
    held_.reset();
    return held ? l->release_acquisition(held.get()) : ReleaseResult::not_held;
  }
  /// Releases now; never throws (failures go to the observer). Idempotent.
  void unlock() noexcept {
    try {
      (void)release();
    } catch (...) {  // reported to the observer
    }
  }

  /// The Lock this guard's acquisition belongs to; null when empty.
  [[nodiscard]] L* lock() const noexcept { return lock_; }

 private:
  Acquisition& checked() const {
    if (!held_) throw LockLostError("dlock: the guard is empty (not acquired or already released)", errc::not_held);
    return *held_;
  }
  L& checked_lock() const {
    (void)checked();
    return *lock_;
  }

  L* lock_ = nullptr;
  std::shared_ptr<Acquisition> held_;
};

}  // namespace dlock
