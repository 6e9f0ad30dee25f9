// Saturating time arithmetic: "forever" clamps instead of overflowing.
#include <chrono>
#include <cstdint>

#include <gtest/gtest.h>

#include "dlock/detail/time.hpp"

using namespace std::chrono_literals;
using dlock::detail::saturating_add;
using dlock::detail::saturating_ceil;
using dlock::detail::saturating_sub;
using TP = std::chrono::steady_clock::time_point;
using Dur = std::chrono::steady_clock::duration;

TEST(SaturatingTime, OrdinarySumsAreExact) {
  const TP t{std::chrono::seconds(1000)};
  EXPECT_EQ(saturating_add(t, 30s), t + 30s);
  EXPECT_EQ(saturating_add(t, -30s), t - 30s);
  EXPECT_EQ(saturating_add(t, 1500us), t + 1500us);
}

TEST(SaturatingTime, ForeverClampsToTheEndOfTheClock) {
  const TP now = std::chrono::steady_clock::now();
  EXPECT_EQ(saturating_add(now, std::chrono::milliseconds::max()), TP::max());
  EXPECT_EQ(saturating_add(now, std::chrono::hours::max()), TP::max());
  EXPECT_EQ(saturating_add(now, std::chrono::years(300)), TP::max());
  EXPECT_EQ(saturating_add(now, Dur::max()), TP::max());
  EXPECT_EQ(saturating_add(TP::max(), 1ns), TP::max());
  EXPECT_GT(saturating_add(now, std::chrono::years(100)), now);
}

TEST(SaturatingTime, PastClampsToTheStartOfTheClock) {
  EXPECT_EQ(saturating_add(TP::min(), -1ns), TP::min());
  EXPECT_EQ(saturating_add(TP{}, std::chrono::milliseconds::min()), TP::min());
}

TEST(SaturatingTime, CeilRoundsUpAndClamps) {
  EXPECT_EQ(saturating_ceil<std::chrono::milliseconds>(1500us), 2ms);
  EXPECT_EQ(saturating_ceil<std::chrono::milliseconds>(std::chrono::hours::max()), std::chrono::milliseconds::max());
  EXPECT_EQ(saturating_ceil<Dur>(std::chrono::milliseconds::max()), Dur::max());
  EXPECT_EQ(saturating_ceil<Dur>(std::chrono::duration<double>(1e300)), Dur::max());
  EXPECT_EQ(saturating_ceil<Dur>(std::chrono::milliseconds::min()), Dur::min());
}

TEST(SaturatingTime, DifferenceClamps) {
  EXPECT_EQ(saturating_sub(TP::max(), TP::min()), Dur::max());
  EXPECT_EQ(saturating_sub(TP::min(), TP::max()), Dur::min());
  EXPECT_EQ(saturating_sub(TP{5s}, TP{2s}), Dur(3s));
}
