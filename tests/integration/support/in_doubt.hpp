// A check shared by the Redis and Redlock tests of issue 11 item 19: an
// acquire whose request reached the primary and got no answer is in doubt,
// so a FallbackBackend must throw TimeoutError instead of degrading.
#pragma once

#include <dlock/error.hpp>

#include <gtest/gtest.h>

#include <exception>
#include <string>

namespace dlock::test {

/// lock.try_lock() on a FallbackBackend whose primary got the request and does
/// not answer: expects a TimeoutError saying the outcome is unknown, and no lock.
template <class LockT>
void expect_in_doubt_not_degraded(LockT& lock) {
  try {
    const bool got = lock.try_lock();
    ADD_FAILURE() << "the fallback " << (got ? "granted" : "refused") << " a lock the primary may have granted";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("outcome is unknown"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected TimeoutError, got: " << e.what();
  }
  EXPECT_FALSE(lock.owns_lock());
}

}  // namespace dlock::test
