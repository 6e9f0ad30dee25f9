// Test support: the primitives' multi-process scenarios shared by the
// backends' tests (pg_primitives_test, redis_primitives_process_test). Each
// forks children (support/forked.hpp) that make their own backend with
// `make()` (a callable returning the backend by value) and checks exclusion
// through counters in shared memory updated inside the critical sections.
#pragma once

#include <dlock/election.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "forked.hpp"
#include "unit/test_support.hpp"

namespace dlock::test {

inline std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

/// `procs` processes, each `cycles` times: a write (process < writers, every
/// third cycle) or a read. Readers overlap; a writer never overlaps anything.
template <class Make>
void rw_writers_exclude(Make make, const std::string& name, const LockOptions& o, int procs, int cycles, int writers) {
  SharedMemory sh;
  const std::vector<pid_t> kids = spawn_n(procs, [&](int p) {
    auto backend = make();
    RwLock<std::remove_cvref_t<decltype(backend)>> rw(backend, name, o);
    for (int i = 0; i < cycles; ++i) {
      if (p < writers && i % 3 == 0) {
        std::unique_lock w(rw);
        if (sh->writers.fetch_add(1) != 0 || sh->readers.load() != 0) sh->violations++;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the critical section's work
        sh->writers.fetch_sub(1);
      } else {
        std::shared_lock r(rw);
        raise_max(sh->max_readers, sh->readers.fetch_add(1) + 1);
        if (sh->writers.load() != 0) sh->violations++;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        sh->readers.fetch_sub(1);
      }
    }
  });
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_GT(sh->max_readers.load(), 1) << "readers never overlapped";
}

/// A writer (in this process) behind a continuous stream of overlapping
/// readers (3 processes, each always reading, 30 ms holds) gets in within 500 ms.
template <class Make>
void rw_writer_behind_reader_stream(Make make, const std::string& name, const LockOptions& o) {
  SharedMemory sh;
  const std::vector<pid_t> kids = spawn_n(3, [&](int) {
    auto backend = make();
    RwLock<std::remove_cvref_t<decltype(backend)>> rw(backend, name, o);
    sh->ready++;
    while (sh->done.load() == 0) {
      std::shared_lock r(rw);
      raise_max(sh->max_readers, sh->readers.fetch_add(1) + 1);
      if (sh->writers.load() != 0) sh->violations++;
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      sh->readers.fetch_sub(1);
    }
  });
  ASSERT_TRUE(
      eventually([&] { return sh->ready.load() == 3 && sh->max_readers.load() >= 2; }, std::chrono::seconds(10)));
  auto backend = make();
  RwLock<std::remove_cvref_t<decltype(backend)>> rw(backend, name, o);
  std::chrono::milliseconds worst{0};
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    {
      std::unique_lock w(rw);
      if (sh->readers.load() != 0) sh->violations++;
      sh->writers = 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      sh->writers = 0;
    }
    worst = std::max(worst, since(t0));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the readers back in
  }
  sh->done = 1;
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_LT(worst, std::chrono::milliseconds(500)) << "the writer waited " << worst.count() << " ms behind the readers";
  std::printf("writer behind 3 reader processes (30 ms holds): worst wait %lld ms\n",
              static_cast<long long>(worst.count()));
}

/// `procs` processes on `permits` permits, `cycles` each: never more holders.
template <class Make>
void semaphore_never_exceeds(Make make, const std::string& name, const LockOptions& o, int procs, int cycles,
                             int permits) {
  SharedMemory sh;
  const std::vector<pid_t> kids = spawn_n(procs, [&](int) {
    auto backend = make();
    Semaphore<std::remove_cvref_t<decltype(backend)>> sem(backend, name, static_cast<std::uint32_t>(permits), o);
    for (int i = 0; i < cycles; ++i) {
      auto permit = sem.acquire_permit();
      const int h = sh->holders.fetch_add(1) + 1;
      raise_max(sh->max_holders, h);
      if (h > permits) sh->violations++;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      sh->holders.fetch_sub(1);
    }
  });
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_LE(sh->max_holders.load(), permits);
  EXPECT_GE(sh->max_holders.load(), 2) << "the permits were never used together";
}

/// 3 candidates, `rounds` each: one leader at a time by the fenced resource's
/// account (a write carries the term; the resource refuses a term below the
/// largest it has seen); the info read by the leader is its own.
template <class Make>
void election_one_leader_at_a_time(Make make, const std::string& name, const LockOptions& o, int rounds) {
  SharedMemory sh;
  const std::vector<pid_t> kids = spawn_n(3, [&](int p) {
    auto backend = make();
    Election<std::remove_cvref_t<decltype(backend)>> e(backend, name, "candidate-" + std::to_string(p), o);
    for (int i = 0; i < rounds; ++i) {
      e.campaign();
      if (sh->leaders.fetch_add(1) != 0) sh->violations++;
      const std::uint64_t term = e.term();
      const auto seen = e.leader();
      if (!seen || seen->candidate != e.candidate() || seen->term != term) sh->violations++;
      for (int w = 0; w < 5; ++w) {
        std::uint64_t m = sh->max_term.load();
        while (term >= m && !sh->max_term.compare_exchange_weak(m, term)) {
        }
        if (term < m) sh->rejected++;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      sh->leaders.fetch_sub(1);
      (void)e.resign();
    }
  });
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_EQ(sh->rejected.load(), 0) << "a leader wrote with a term below an earlier leader's";
  auto backend = make();
  EXPECT_EQ(Election<std::remove_cvref_t<decltype(backend)>>(backend, name, "observer").leader(), std::nullopt);
}

/// A leader (a child with `leader_options`, whose ttl is short) paused
/// (SIGSTOP) past its ttl: another candidate (`next_options`, with an
/// acquire_timeout) takes over within 5 s with a higher term, and the paused
/// one, once resumed, sees its stop token requested and its late write
/// refused by the fenced resource.
template <class Make>
void election_paused_leader_loses(Make make, const std::string& name, const LockOptions& leader_options,
                                  const LockOptions& next_options) {
  SharedMemory sh;
  const pid_t kid = spawn([&] {
    auto backend = make();
    Election<std::remove_cvref_t<decltype(backend)>> e(backend, name, "paused", leader_options);
    e.campaign();
    const std::uint64_t term = e.term();
    sh->max_term = term;
    sh->ready = 1;
    const std::stop_token lost = e.stop_token();
    while (!lost.stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    sh->lost_seen = 1;
    if (term < sh->max_term.load()) sh->rejected++;  // the resource refuses its late write
    if (e.is_leader()) sh->violations++;
  });
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 1; }, std::chrono::seconds(10)));
  const std::uint64_t old_term = sh->max_term.load();
  ::kill(kid, SIGSTOP);
  auto backend = make();
  Election<std::remove_cvref_t<decltype(backend)>> next(backend, name, "next", next_options);
  const auto t0 = std::chrono::steady_clock::now();
  next.campaign();  // waits for the paused leader's ttl to pass (the point here)
  EXPECT_LT(since(t0), std::chrono::seconds(5));
  EXPECT_GT(next.term(), old_term);
  sh->max_term = next.term();
  ASSERT_EQ(next.leader()->candidate, "next");
  ::kill(kid, SIGCONT);
  int status = 0;
  ASSERT_EQ(::waitpid(kid, &status, 0), kid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(sh->lost_seen.load(), 1);
  EXPECT_EQ(sh->rejected.load(), 1);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_TRUE(next.is_leader());
  EXPECT_EQ(next.resign(), ReleaseResult::released);
}

}  // namespace dlock::test
