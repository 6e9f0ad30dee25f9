// Redlock between processes, over five real redis-servers: no livelock under
// contention: 8 processes x 200 lock/unlock cycles on one name finish well
// within a minute (handoffs/s printed). Mutual exclusion and tokens across
// processes: the conformance suite (MutualExclusionAndTokensAcrossProcesses).
#include <dlock/redlock.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <vector>

#include "redlock_test_support.hpp"

extern char** environ;

using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(5));

constexpr int workers = 8, cycles = 200;

class RedlockProcessTest : public RedlockTest {
 public:
  // Runs `workers` worker processes and returns the seconds they took.
  double run_workers(const std::string& name) {
    std::string ports;
    for (std::size_t i = 0; i < cluster().size(); ++i) ports += (i ? "," : "") + std::to_string(server(i).port());
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<pid_t> pids;
    for (int w = 0; w < workers; ++w) {
      std::vector<std::string> args{DLOCK_REDLOCK_WORKER, ports, prefix_, name, std::to_string(cycles)};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      pid_t pid = 0;
      EXPECT_EQ(posix_spawn(&pid, DLOCK_REDLOCK_WORKER, nullptr, nullptr, argv.data(), environ), 0);
      pids.push_back(pid);
    }
    for (pid_t pid : pids) {
      int status = 0;
      EXPECT_EQ(waitpid(pid, &status, 0), pid);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker " << pid << " status " << status;
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

TEST_F(RedlockProcessTest, ContendersDoNotLivelock) {
  const double seconds = run_workers("contended");
  std::printf("%d processes x %d cycles on one lock over 5 nodes: %.2f s, %.0f handoffs/s\n", workers, cycles, seconds,
              workers * cycles / seconds);
  EXPECT_LT(seconds, 30.0) << "contention over 5 nodes is too slow: split votes are not released promptly";
  EXPECT_EQ(keys_present("contended"), 0u);
}

}  // namespace
