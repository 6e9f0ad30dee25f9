// Test support: a blocked acquire that only a release's publish can wake
// early. Its backoff is 5 s without jitter, so an acquire within a second or
// two of a release means the release's PUBLISH woke it (tests of force
// releases: redis_admin_test, dlockctl_integration_test).
#pragma once

#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace dlock::test {

/// Blocks (up to 20 s) on lock `name`; returns when it got it (then already
/// released again), or nullopt.
inline std::optional<std::chrono::steady_clock::time_point> acquire_after_release(RedisBackend& redis,
                                                                                  std::string_view name,
                                                                                  std::shared_ptr<Observer> observer) {
  using namespace std::chrono_literals;
  Lock<RedisBackend> lock(redis, std::string(name),
                          {.ttl = 30s,
                           .retry = {.initial_delay = 5s, .max_delay = 5s, .jitter = Jitter::none},
                           .observer = std::move(observer)});
  if (!lock.try_lock_for(20s)) return std::nullopt;
  const auto at = std::chrono::steady_clock::now();
  lock.unlock();
  return at;
}

}  // namespace dlock::test
