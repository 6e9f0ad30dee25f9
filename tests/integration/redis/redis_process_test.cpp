// Mutual exclusion and fencing between processes: 8 worker processes x 300
// cycles increment a counter in Redis with a non-atomic GET then SET inside
// the lock. The final value must be exact, and the fencing tokens recorded
// inside the critical sections (RPUSH, so in acquisition order) must be
// strictly increasing.
#include <dlock/redis.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "redis_test_support.hpp"

using dlock::test::RedisTest;
using dlock::test::SharedRedis;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

std::string uri_of(const dlock::RedisOptions& o) {
  std::string auth;
  if (!o.password.empty()) auth = o.username + ":" + o.password + "@";
  return fmt::format("redis://{}{}:{}/{}", auth, o.host, o.port, o.database);
}

TEST_F(RedisTest, ProcessesExcludeEachOtherAndTokensIncreaseInAcquisitionOrder) {
  constexpr int workers = 8, cycles = 300;
  const std::string uri = uri_of(options());
  dlock::test::expect_workers_exclude_each_other(DLOCK_REDIS_WORKER,
                                                 {uri, prefix_, "shared-counter", std::to_string(cycles)}, workers,
                                                 cycles, redis().node(), prefix_);
}

}  // namespace
