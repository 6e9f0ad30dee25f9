// dlock/retry.hpp: how a blocking acquire spaces its attempts.
//
// A RetryPolicy describes capped exponential backoff with jitter. The delay
// before retry k (0-based) is drawn from the schedule below; the front end
// additionally caps every wait by the holder's remaining TTL (when the backend
// reports it) and by the caller's deadline, and a release notification from
// the backend cuts the wait short.
//
//   base(k)       = min(max_delay, initial_delay * multiplier^k)
//   Jitter::none  = base(k)
//   Jitter::full  = uniform[0, base(k)]                       (the default)
//   Jitter::equal = base(k)/2 + uniform[0, base(k)/2]
//   Jitter::decorrelated = min(max_delay, uniform[initial_delay, 3 * previous])
//
// Full jitter is the default because it spreads contenders that lost the same
// round across the whole window, which is what prevents a thundering herd.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <random>

namespace dlock {

enum class Jitter { full, equal, decorrelated, none };

struct RetryPolicy {
  /// Base delay before the first retry.
  std::chrono::microseconds initial_delay{std::chrono::milliseconds(10)};
  /// Upper bound of any single delay.
  std::chrono::microseconds max_delay{std::chrono::milliseconds(500)};
  /// Growth of the base delay per retry; >= 1.
  double multiplier = 2.0;
  /// How the delay is randomised; see the table above.
  Jitter jitter = Jitter::full;
  /// Attempts before a blocking acquire gives up (0: until the deadline, if any).
  std::uint32_t max_attempts = 0;
};

namespace detail {

/// base(k) of the table above, saturating at max_delay.
[[nodiscard]] inline std::chrono::microseconds base_delay(const RetryPolicy& p, std::uint32_t retry) noexcept {
  const double max = static_cast<double>(p.max_delay.count());
  double d = static_cast<double>(p.initial_delay.count());
  for (std::uint32_t i = 0; i < retry && d < max; ++i) d *= p.multiplier;
  if (!(d < max)) return p.max_delay;  // also when max is 2^63, which no int64 holds
  return std::chrono::microseconds(static_cast<std::int64_t>(d));
}

/// The delay before retry `retry` (0-based). `previous` is the delay this
/// function returned for the retry before (ignored except by decorrelated
/// jitter; pass zero for the first retry).
template <class URBG>
[[nodiscard]] std::chrono::microseconds retry_delay(const RetryPolicy& p, std::uint32_t retry,
                                                    std::chrono::microseconds previous, URBG& rng) {
  using us = std::chrono::microseconds;
  auto uniform = [&rng](std::int64_t lo, std::int64_t hi) {
    return us(hi <= lo ? lo : std::uniform_int_distribution<std::int64_t>(lo, hi)(rng));
  };
  const us base = base_delay(p, retry);
  switch (p.jitter) {
    case Jitter::none:
      return base;
    case Jitter::full:
      return uniform(0, base.count());
    case Jitter::equal:
      return base / 2 + uniform(0, base.count() - base.count() / 2);
    case Jitter::decorrelated: {
      const us prev = std::max(previous, p.initial_delay);
      const std::int64_t limit = std::numeric_limits<std::int64_t>::max() / 3;
      const std::int64_t hi = prev.count() > limit ? std::numeric_limits<std::int64_t>::max() : 3 * prev.count();
      return std::min(p.max_delay, uniform(p.initial_delay.count(), hi));
    }
  }
  return base;
}

/// The retry schedule of one blocking acquire: the policy, how many retries
/// were made, and the previous delay.
template <class URBG>
class Backoff {
 public:
  Backoff(const RetryPolicy& policy, URBG& rng) : policy_(policy), rng_(rng) {}

  [[nodiscard]] std::chrono::microseconds next() {
    previous_ = retry_delay(policy_, retries_++, previous_, rng_);
    return previous_;
  }
  /// The next delay as if the retries had reached max_delay (the policy's
  /// jitter applied to max_delay); counts as a retry.
  [[nodiscard]] std::chrono::microseconds next_at_cap() {
    RetryPolicy capped = policy_;
    capped.initial_delay = capped.max_delay;
    previous_ = retry_delay(capped, retries_++, previous_, rng_);
    return previous_;
  }
  [[nodiscard]] std::uint32_t retries() const noexcept { return retries_; }

 private:
  const RetryPolicy& policy_;
  URBG& rng_;
  std::uint32_t retries_ = 0;
  std::chrono::microseconds previous_{0};
};

}  // namespace detail
}  // namespace dlock
