// RwLock, Semaphore and Election on RedisBackend across forked processes (a
// real redis-server; the pattern of pg_primitives_test): exclusion checked
// through counters in shared memory that the children update inside their
// critical sections, a SIGKILLed holder's permit coming back after its TTL, a
// permit count raised live, and a leader paused (SIGSTOP) past its TTL
// losing to a higher term. Each child makes its own RedisBackend after fork().
#include <dlock/election.hpp>
#include <dlock/redis.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "support/forked.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Election;
using dlock::RedisBackend;
using dlock::RwLock;
using dlock::Semaphore;
using dlock::test::eventually;
using dlock::test::join;
using dlock::test::raise_max;
using dlock::test::SharedMemory;
using dlock::test::spawn;

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

std::chrono::milliseconds since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

class RedisPrimitivesProcess : public dlock::test::RedisTest {
 protected:
  static dlock::LockOptions quick(std::chrono::milliseconds ttl = 10s) {
    return {.ttl = ttl, .retry = {.initial_delay = 1ms, .max_delay = 50ms}};
  }
};

// 8 processes on 3 permits: never more than 3 holders.
TEST_F(RedisPrimitivesProcess, SemaphoreEightProcessesNeverExceedThreePermits) {
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 8; ++p) {
    kids.push_back(spawn([&] {
      RedisBackend redis(options());
      Semaphore<RedisBackend> sem(redis, "sem", 3, quick());
      for (int i = 0; i < 20; ++i) {
        auto permit = sem.acquire_permit();
        const int h = sh->holders.fetch_add(1) + 1;
        raise_max(sh->max_holders, h);
        if (h > 3) sh->violations++;
        std::this_thread::sleep_for(2ms);  // the critical section's work
        sh->holders.fetch_sub(1);
      }
    }));
  }
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_LE(sh->max_holders.load(), 3);
  EXPECT_GE(sh->max_holders.load(), 2) << "the permits were never used together";
}

// A SIGKILLed holder's permit is no longer extended and comes back after its
// TTL (waiting for the TTL is the point here); while the holder lived, its
// heartbeat kept the permit past the TTL.
TEST_F(RedisPrimitivesProcess, SemaphoreKilledHoldersPermitReturnsAfterItsTtl) {
  SharedMemory sh;
  const pid_t kid = spawn([&] {
    RedisBackend redis(options());
    auto o = quick(1s);
    o.auto_extend = true;
    Semaphore<RedisBackend> sem(redis, "killed", 1, o);
    sem.acquire();
    sh->ready = 1;
    for (;;) std::this_thread::sleep_for(1s);
  });
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 1; }, 10s));
  Semaphore<RedisBackend> sem(redis(), "killed", 1, quick());
  EXPECT_FALSE(sem.try_acquire_for(1500ms)) << "the live holder's permit lapsed";
  ::kill(kid, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(kid, &status, 0), kid);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(sem.try_acquire_for(10s));
  EXPECT_LT(since(t0), 2500ms) << "the permit came back long after the ttl";
  sem.release();
}

// Raising the count lets a waiting process in at once (set_permits wakes it);
// lowering it revokes nothing.
TEST_F(RedisPrimitivesProcess, SemaphoreCountChangedLive) {
  SharedMemory sh;
  Semaphore<RedisBackend> sem(redis(), "live", 1, quick());
  ASSERT_TRUE(sem.try_acquire());
  const pid_t kid = spawn([&] {
    RedisBackend redis(options());
    // A slow retry: only the wake-up of set_permits gets it in quickly.
    Semaphore<RedisBackend> other(redis, "live", 1, {.ttl = 10s, .retry = {.initial_delay = 5s, .max_delay = 5s}});
    sh->ready = 1;
    other.acquire();
    sh->holders = 1;
    while (sh->done.load() == 0) std::this_thread::sleep_for(2ms);
    other.release();
  });
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 1; }, 10s));
  EXPECT_FALSE(eventually([&] { return sh->holders.load() == 1; }, 200ms)) << "two holders on one permit";
  const auto t0 = std::chrono::steady_clock::now();
  sem.set_permits(2);
  EXPECT_TRUE(eventually([&] { return sh->holders.load() == 1; }, 4s));
  EXPECT_LT(since(t0), 2s) << "the waiter was not woken by the raised count";
  sem.set_permits(1);  // two held: none revoked, none granted
  EXPECT_EQ(sem.permits(), 1u);
  Semaphore<RedisBackend> third(redis(), "live", 1, quick());
  EXPECT_FALSE(third.try_acquire());
  sh->done = 1;
  join({kid});
  sem.release();
  EXPECT_TRUE(third.try_acquire());
  third.release();
  sem.set_permits(std::nullopt);
}

