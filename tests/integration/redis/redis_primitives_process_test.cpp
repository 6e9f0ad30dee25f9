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
#include "support/primitive_scenarios.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::RedisBackend;
using dlock::Semaphore;
using dlock::test::eventually;
using dlock::test::join;
using dlock::test::SharedMemory;
using dlock::test::since;
using dlock::test::spawn;

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

class RedisPrimitivesProcess : public dlock::test::RedisTest {
 protected:
  static dlock::LockOptions quick(std::chrono::milliseconds ttl = 10s) {
    return {.ttl = ttl, .retry = {.initial_delay = 1ms, .max_delay = 50ms}};
  }
  // A backend per process, made in the child after fork().
  [[nodiscard]] auto make() const {
    return [o = options()] { return RedisBackend(o); };
  }
};

// 8 processes on 3 permits: never more than 3 holders.
TEST_F(RedisPrimitivesProcess, SemaphoreEightProcessesNeverExceedThreePermits) {
  dlock::test::semaphore_never_exceeds(make(), "sem", quick(), 8, 20, 3);
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
  dlock::test::election_one_leader_at_a_time(make(), "election", quick(), 4);
}

// A leader paused (SIGSTOP) past its TTL: its lease lapses (waiting for the TTL
// is the point), another candidate takes over with a higher term, and the
// paused one, once resumed, sees its stop token requested and its late write
// refused by the fenced resource.
TEST_F(RedisPrimitivesProcess, ElectionPausedLeaderLosesToHigherTerm) {
  auto next = quick();
  next.acquire_timeout = 10s;
  dlock::test::election_paused_leader_loses(make(), "paused", quick(1s), next);
}

// Readers overlap; a writer never overlaps a reader or another writer.
TEST_F(RedisPrimitivesProcess, RwLockWriterNeverOverlapsAnything) {
  dlock::test::rw_writers_exclude(make(), "rw", quick(), 4, 24, 2);
}

// A writer behind a continuous stream of overlapping readers (3 processes, each
// always reading) gets in within a bound: its waiting mark stops new readers.
TEST_F(RedisPrimitivesProcess, RwLockWriterBehindReaderStreamGetsIn) {
  dlock::test::rw_writer_behind_reader_stream(make(), "stream", quick());
}

}  // namespace
