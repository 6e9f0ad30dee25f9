// Test support: primitives across forked processes (pg_primitives_test,
// redis_primitives_process_test): counters in shared memory that the
// children update inside their critical sections, and fork/wait helpers.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <new>
#include <stdexcept>
#include <vector>

namespace dlock::test {

/// Counters in memory shared with forked children.
struct Shared {
  std::atomic<int> readers{0}, writers{0}, holders{0};
  std::atomic<int> max_readers{0}, max_holders{0}, violations{0}, done{0}, ready{0};
  std::atomic<long long> writes{0};
  std::atomic<std::uint64_t> max_term{0};
  std::atomic<int> rejected{0}, leaders{0}, lost_seen{0};
};

class SharedMemory {
 public:
  SharedMemory() {
    void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    s_ = new (p) Shared();
  }
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory() { ::munmap(s_, sizeof(Shared)); }
  Shared* operator->() const { return s_; }
  Shared& operator*() const { return *s_; }

 private:
  Shared* s_;
};

inline void raise_max(std::atomic<int>& max, int v) {
  int m = max.load();
  while (v > m && !max.compare_exchange_weak(m, v)) {
  }
}

/// Runs `body` in a forked child, which exits 0 if it returns normally.
inline pid_t spawn(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
      rc = 1;
    }
    ::_exit(rc);
  }
  return pid;
}

/// Forks `n` children, child i running body(i) as spawn() runs its body;
/// their pids, in order, for join().
inline std::vector<pid_t> spawn_n(int n, const std::function<void(int)>& body) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) pids.push_back(spawn([&body, i] { body(i); }));
  return pids;
}

/// Waits for every child; each must have exited 0.
inline void join(const std::vector<pid_t>& pids) {
  for (const pid_t p : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(p, &status, 0), p);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << p << " status " << status;
  }
}

}  // namespace dlock::test
