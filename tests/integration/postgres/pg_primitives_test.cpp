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
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Election;
using dlock::PostgresBackend;
using dlock::PostgresOptions;
using dlock::RwLock;
using dlock::Semaphore;
using dlock::test::eventually;
using dlock::test::join;
using dlock::test::raise_max;
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
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 4; ++p) {
    kids.push_back(spawn([&, p] {
      PostgresBackend pg(options({.pool_size = 4}));
      RwLock<PostgresBackend> rw(pg, name_, {.ttl = 10s});
      for (int i = 0; i < 18; ++i) {
        if (p == 0 && i % 3 == 0) {  // one writer among readers
          std::unique_lock w(rw);
          if (sh->writers.fetch_add(1) != 0 || sh->readers.load() != 0) sh->violations++;
          std::this_thread::sleep_for(1ms);  // the critical section's work
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
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 3; ++p) {
    kids.push_back(spawn([&] {
      PostgresBackend pg(options({.pool_size = 2}));
      RwLock<PostgresBackend> rw(pg, name_, {.ttl = 10s});
      sh->ready++;
      while (sh->done.load() == 0) {  // always at least one reader in: each holds 30 ms, staggered
        std::shared_lock r(rw);
        raise_max(sh->max_readers, sh->readers.fetch_add(1) + 1);
        if (sh->writers.load() != 0) sh->violations++;
        std::this_thread::sleep_for(30ms);
        sh->readers.fetch_sub(1);
      }
    }));
  }
  ASSERT_TRUE(eventually([&] { return sh->ready.load() == 3 && sh->max_readers.load() >= 2; }, 10s));
  PostgresBackend pg(options());
  RwLock<PostgresBackend> rw(pg, name_, {.ttl = 10s});
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
    worst = std::max(worst, dlock::test::pg::since(t0));
    std::this_thread::sleep_for(20ms);  // let the readers back in
  }
  sh->done = 1;
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_LT(worst, 500ms) << "the writer waited " << worst.count() << " ms behind the readers";
  std::printf("writer behind 3 readers (30 ms holds): worst wait %lld ms\n", static_cast<long long>(worst.count()));
}

// 8 processes on 3 permits: never more than 3 holders.
TEST_F(PgPrimitives, SemaphoreNeverExceedsPermits) {
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 8; ++p) {
    kids.push_back(spawn([&] {
      PostgresBackend pg(options({.pool_size = 2}));
      Semaphore<PostgresBackend> sem(pg, name_, 3, {.ttl = 10s});
      for (int i = 0; i < 15; ++i) {
        auto permit = sem.acquire_permit();
        const int h = sh->holders.fetch_add(1) + 1;
        raise_max(sh->max_holders, h);
        if (h > 3) sh->violations++;
        std::this_thread::sleep_for(2ms);
        sh->holders.fetch_sub(1);
      }
    }));
  }
  join(kids);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_LE(sh->max_holders.load(), 3);
  EXPECT_GE(sh->max_holders.load(), 2) << "the permits were never used together";
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
  SharedMemory sh;
  std::vector<pid_t> kids;
  for (int p = 0; p < 3; ++p) {
    kids.push_back(spawn([&, p] {
      PostgresBackend pg(options({.pool_size = 2}));
      Election<PostgresBackend> e(pg, name_, "candidate-" + std::to_string(p), {.ttl = 10s});
      for (int i = 0; i < 3; ++i) {
        e.campaign();
        if (sh->leaders.fetch_add(1) != 0) sh->violations++;
        const std::uint64_t term = e.term();
        const auto seen = e.leader();
        if (!seen || seen->candidate != e.candidate() || seen->term != term) sh->violations++;
        for (int w = 0; w < 5; ++w) {  // the fenced resource accepts a term at least the largest it has seen
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
  PostgresBackend pg(options());
  EXPECT_EQ(Election<PostgresBackend>(pg, name_, "observer").leader(), std::nullopt);
}

// A leader paused (SIGSTOP) past its ttl: the server ends its idle session, another
// candidate takes over with a higher term, and the paused one, once resumed, sees
// its stop token requested and its late write rejected.
TEST_F(PgPrimitives, ElectionPausedLeaderLosesToHigherTerm) {
  SharedMemory sh;
  const pid_t kid = spawn([&] {
    PostgresBackend pg(options());
    Election<PostgresBackend> e(pg, name_, "paused", {.ttl = 1s});
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
  PostgresBackend pg(options());
  Election<PostgresBackend> next(pg, name_, "next", {.ttl = 10s, .acquire_timeout = 10s});
  // Waiting for the server's idle_session_timeout (the ttl) to end the paused session is the point here.
  const auto t0 = std::chrono::steady_clock::now();
  next.campaign();
  EXPECT_LT(dlock::test::pg::since(t0), 5s);
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
