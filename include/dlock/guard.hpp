// dlock/guard.hpp: Guard, the move-only RAII owner of one acquisition.
//
// A Guard is returned by Lock::acquire() (always engaged) and by
// Lock::try_acquire*() (empty on contention; test it with `if (g)`). Its
// destructor releases the lock. The destructor never throws: a release that
// fails, or finds the lock already expired or taken, is reported through the
// lock's Observer (by default a line on stderr), never swallowed. Call
// release() yourself when you want to handle that outcome as a value or an
// exception instead.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <stop_token>
#include <string_view>
#include <utility>

#include "backend.hpp"

namespace dlock {

template <class L>
class [[nodiscard]] Guard {
 public:
  Guard() noexcept = default;
  /// Takes over an acquisition already made on `lock`.
  Guard(L& lock, std::adopt_lock_t) noexcept : lock_(&lock) {}

  Guard(Guard&& other) noexcept : lock_(std::exchange(other.lock_, nullptr)) {}
  Guard& operator=(Guard&& other) noexcept {
    if (this != &other) {
      unlock();
      lock_ = std::exchange(other.lock_, nullptr);
    }
    return *this;
  }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  ~Guard() { unlock(); }

  /// True if this guard owns an acquisition (it may since have been lost;
  /// owns_lock() tells whether it is still valid).
  explicit operator bool() const noexcept { return lock_ != nullptr; }
  /// True while the acquisition is held and within its validity.
  [[nodiscard]] bool owns_lock() const noexcept { return lock_ && lock_->owns_lock(); }

  /// See Lock::fencing_token(); throws LockLostError when empty or lost.
  [[nodiscard]] std::uint64_t fencing_token() const { return checked().fencing_token(); }
  [[nodiscard]] std::string_view owner_id() const noexcept { return lock_ ? lock_->owner_id() : std::string_view{}; }
  [[nodiscard]] TimePoint valid_until() const noexcept { return lock_ ? lock_->valid_until() : TimePoint{}; }
  /// See Lock::extend().
  void extend(std::chrono::milliseconds ttl) { checked().extend(ttl); }
  void extend() { checked().extend(); }
  /// See Lock::stop_token(); an empty guard gives a token that is never requested.
  [[nodiscard]] std::stop_token stop_token() const { return lock_ ? lock_->stop_token() : std::stop_token{}; }
  /// See Lock::on_lost().
  template <class F>
  void on_lost(F&& callback) {
    checked().on_lost(std::forward<F>(callback));
  }

  /// Releases now and reports the outcome; throws what Lock::release() throws.
  /// The guard is empty afterwards, even when it throws.
  ReleaseResult release() {
    L* l = std::exchange(lock_, nullptr);
    return l ? l->release() : ReleaseResult::not_held;
  }
  /// Releases now; never throws (failures go to the observer). Idempotent.
  void unlock() noexcept {
    if (L* l = std::exchange(lock_, nullptr)) l->unlock();
  }

  [[nodiscard]] L* lock() const noexcept { return lock_; }

 private:
  L& checked() const {
    if (!lock_) throw LockLostError("dlock: the guard is empty (not acquired or already released)", errc::not_held);
    return *lock_;
  }
  L* lock_ = nullptr;
};

}  // namespace dlock
