// Mutual exclusion and fencing between processes: 8 worker processes x 300
// cycles increment a counter in Redis with a non-atomic GET then SET inside
// the lock. The final value must be exact, and the fencing tokens recorded
// inside the critical sections (RPUSH, so in acquisition order) must be
// strictly increasing.
#include <dlock/redis.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <vector>

#include "redis_test_support.hpp"

extern char** environ;

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
  const std::string cycles_text = std::to_string(cycles);
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    std::vector<std::string> args{DLOCK_REDIS_WORKER, uri, prefix_, "shared-counter", cycles_text};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    ASSERT_EQ(posix_spawn(&pid, DLOCK_REDIS_WORKER, nullptr, nullptr, argv.data(), environ), 0);
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker " << pid << " status " << status;
  }
  EXPECT_EQ(cmd({"GET", prefix_ + "counter"}).str, std::to_string(workers * cycles));
  const auto list = cmd({"LRANGE", prefix_ + "tokens", "0", "-1"});
  ASSERT_EQ(list.elements.size(), static_cast<std::size_t>(workers * cycles));
  std::uint64_t last = 0;
  std::size_t violations = 0;
  for (const auto& e : list.elements) {
    const std::uint64_t t = std::stoull(e.str);
    if (t <= last) ++violations;
    last = t;
  }
  EXPECT_EQ(violations, 0u) << "fencing tokens not strictly increasing in acquisition order";
}

}  // namespace
