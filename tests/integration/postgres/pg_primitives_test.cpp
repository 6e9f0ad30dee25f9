// RwLock, Semaphore and Election on a real PostgreSQL server, across forked
// processes: mutual exclusion checked through counters in shared memory,
// writer preference from the server's lock queue, permits of a killed holder,
// a live count change, and a leader paused past its ttl losing to a later term.
#include <dlock/election.hpp>
#include <dlock/postgres.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "pg_test_support.hpp"
#include "support/forked.hpp"
#include "support/primitive_scenarios.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Election;
using dlock::PostgresBackend;
using dlock::PostgresOptions;
using dlock::RwLock;
using dlock::Semaphore;
using dlock::test::eventually;
using dlock::test::SharedMemory;
using dlock::test::spawn;
using dlock::test::pg::options;
using dlock::test::pg::RawConn;
using dlock::test::pg::test_name;

class PgPrimitives : public ::testing::Test {
 protected:
  void SetUp() override {
    (void)dlock::test::pg::conninfo();  // the server starts in the parent, before any fork
    PostgresBackend(options()).install_schema();
    name_ = "prims:" + test_name();
  }
  std::string name_;
};

// Readers overlap; a writer never overlaps a reader or another writer.
TEST_F(PgPrimitives, RwLockReadersOverlapAndWritersExclude) {
  dlock::test::rw_writers_exclude([] { return PostgresBackend(options({.pool_size = 4})); }, name_, {.ttl = 10s}, 4, 18,
                                  1);
}

// PostgreSQL's lock manager refuses a new shared request while an exclusive
// one waits in its queue: a blocked writer stops new readers (writer preference).
TEST_F(PgPrimitives, RwLockWaitingWriterStopsNewReaders) {
  PostgresBackend pg(options());
  RwLock<PostgresBackend> first(pg, name_, {.ttl = 10s}), writer(pg, name_, {.ttl = 10s}),
      later(pg, name_, {.ttl = 10s});
  first.lock_shared();
  EXPECT_TRUE(later.try_lock_shared()) << "readers share";
  later.unlock_shared();
  std::atomic<bool> written{false};
  std::thread w([&] {
    writer.lock();
    written = true;
    writer.unlock();
  });
  RawConn raw(dlock::test::pg::conninfo());
  const std::string key = std::to_string(pg.primitive_key(name_, dlock::detail::PgPrimitive::rw));
  ASSERT_TRUE(eventually(
      [&] {
        return raw.exec(
                   "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 2 "
                   "AND ((classid::int8 << 32) | objid::int8) = $1::int8",
                   {key}) == "1";
      },
      5s));
  EXPECT_FALSE(later.try_lock_shared()) << "a new reader entered past a waiting writer";
  EXPECT_FALSE(written.load());
  first.unlock_shared();
  w.join();
  EXPECT_TRUE(written.load());
  EXPECT_TRUE(later.try_lock_shared());
  later.unlock_shared();
}

// A writer behind a continuous stream of overlapping readers gets in within a bound.
TEST_F(PgPrimitives, RwLockWriterBehindReaderStreamGetsIn) {
  dlock::test::rw_writer_behind_reader_stream([] { return PostgresBackend(options({.pool_size = 2})); }, name_,
                                              {.ttl = 10s});
}

// 8 processes on 3 permits: never more than 3 holders.
TEST_F(PgPrimitives, SemaphoreNeverExceedsPermits) {
  dlock::test::semaphore_never_exceeds([] { return PostgresBackend(options({.pool_size = 2})); }, name_, {.ttl = 10s},
                                       8, 15, 3);
}

// A SIGKILLed holder's session ends with it, and its permit comes back at once.
TEST_F(PgPrimitives, SemaphoreKilledHoldersPermitReturns) {
  SharedMemory sh;
  const pid_t kid = spawn([&] {
    PostgresBackend pg(options());
    Semaphore<PostgresBackend> sem(pg, name_, 1, {.ttl = 30s});
    sem.acquire();
    sh->ready = 1;
    for (;;) std::this_thread::sleep_for(1s);
  });
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 1; }, 10s));
  PostgresBackend pg(options());
  Semaphore<PostgresBackend> sem(pg, name_, 1, {.ttl = 30s});
  EXPECT_FALSE(sem.try_acquire());
  ::kill(kid, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(kid, &status, 0), kid);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(sem.try_acquire_for(5s));
  EXPECT_LT(dlock::test::pg::since(t0), 2s) << "the permit came back only after the ttl";
  sem.release();
}

// The operators' count applies at once to every process; lowering it revokes nothing.
TEST_F(PgPrimitives, SemaphoreCountChangedLive) {
  PostgresBackend pg(options());
  Semaphore<PostgresBackend> sem(pg, name_, 3, {.ttl = 10s});
  Semaphore<PostgresBackend> other(pg, name_, 3, {.ttl = 10s});
  EXPECT_EQ(sem.permits(), 3u);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sem.try_acquire());
  EXPECT_FALSE(other.try_acquire());
  sem.set_permits(5);
  EXPECT_EQ(other.permits(), 5u);
  ASSERT_TRUE(other.try_acquire());
  ASSERT_TRUE(other.try_acquire());
  EXPECT_FALSE(other.try_acquire());
  sem.set_permits(2);  // 5 held: none revoked, none granted until fewer than 2 are held
  EXPECT_FALSE(other.try_acquire());
  other.release(2);  // the most recent first: slots 4 and 3
  sem.release(1);    // slot 2
  EXPECT_FALSE(other.try_acquire());
  sem.release(1);  // slot 1: 1 held
  EXPECT_TRUE(other.try_acquire());
  EXPECT_FALSE(sem.try_acquire());
  sem.set_permits(std::nullopt);
  EXPECT_EQ(sem.permits(), 3u);
  EXPECT_TRUE(sem.try_acquire());
  other.release();
  sem.release(2);
}

