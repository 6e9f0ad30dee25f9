// Redlock between processes, over five real redis-servers:
//  - mutual exclusion: 8 worker processes x 200 cycles increment a counter
//    kept in a file (read, pause, write: not atomic) inside the lock; the
//    final value must be exact, and the fencing tokens each worker appends
//    inside its critical section must be strictly increasing in that order;
//  - no livelock under contention: 8 processes x 200 lock/unlock cycles on
//    one name finish well within a minute (handoffs/s printed).
#include <dlock/redlock.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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
  void SetUp() override {
    RedlockTest::SetUp();
    char tmpl[] = "/tmp/dlock-redlock-process.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    RedlockTest::TearDown();
  }

  // Runs `workers` worker processes in `mode` and returns the seconds they took.
  double run_workers(const std::string& mode, const std::string& name) {
    std::string ports;
    for (std::size_t i = 0; i < cluster().size(); ++i) ports += (i ? "," : "") + std::to_string(server(i).port());
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<pid_t> pids;
    for (int w = 0; w < workers; ++w) {
      std::vector<std::string> args{DLOCK_REDLOCK_WORKER, mode, ports, prefix_, name, std::to_string(cycles), dir_};
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

  std::string dir_;
};

TEST_F(RedlockProcessTest, ProcessesExcludeEachOtherAndTokensIncreaseInAcquisitionOrder) {
  const double seconds = run_workers("file", "shared-counter");
  std::ifstream counter(dir_ + "/counter");
  long long n = -1;
  counter >> n;
  EXPECT_EQ(n, workers * cycles) << "lost updates: two processes were in the critical section together";
  std::ifstream tokens(dir_ + "/tokens");
  std::vector<std::uint64_t> seen;
  for (std::string line; std::getline(tokens, line);) seen.push_back(std::stoull(line));
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(workers * cycles));
  std::size_t violations = 0;
  for (std::size_t i = 1; i < seen.size(); ++i)
    if (seen[i] <= seen[i - 1]) ++violations;
  EXPECT_EQ(violations, 0u) << "fencing tokens not strictly increasing in acquisition order";
  std::printf("%d processes x %d cycles with a file counter: %.2f s (%.0f handoffs/s)\n", workers, cycles, seconds,
              workers * cycles / seconds);
  EXPECT_EQ(keys_present("shared-counter"), 0u);
}

TEST_F(RedlockProcessTest, ContendersDoNotLivelock) {
  const double seconds = run_workers("handoff", "contended");
  std::printf("%d processes x %d cycles on one lock over 5 nodes: %.2f s, %.0f handoffs/s\n", workers, cycles, seconds,
              workers * cycles / seconds);
  EXPECT_LT(seconds, 30.0) << "contention over 5 nodes is too slow: split votes are not released promptly";
  EXPECT_EQ(keys_present("contended"), 0u);
}

}  // namespace
