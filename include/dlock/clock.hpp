// dlock/clock.hpp: the monotonic clock that decides lock validity, made injectable.
//
// Lock validity, deadlines and TTL arithmetic use std::chrono::steady_clock,
// never the wall clock, so a wall-clock jump cannot shorten or stretch a lock.
// Tests substitute a ManualClock through LockOptions::clock and the in-process
// backend's constructor. Blocking waits always sleep in real time; a manual
// clock only changes what "now" means when validity and deadlines are checked.
#pragma once

#include <atomic>
#include <chrono>

namespace dlock {

class Clock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  using duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  [[nodiscard]] virtual time_point now() const noexcept = 0;
};

/// std::chrono::steady_clock behind the Clock interface; the default everywhere.
[[nodiscard]] inline const Clock& steady_clock() noexcept {
  struct Steady final : Clock {
    [[nodiscard]] time_point now() const noexcept override { return std::chrono::steady_clock::now(); }
  };
  static const Steady instance;
  return instance;
}

/// A clock that moves only when told to. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(time_point start = std::chrono::steady_clock::now()) noexcept
      : ticks_(start.time_since_epoch().count()) {}

  [[nodiscard]] time_point now() const noexcept override {
    return time_point(duration(ticks_.load(std::memory_order_acquire)));
  }
  void advance(duration d) noexcept { ticks_.fetch_add(d.count(), std::memory_order_acq_rel); }

 private:
  std::atomic<duration::rep> ticks_;
};

}  // namespace dlock