// 3 candidates: one leader at a time by the fenced resource's account; terms increase.
TEST_F(PgPrimitives, ElectionOneLeaderAtATime) {
  dlock::test::election_one_leader_at_a_time([] { return PostgresBackend(options({.pool_size = 2})); }, name_,
                                             {.ttl = 10s}, 3);
}

// A leader paused (SIGSTOP) past its ttl: the server ends its idle session, another
// candidate takes over with a higher term, and the paused one, once resumed, sees
// its stop token requested and its late write rejected.
TEST_F(PgPrimitives, ElectionPausedLeaderLosesToHigherTerm) {
  // Waiting for the server's idle_session_timeout (the ttl) to end the paused session is the point here.
  dlock::test::election_paused_leader_loses([] { return PostgresBackend(options()); }, name_, {.ttl = 1s},
                                            {.ttl = 10s, .acquire_timeout = 10s});
}

// With shared_sessions the mutexes share sessions; each primitive lease pins a
// connection of its own, so readers, permits and leadership work the same.
TEST_F(PgPrimitives, PrimitivesPinTheirOwnSessionsWithSharedSessions) {
  PostgresBackend pg(options({.pool_size = 6, .shared_sessions = 1}));
  dlock::Lock<PostgresBackend> mutex(pg, name_, {.ttl = 10s});
  RwLock<PostgresBackend> rw(pg, name_, {.ttl = 10s});
  Semaphore<PostgresBackend> sem(pg, name_, 2, {.ttl = 10s});
  Election<PostgresBackend> e(pg, name_, "shared", {.ttl = 10s});
  ASSERT_TRUE(mutex.try_lock()) << "a primitive of the same name must not contend with the mutex";
  ASSERT_TRUE(rw.try_lock_shared());
  ASSERT_TRUE(rw.try_lock_shared());
  ASSERT_TRUE(sem.try_acquire());
  ASSERT_TRUE(e.try_campaign());
  EXPECT_EQ(e.leader()->candidate, "shared");
  const auto stats = pg.pool_stats();
  EXPECT_EQ(stats.open - stats.idle, 5u) << "in use: one shared session, two readers, a permit, a leader";
  // monitor() (and dlockctl pg list) shows the primitives' keys apart from the mutex's.
  int mutexes = 0, primitives = 0, shared = 0;
  for (const auto& r : pg.monitor()) {
    if (!r.granted) continue;
    const bool ours = r.key == pg.primitive_key(name_, dlock::detail::PgPrimitive::rw) ||
                      r.key == pg.primitive_key(name_, dlock::detail::PgPrimitive::permit) ||
                      r.key == pg.primitive_key(name_, dlock::detail::PgPrimitive::leader);
    if (r.primitive && ours) {
      ++primitives;
      shared += r.shared ? 1 : 0;
    } else if (r.key == pg.advisory_key(name_)) {
      ++mutexes;
    }
  }
  EXPECT_EQ(mutexes, 1);
  EXPECT_EQ(primitives, 4);
  EXPECT_EQ(shared, 2);
  rw.unlock_shared();
  rw.unlock_shared();
  EXPECT_TRUE(rw.try_lock());
  rw.unlock();
  sem.release();
  EXPECT_EQ(e.resign(), dlock::ReleaseResult::released);
  mutex.unlock();
}

// Lowering the count below the permits held grants nothing until fewer than the
// new count are held, whichever permits are released first (a freed low slot is
// not handed out while permits in slots above the new count are still held).
TEST_F(PgPrimitives, SemaphoreLoweredCountGrantsNothingUntilBelowIt) {
  PostgresBackend pg(options({.pool_size = 8}));
  Semaphore<PostgresBackend> sem(pg, name_, 5, {.ttl = 10s});
  Semaphore<PostgresBackend> other(pg, name_, 5, {.ttl = 10s});
  std::vector<Semaphore<PostgresBackend>::Permit> held;
  for (int i = 0; i < 5; ++i) {
    held.push_back(sem.try_acquire_permit());
    ASSERT_TRUE(held.back());
  }
  sem.set_permits(2);
  held[0].unlock();  // slot 0 frees; slots 1..4 still held: 4 > 2
  EXPECT_FALSE(other.try_acquire()) << "a permit was granted with 4 held and a count of 2";
  held[1].unlock();
  held[2].unlock();  // 2 held (slots 3, 4)
  EXPECT_FALSE(other.try_acquire());
  held[3].unlock();  // 1 held
  EXPECT_TRUE(other.try_acquire());
  EXPECT_FALSE(other.try_acquire());
  other.release();
  sem.set_permits(std::nullopt);
}

}  // namespace
