// Internal: how durations appear in messages ("250ms", "30s", "1500us").
#pragma once

#include <chrono>
#include <cstdint>
#include <ratio>
#include <string>
#include <type_traits>

#include <fmt/format.h>

namespace dlock::detail {

/// The duration in the largest unit that shows it exactly. Durations beyond
/// the range of nanoseconds (such as milliseconds::max()) keep their own unit.
template <class Rep, class Period>
[[nodiscard]] std::string format_duration(std::chrono::duration<Rep, Period> d) {
  using D = std::chrono::duration<Rep, Period>;
  if constexpr (std::ratio_greater_equal_v<Period, std::nano>) {
    if (d > std::chrono::duration_cast<D>(std::chrono::nanoseconds::max()) ||
        d < std::chrono::duration_cast<D>(std::chrono::nanoseconds::min())) {
      if constexpr (std::is_same_v<Period, std::milli>) return fmt::format("{}ms", d.count());
      if constexpr (std::is_same_v<Period, std::micro>) return fmt::format("{}us", d.count());
      return fmt::format("{:.0f}s", std::chrono::duration<long double>(d).count());
    }
  }
  const std::int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  if (ns % 1'000'000'000 == 0) return fmt::format("{}s", ns / 1'000'000'000);
  if (ns % 1'000'000 == 0) return fmt::format("{}ms", ns / 1'000'000);
  if (ns % 1'000 == 0) return fmt::format("{}us", ns / 1'000);
  return fmt::format("{}ns", ns);
}

}  // namespace dlock::detail