// 3 candidates: exactly one leader at any time by the fenced resource's
// account (a write carries the term; the resource refuses a term below the
// largest it has seen); terms increase.
TEST_F(RedisPrimitivesProcess, ElectionOneLeaderAtATime) {
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 3; ++p) {
    kids.push_back(spawn([&, p] {
      RedisBackend redis(options());
      Election<RedisBackend> e(redis, "election", "candidate-" + std::to_string(p), quick());
      for (int i = 0; i < 4; ++i) {
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
          std::this_thread::sleep_for(1ms);
        }
        sh->leaders.fetch_sub(1);
        (void)e.resign();
      }
    }));
  }
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_EQ(sh->rejected.load(), 0) << "a leader wrote with a term below an earlier leader's";
  EXPECT_EQ(Election<RedisBackend>(redis(), "election", "observer").leader(), std::nullopt);
}

// A leader paused (SIGSTOP) past its TTL: its lease lapses (waiting for the TTL
// is the point), another candidate takes over with a higher term, and the
// paused one, once resumed, sees its stop token requested and its late write
// refused by the fenced resource.
TEST_F(RedisPrimitivesProcess, ElectionPausedLeaderLosesToHigherTerm) {
  SharedMemory sh;
  const pid_t kid = spawn([&] {
    RedisBackend redis(options());
    Election<RedisBackend> e(redis, "paused", "paused", quick(1s));
    e.campaign();
    const std::uint64_t term = e.term();
    sh->max_term = term;
    sh->ready = 1;
    const std::stop_token lost = e.stop_token();
    while (!lost.stop_requested()) std::this_thread::sleep_for(5ms);
    sh->lost_seen = 1;
    if (term < sh->max_term.load()) sh->rejected++;  // the resource refuses its late write
    if (e.is_leader()) sh->violations++;
  });
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 1; }, 10s));
  const std::uint64_t old_term = sh->max_term.load();
  ::kill(kid, SIGSTOP);
  auto o = quick();
  o.acquire_timeout = 10s;
  Election<RedisBackend> next(redis(), "paused", "next", o);
  const auto t0 = std::chrono::steady_clock::now();
  next.campaign();
  EXPECT_LT(since(t0), 5s);
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
  EXPECT_EQ(next.resign(), dlock::ReleaseResult::released);
}

// Readers overlap; a writer never overlaps a reader or another writer.
TEST_F(RedisPrimitivesProcess, RwLockWriterNeverOverlapsAnything) {
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p) {
    kids.push_back(spawn([&, p] {
      RedisBackend redis(options());
      RwLock<RedisBackend> rw(redis, "rw", quick());
      for (int i = 0; i < 24; ++i) {
        if (p < 2 && i % 3 == 0) {  // two writers among readers
          std::unique_lock w(rw);
          if (sh->writers.fetch_add(1) != 0 || sh->readers.load() != 0) sh->violations++;
          std::this_thread::sleep_for(1ms);
          sh->writers.fetch_sub(1);
        } else {
          std::shared_lock r(rw);
          raise_max(sh->max_readers, sh->readers.fetch_add(1) + 1);
          if (sh->writers.load() != 0) sh->violations++;
          std::this_thread::sleep_for(2ms);
          sh->readers.fetch_sub(1);
        }
      }
    }));
  }
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_GT(sh->max_readers.load(), 1) << "readers never overlapped";
}

// A writer behind a continuous stream of overlapping readers (3 processes, each
// always reading) gets in within a bound: its waiting mark stops new readers.
TEST_F(RedisPrimitivesProcess, RwLockWriterBehindReaderStreamGetsIn) {
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 3; ++p) {
    kids.push_back(spawn([&] {
      RedisBackend redis(options());
      RwLock<RedisBackend> rw(redis, "stream", quick());
      sh->ready++;
      while (sh->done.load() == 0) {
        std::shared_lock r(rw);
        raise_max(sh->max_readers, sh->readers.fetch_add(1) + 1);
        if (sh->writers.load() != 0) sh->violations++;
        std::this_thread::sleep_for(30ms);
        sh->readers.fetch_sub(1);
      }
    }));
  }
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 3 && sh->max_readers.load() >= 2; }, 10s));
  RwLock<RedisBackend> rw(redis(), "stream", quick());
  std::chrono::milliseconds worst{0};
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    {
      std::unique_lock w(rw);
      if (sh->readers.load() != 0) sh->violations++;
      sh->writers = 1;
      std::this_thread::sleep_for(2ms);
      sh->writers = 0;
    }
    worst = std::max(worst, since(t0));
    std::this_thread::sleep_for(20ms);  // let the readers back in
  }
  sh->done = 1;
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_LT(worst, 500ms) << "the writer waited " << worst.count() << " ms behind the readers";
  std::printf("writer behind 3 reader processes (30 ms holds): worst wait %lld ms\n",
              static_cast<long long>(worst.count()));
}

}  // namespace
