// Internal: saturating time arithmetic. Every deadline, validity and due time
// in dlock is computed here, so that "forever" (duration::max(), a TTL of
// centuries) clamps to the end of the clock instead of overflowing a signed
// integer (undefined behaviour, and in practice a time point in the past).
#pragma once

#include <chrono>
#include <limits>
#include <type_traits>

namespace dlock::detail {

/// `d` converted to `To`, rounded up (so a wait is never shortened to zero)
/// and clamped to To's range instead of overflowing.
template <class To, class Rep, class Period>
[[nodiscard]] constexpr To saturating_ceil(std::chrono::duration<Rep, Period> d) noexcept {
  using Wide = std::chrono::duration<long double, typename To::period>;  // range check only
  const long double wide =
      std::chrono::duration_cast<Wide>(std::chrono::duration<long double, Period>(d.count())).count();
  if (!(wide < static_cast<long double>(To::max().count()))) return To::max();  // also NaN
  if (wide <= static_cast<long double>(To::min().count())) return To::min();
  if constexpr (std::is_floating_point_v<Rep>) {
    return std::chrono::ceil<To>(std::chrono::duration<long double, Period>(d.count()));
  } else {
    return std::chrono::ceil<To>(d);
  }
}

/// t + d, clamped to [Clock::time_point::min(), Clock::time_point::max()].
template <class C, class D, class Rep, class Period>
[[nodiscard]] constexpr std::chrono::time_point<C, D> saturating_add(std::chrono::time_point<C, D> t,
                                                                     std::chrono::duration<Rep, Period> d) noexcept {
  using TP = std::chrono::time_point<C, D>;
  const D step = saturating_ceil<D>(d);
  const auto base = t.time_since_epoch().count();
  const auto delta = step.count();
  using R = typename D::rep;
  if (delta > 0 && base > std::numeric_limits<R>::max() - delta) return TP::max();
  if (delta < 0 && base < std::numeric_limits<R>::min() - delta) return TP::min();
  return t + step;
}

/// a - b for two time points, clamped to the duration's range.
template <class C, class D>
[[nodiscard]] constexpr D saturating_sub(std::chrono::time_point<C, D> a, std::chrono::time_point<C, D> b) noexcept {
  using R = typename D::rep;
  const R x = a.time_since_epoch().count();
  const R y = b.time_since_epoch().count();
  if (y < 0 && x > std::numeric_limits<R>::max() + y) return D::max();
  if (y > 0 && x < std::numeric_limits<R>::min() + y) return D::min();
  return D(x - y);
}

}  // namespace dlock::detail
