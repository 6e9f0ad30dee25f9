#include <dlock/retry.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <random>
#include <set>
#include <vector>

using namespace std::chrono_literals;
using dlock::Jitter;
using dlock::RetryPolicy;
using us = std::chrono::microseconds;

TEST(RetryPolicy, BaseDelayGrowsGeometricallyAndSaturates) {
  RetryPolicy p{.initial_delay = 10ms, .max_delay = 100ms, .multiplier = 2.0};
  EXPECT_EQ(dlock::detail::base_delay(p, 0), us(10'000));
  EXPECT_EQ(dlock::detail::base_delay(p, 1), us(20'000));
  EXPECT_EQ(dlock::detail::base_delay(p, 3), us(80'000));
  EXPECT_EQ(dlock::detail::base_delay(p, 4), us(100'000));
  EXPECT_EQ(dlock::detail::base_delay(p, 1'000'000), us(100'000));  // no overflow, no long loop
}

TEST(RetryPolicy, MultiplierOneIsConstant) {
  RetryPolicy p{.initial_delay = 7ms, .max_delay = 100ms, .multiplier = 1.0};
  for (std::uint32_t k = 0; k < 20; ++k) EXPECT_EQ(dlock::detail::base_delay(p, k), us(7'000));
}

TEST(RetryPolicy, NoJitterIsTheBaseDelay) {
  RetryPolicy p{.initial_delay = 10ms, .max_delay = 1s, .multiplier = 3.0, .jitter = Jitter::none};
  std::mt19937_64 rng(1);
  EXPECT_EQ(dlock::detail::retry_delay(p, 0, us(0), rng), us(10'000));
  EXPECT_EQ(dlock::detail::retry_delay(p, 2, us(0), rng), us(90'000));
}

TEST(RetryPolicy, JitterStaysWithinItsBounds) {
  std::mt19937_64 rng(42);
  RetryPolicy full{.initial_delay = 10ms, .max_delay = 200ms, .jitter = Jitter::full};
  RetryPolicy equal{.initial_delay = 10ms, .max_delay = 200ms, .jitter = Jitter::equal};
  RetryPolicy decorrelated{.initial_delay = 10ms, .max_delay = 200ms, .jitter = Jitter::decorrelated};
  for (std::uint32_t k = 0; k < 12; ++k) {
    const us base = dlock::detail::base_delay(full, k);
    for (int i = 0; i < 200; ++i) {
      const us f = dlock::detail::retry_delay(full, k, us(0), rng);
      EXPECT_GE(f, us(0));
      EXPECT_LE(f, base);
      const us e = dlock::detail::retry_delay(equal, k, us(0), rng);
      EXPECT_GE(e, base / 2);
      EXPECT_LE(e, base);
    }
  }
  us prev{0};
  for (int i = 0; i < 2000; ++i) {
    const us d = dlock::detail::retry_delay(decorrelated, 0, prev, rng);
    EXPECT_GE(d, decorrelated.initial_delay);
    EXPECT_LE(d, std::min(decorrelated.max_delay, 3 * std::max(prev, decorrelated.initial_delay)));
    prev = d;
  }
}

TEST(RetryPolicy, BackoffTracksRetriesAndPreviousDelay) {
  RetryPolicy p{.initial_delay = 1ms, .max_delay = 8ms, .multiplier = 2.0, .jitter = Jitter::none};
  std::mt19937_64 rng(3);
  dlock::detail::Backoff backoff(p, rng);
  std::vector<us> seen;
  for (int i = 0; i < 6; ++i) seen.push_back(backoff.next());
  EXPECT_EQ(seen, (std::vector<us>{us(1000), us(2000), us(4000), us(8000), us(8000), us(8000)}));
  EXPECT_EQ(backoff.retries(), 6u);
}

// 1,000 contenders lose the same round at the same instant. With full jitter
// their next attempts spread over the whole window; without it they all come
// back together (a thundering herd).
TEST(RetryPolicy, FullJitterSpreadsContendersAcrossTheWindow) {
  constexpr int contenders = 1000;
  constexpr int buckets = 10;
  RetryPolicy p{.initial_delay = 100ms, .max_delay = 100ms, .jitter = Jitter::full};
  std::array<int, buckets> histogram{};
  std::set<us> distinct;
  for (int c = 0; c < contenders; ++c) {
    std::mt19937_64 rng(static_cast<std::uint64_t>(c) * 7919 + 1);  // each contender has its own generator
    const us d = dlock::detail::retry_delay(p, 0, us(0), rng);
    distinct.insert(d);
    ++histogram[static_cast<std::size_t>(std::min<std::int64_t>(d.count() * buckets / 100'000, buckets - 1))];
  }
  for (int n : histogram) {
    EXPECT_GT(n, contenders / buckets / 2) << "a 10 ms slice of the window is nearly empty";
    EXPECT_LT(n, contenders / buckets * 2) << "a 10 ms slice of the window is crowded";
  }
  EXPECT_GT(distinct.size(), 950u);

  RetryPolicy none = p;
  none.jitter = Jitter::none;
  std::set<us> herd;
  for (int c = 0; c < contenders; ++c) {
    std::mt19937_64 rng(static_cast<std::uint64_t>(c));
    herd.insert(dlock::detail::retry_delay(none, 0, us(0), rng));
  }
  EXPECT_EQ(herd.size(), 1u);
}

// A policy built outside LockOptions validation may use "forever" delays: the
// schedule saturates at max_delay instead of overflowing.
TEST(RetryPolicy, EndlessDelaysSaturate) {
  RetryPolicy p{.initial_delay = 1ms, .max_delay = us::max(), .multiplier = 2.0, .jitter = Jitter::none};
  EXPECT_EQ(dlock::detail::base_delay(p, 0), us(1'000));
  EXPECT_EQ(dlock::detail::base_delay(p, 200), us::max());
  p.jitter = Jitter::decorrelated;
  std::mt19937_64 rng(7);
  us longest{0};
  for (int i = 0; i < 100; ++i) {
    const us d = dlock::detail::retry_delay(p, 5, us::max() / 2, rng);
    EXPECT_GE(d, p.initial_delay);
    EXPECT_LE(d, p.max_delay);
    longest = std::max(longest, d);
  }
  EXPECT_GT(longest, us::max() / 4);  // drawn from [initial_delay, max_delay], not stuck at initial_delay
}
