// Validation happens once, in Lock's constructor, with a message that names
// the field and the value.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <string>

using namespace std::chrono_literals;
using dlock::LockOptions;

namespace {

std::string error_of(const std::string& name, const LockOptions& options) {
  dlock::MemoryBackend mem;
  try {
    dlock::Lock<dlock::MemoryBackend> lock(mem, name, options);
  } catch (const dlock::InvalidArgument& e) {
    EXPECT_EQ(e.code(), dlock::errc::invalid_argument);
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(Validation, EmptyName) { EXPECT_EQ(error_of("", {}), "dlock: lock name must not be empty (got \"\")"); }

TEST(Validation, NameLongerThan1024Bytes) {
  EXPECT_EQ(error_of(std::string(1025, 'x'), {}), "dlock: lock name must be at most 1024 bytes (got 1025 bytes)");
  EXPECT_EQ(error_of(std::string(1024, 'x'), {}), "no error");
}

TEST(Validation, TtlMustBePositive) {
  EXPECT_EQ(error_of("n", {.ttl = 0ms}), "dlock: LockOptions.ttl must be positive (got 0s)");
  EXPECT_EQ(error_of("n", {.ttl = -5ms}), "dlock: LockOptions.ttl must be positive (got -5ms)");
}

TEST(Validation, DelaysMustBePositive) {
  EXPECT_EQ(error_of("n", {.retry = {.initial_delay = 0ms}}),
            "dlock: LockOptions.retry.initial_delay must be positive (got 0s)");
  EXPECT_EQ(error_of("n", {.retry = {.initial_delay = -1ms}}),
            "dlock: LockOptions.retry.initial_delay must be positive (got -1ms)");
  EXPECT_EQ(error_of("n", {.retry = {.max_delay = 0ms}}),
            "dlock: LockOptions.retry.max_delay must be positive (got 0s)");
}

TEST(Validation, MaxDelayBelowInitialDelay) {
  EXPECT_EQ(error_of("n", {.retry = {.initial_delay = 50ms, .max_delay = 10ms}}),
            "dlock: LockOptions.retry.max_delay must be >= initial_delay (50ms) (got 10ms)");
}

TEST(Validation, MultiplierBelowOne) {
  EXPECT_EQ(error_of("n", {.retry = {.multiplier = 0.5}}),
            "dlock: LockOptions.retry.multiplier must be >= 1 (got 0.5)");
  EXPECT_NE(error_of("n", {.retry = {.multiplier = std::nan("")}}), "no error");
}

TEST(Validation, NegativeAcquireTimeout) {
  EXPECT_EQ(error_of("n", {.acquire_timeout = -1ms}),
            "dlock: LockOptions.acquire_timeout must not be negative (got -1ms)");
}

TEST(Validation, DefaultsAreValid) {
  EXPECT_EQ(error_of("orders:42", {}), "no error");
  EXPECT_EQ(error_of("n", {.ttl = 10s,
                           .retry = {.initial_delay = 1ms, .max_delay = 1ms, .multiplier = 1.0},
                           .acquire_timeout = 0ms}),
            "no error");
}

TEST(Validation, ExtendTtlMustBePositive) {
  dlock::MemoryBackend mem;
  dlock::Lock<dlock::MemoryBackend> lock(mem, "n");
  lock.lock();
  EXPECT_THROW(lock.extend(0ms), dlock::InvalidArgument);
  EXPECT_TRUE(lock.owns_lock());
}

TEST(Validation, AutoExtendFields) {
  EXPECT_EQ(error_of("n", {.ttl = 3s, .extend_interval = 3s}),
            "dlock: LockOptions.extend_interval must be positive and below ttl (3s) (got 3s)");
  EXPECT_EQ(error_of("n", {.ttl = 3s, .extend_interval = 0ms}),
            "dlock: LockOptions.extend_interval must be positive and below ttl (3s) (got 0s)");
  EXPECT_EQ(error_of("n", {.max_hold = -1s}), "dlock: LockOptions.max_hold must be positive (got -1s)");
  EXPECT_EQ(error_of("n", {.long_held = 0ms}), "dlock: LockOptions.long_held must be positive (got 0s)");
  EXPECT_EQ(error_of("n", {.ttl = 3s, .auto_extend = true, .extend_interval = 1s, .max_hold = 1h}), "no error");
}

TEST(Validation, TtlHasAnUpperBound) {
  const auto limit = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::days(365));
  EXPECT_EQ(error_of("n", {.ttl = limit}), "no error");
  EXPECT_EQ(error_of("n", {.ttl = limit + 1ms}),
            "dlock: LockOptions.ttl must be at most dlock::max_ttl (365 days) (got 31536000001ms)");
  EXPECT_EQ(error_of("n", {.ttl = std::chrono::milliseconds::max()}),
            "dlock: LockOptions.ttl must be at most dlock::max_ttl (365 days) (got 9223372036854775807ms)");
  EXPECT_NE(error_of("n", {.retry = {.max_delay = std::chrono::microseconds::max()}}), "no error");
}

TEST(Validation, ExtendTtlHasTheSameUpperBound) {
  dlock::MemoryBackend mem;
  dlock::Lock<dlock::MemoryBackend> lock(mem, "n");
  auto g = lock.acquire();
  try {
    lock.extend(std::chrono::milliseconds::max());
    FAIL() << "extend accepted an endless ttl";
  } catch (const dlock::InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()),
              "dlock: extend ttl must be at most dlock::max_ttl (365 days) (got 9223372036854775807ms)");
  }
  EXPECT_THROW(g.extend(std::chrono::hours(24 * 366)), dlock::InvalidArgument);
  EXPECT_TRUE(lock.owns_lock());
  lock.extend(std::chrono::hours(24 * 365));
  EXPECT_TRUE(lock.owns_lock());
}
