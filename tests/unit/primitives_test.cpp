// RwLock, Semaphore and Election on the in-process backend (MemoryPrimitives):
// the front end's behaviour through the views, and each primitive's rules.
#include <dlock/election.hpp>
#include <dlock/memory_primitives.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::LockOptions;
using dlock::ManualClock;
using dlock::MemoryPrimitives;
using dlock::ReleaseResult;
using dlock::test::eventually;

namespace {

using Rw = dlock::RwLock<MemoryPrimitives>;
using Sem = dlock::Semaphore<MemoryPrimitives>;
using Elect = dlock::Election<MemoryPrimitives>;

std::shared_ptr<dlock::Observer> quiet() {
  struct Quiet : dlock::Observer {
    void on_event(const dlock::Event&) noexcept override {}
  };
  return std::make_shared<Quiet>();
}

// Fast retries: waiters wake on releases anyway (MemoryPrimitives notifies).
LockOptions fast(LockOptions o = {}) {
  o.retry = {.initial_delay = 100us, .max_delay = 2ms};
  if (!o.observer) o.observer = quiet();
  return o;
}

// Records the largest number of threads inside at once.
struct Occupancy {
  std::atomic<int> inside{0};
  std::atomic<int> most{0};
  int enter() {
    const int now = ++inside;
    int m = most.load();
    while (now > m && !most.compare_exchange_weak(m, now)) {
    }
    return now;
  }
  void leave() { --inside; }
};

// A heartbeat that runs only inside advance() (see heartbeat_test.cpp).
struct ManualBeat {
  ManualClock clock;
  std::shared_ptr<dlock::detail::ManualHeartbeatScheduler> scheduler =
      std::make_shared<dlock::detail::ManualHeartbeatScheduler>(clock);
  std::shared_ptr<dlock::Heartbeat> hb = std::make_shared<dlock::Heartbeat>(scheduler);
  [[nodiscard]] LockOptions options(LockOptions o) const {
    o.clock = &clock;
    o.heartbeat = hb;
    if (!o.observer) o.observer = quiet();
    return o;
  }
  void advance(std::chrono::milliseconds d) { scheduler->advance(d); }
};

}  // namespace

static_assert(dlock::SharedLockBackend<MemoryPrimitives>);
static_assert(dlock::SemaphoreBackend<MemoryPrimitives>);
static_assert(dlock::ElectionBackend<MemoryPrimitives>);
static_assert(dlock::NotifiesRelease<dlock::detail::SharedView<MemoryPrimitives>>);
static_assert(!dlock::BatchesExtend<dlock::detail::SharedView<MemoryPrimitives>>);

// ---- RwLock ----

TEST(RwLock, ReadersOverlap) {
  MemoryPrimitives prims;
  constexpr int readers = 4;
  Occupancy occ;
  std::vector<std::thread> threads;
  for (int i = 0; i < readers; ++i) {
    threads.emplace_back([&] {
      Rw rw(prims, "catalog", fast());
      std::shared_lock read(rw);
      occ.enter();
      // Stay inside until every reader is: only possible if reads overlap.
      EXPECT_TRUE(eventually([&] { return occ.most.load() == readers; }));
      occ.leave();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(occ.most.load(), readers);
}

TEST(RwLock, WriterNeverOverlapsAnything) {
  MemoryPrimitives prims;
  std::atomic<int> readers_in{0}, writers_in{0};
  std::atomic<int> violations{0}, writes{0}, reads{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, writer = i % 3 == 0] {
      Rw rw(prims, "catalog", fast());
      for (int k = 0; k < 150; ++k) {
        if (writer) {
          std::unique_lock w(rw);
          if (++writers_in != 1 || readers_in.load() != 0) ++violations;
          ++writes;
          --writers_in;
        } else {
          std::shared_lock r(rw);
          ++readers_in;
          if (writers_in.load() != 0) ++violations;
          ++reads;
          --readers_in;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_EQ(writes.load(), 300);
  EXPECT_EQ(reads.load(), 600);
}

TEST(RwLock, WaitingWriterStopsNewReadersAndGoesNextDeterministic) {
  ManualClock clock;
  MemoryPrimitives prims(clock);
  Rw a(prims, "doc", fast({.ttl = 10s, .clock = &clock}));
  Rw b(prims, "doc", fast({.ttl = 10s, .clock = &clock}));
  Rw w(prims, "doc", fast({.ttl = 2s, .clock = &clock}));
  ASSERT_TRUE(a.try_lock_shared());
  ASSERT_TRUE(b.try_lock_shared());  // readers share
  b.unlock_shared();
  EXPECT_FALSE(w.try_lock());         // a reader holds: the writer waits, and says so
  EXPECT_FALSE(b.try_lock_shared());  // so a new reader does not get in
  a.unlock_shared();
  EXPECT_TRUE(w.try_lock());  // the writer goes next
  EXPECT_FALSE(b.try_lock_shared());
  w.unlock();
  EXPECT_TRUE(b.try_lock_shared());
  b.unlock_shared();

  // A writer that gives up blocks new readers only until its mark lapses (its TTL).
  ASSERT_TRUE(a.try_lock_shared());
  EXPECT_FALSE(w.try_lock());
  EXPECT_FALSE(b.try_lock_shared());
  clock.advance(2s);
  EXPECT_TRUE(b.try_lock_shared());
}

TEST(RwLock, WriterBehindAContinuousStreamOfReadersGetsInWithinABound) {
  MemoryPrimitives prims;
  std::atomic<bool> stop{false};
  std::atomic<int> readers_in{0};
  std::atomic<long> reads{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      Rw rw(prims, "feed", fast());
      while (!stop) {
        if (!rw.try_lock_shared_for(5ms)) continue;  // held staggered: some reader is (nearly) always in
        ++readers_in;
        ++reads;
        std::this_thread::sleep_for(1ms);
        --readers_in;
        rw.unlock_shared();
      }
    });
  }
  ASSERT_TRUE(eventually([&] { return reads.load() > 20; }));
  Rw writer(prims, "feed", fast());
  const auto t0 = std::chrono::steady_clock::now();
  const bool got = writer.try_lock_for(2s);
  const auto waited = std::chrono::steady_clock::now() - t0;
  if (got) {
    EXPECT_EQ(readers_in.load(), 0);
    writer.unlock();
  }
  stop = true;
  for (auto& t : threads) t.join();
  ASSERT_TRUE(got) << "the writer was starved by the readers";
  EXPECT_LT(waited, 500ms);  // about one read's hold (1 ms) plus scheduling
}

TEST(RwLock, StdLockTypesWork) {
  MemoryPrimitives prims;
  Rw one(prims, "doc", fast()), two(prims, "doc", fast()), writer(prims, "doc", fast());
  {
    std::shared_lock r1(one);
    std::shared_lock r2(two, 100ms);  // SharedTimedLockable
    EXPECT_TRUE(r2.owns_lock());
    std::unique_lock w(writer, std::try_to_lock);
    EXPECT_FALSE(w.owns_lock());
    EXPECT_FALSE(writer.try_lock_until(std::chrono::steady_clock::now() + 5ms));
  }
  std::unique_lock w(writer, 100ms);
  EXPECT_TRUE(w.owns_lock());
  std::shared_lock r(one, std::try_to_lock);
  EXPECT_FALSE(r.owns_lock());
}

TEST(RwLock, ReaderTokensSitBetweenTheWritersAroundThem) {
  MemoryPrimitives prims;
  Rw rw(prims, "doc", fast()), other(prims, "doc", fast());
  rw.lock();
  const auto w1 = rw.writer().fencing_token();
  rw.unlock();
  rw.lock_shared();
  other.lock_shared();
  const auto r1 = rw.reader().fencing_token();
  EXPECT_EQ(other.reader().fencing_token(), r1);  // readers share a token
  EXPECT_GE(r1, w1);                              // a write before the read: token(W) <= token(R)
  rw.unlock_shared();
  other.unlock_shared();
  rw.lock();
  EXPECT_GT(rw.writer().fencing_token(), r1);  // a read before the write: token(R) < token(W)
  rw.unlock();
}

TEST(RwLock, EachReaderExpiresOnItsOwn) {
  ManualClock clock;
  MemoryPrimitives prims(clock);
  Rw brief(prims, "doc", fast({.ttl = 1s, .clock = &clock}));
  Rw longer(prims, "doc", fast({.ttl = 5s, .clock = &clock}));
  Rw w(prims, "doc", fast({.ttl = 1s, .clock = &clock}));
  ASSERT_TRUE(brief.try_lock_shared());
  ASSERT_TRUE(longer.try_lock_shared());
  clock.advance(1s);
  EXPECT_FALSE(brief.reader().owns_lock());
  EXPECT_TRUE(longer.reader().owns_lock());
  EXPECT_FALSE(w.try_lock());  // the longer read still holds
  clock.advance(4s);
  EXPECT_TRUE(w.try_lock());
  EXPECT_EQ(brief.reader().release(), ReleaseResult::not_held);
}

// Re-acquire after a loss on the same thread. The write side is one Lock: the
// lost acquisition occupies it until unlock(), as a mutex's does, so lock()
// before that is a re-entry (DeadlockError at once, not a wait for itself);
// after unlock() it acquires with a higher token. A read lease is a Lock of
// its own: the thread reads again at once, beside its lost lease.
TEST(RwLock, AfterALossTheSameThreadAcquiresAgain) {
  ManualClock clock;
  MemoryPrimitives prims(clock);
  Rw rw(prims, "doc", fast({.ttl = 1s, .clock = &clock}));
  rw.lock();
  const auto first = rw.writer().fencing_token();
  clock.advance(1s);
  ASSERT_FALSE(rw.writer().owns_lock());
  EXPECT_THROW(rw.lock(), dlock::DeadlockError);
  rw.unlock();
  ASSERT_TRUE(rw.try_lock());
  EXPECT_GT(rw.writer().fencing_token(), first);
  rw.unlock();

  ASSERT_TRUE(rw.try_lock_shared());
  clock.advance(1s);
  ASSERT_FALSE(rw.reader().owns_lock());
  ASSERT_TRUE(rw.try_lock_shared());
  EXPECT_TRUE(rw.reader().owns_lock());   // the newest lease
  rw.unlock_shared();                     // releases the newest first
  EXPECT_FALSE(rw.reader().owns_lock());  // the lost one is next
  rw.unlock_shared();
  EXPECT_TRUE(rw.try_lock());
}

TEST(RwLock, AutoExtendKeepsAReaderAndSignalsItsLoss) {
  ManualBeat beat;
  MemoryPrimitives prims(beat.clock);
  Rw reader(prims, "doc", beat.options({.ttl = 600ms, .auto_extend = true}));
  Rw writer(prims, "doc", beat.options({.ttl = 600ms}));
  std::shared_lock g(reader);
  const auto lost = reader.reader().stop_token();
  beat.advance(3s);
  EXPECT_TRUE(reader.reader().owns_lock());
  EXPECT_FALSE(writer.try_lock());
  prims.force_release("doc");  // an operator removes the readers
  beat.advance(300ms);         // the next extension finds the lease gone
  EXPECT_TRUE(lost.stop_requested());
  EXPECT_TRUE(writer.try_lock());
}

// ---- Semaphore ----

TEST(Semaphore, EightThreadsOnThreePermitsNeverExceedThree) {
  MemoryPrimitives prims;
  Sem shared(prims, "tenant", 3, fast());  // one object, several permits at once
  Occupancy occ;
  std::atomic<int> over{0}, done{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, own = i % 2 == 0] {
      Sem mine(prims, "tenant", 3, fast());  // and objects of their own
      Sem& sem = own ? mine : shared;
      for (int k = 0; k < 60; ++k) {
        auto p = sem.acquire_permit();
        if (occ.enter() > 3) ++over;
        std::this_thread::yield();
        occ.leave();
        ++done;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(over.load(), 0);
  EXPECT_LE(occ.most.load(), 3);
  EXPECT_EQ(done.load(), 480);
  EXPECT_EQ(prims.permits_held("tenant"), 0u);
}

TEST(Semaphore, CountingSemaphoreShape) {
  MemoryPrimitives prims;
  Sem sem(prims, "pool", 2, fast());
  sem.acquire();
  EXPECT_TRUE(sem.try_acquire());
  EXPECT_FALSE(sem.try_acquire());
  EXPECT_FALSE(sem.try_acquire_for(5ms));
  EXPECT_FALSE(sem.try_acquire_until(std::chrono::steady_clock::now() + 5ms));
  EXPECT_EQ(sem.held(), 2u);
  sem.release();
  EXPECT_TRUE(sem.try_acquire());
  sem.release(2);
  EXPECT_EQ(sem.held(), 0u);
  EXPECT_THROW(sem.release(), dlock::LockLostError);
  EXPECT_THROW(Sem(prims, "pool", 0), dlock::InvalidArgument);
}

TEST(Semaphore, ExpiredPermitComesBack) {
  ManualClock clock;
  MemoryPrimitives prims(clock);
  Sem a(prims, "jobs", 1, fast({.ttl = 1s, .clock = &clock}));
  Sem b(prims, "jobs", 1, fast({.ttl = 1s, .clock = &clock}));
  auto crashed = a.try_acquire_permit();  // its holder "crashes": never released, never extended
  ASSERT_TRUE(crashed);
  EXPECT_FALSE(b.try_acquire_permit());
  clock.advance(999ms);
  EXPECT_FALSE(b.try_acquire_permit());
  clock.advance(1ms);
  auto next = b.try_acquire_permit();
  ASSERT_TRUE(next);
  EXPECT_GT(next.fencing_token(), 1u);
  EXPECT_FALSE(crashed.owns_permit());
  EXPECT_EQ(crashed.release(), ReleaseResult::not_held);
  EXPECT_TRUE(next.owns_permit());
}

TEST(Semaphore, CountChangedLive) {
  MemoryPrimitives prims;
  Sem sem(prims, "tenant", 2, fast());
  Sem op(prims, "tenant", 2, fast());  // an operator's handle
  auto p1 = sem.try_acquire_permit();
  auto p2 = sem.try_acquire_permit();
  ASSERT_TRUE(p1 && p2);
  EXPECT_FALSE(sem.try_acquire_permit());

  // A blocked acquire wakes when the operator raises the count.
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto p3 = sem.try_acquire_permit_for(5s);
    got = static_cast<bool>(p3);
  });
  op.set_permits(3);
  waiter.join();
  EXPECT_TRUE(got.load());
  EXPECT_EQ(sem.permits(), 3u);

  op.set_permits(1);  // lowering revokes nothing; new grants wait
  EXPECT_TRUE(p1.owns_permit());
  EXPECT_TRUE(p2.owns_permit());
  p1.unlock();
  EXPECT_FALSE(sem.try_acquire_permit());  // 1 held, count 1
  op.set_permits(std::nullopt);            // back to each caller's own count (2)
  EXPECT_EQ(sem.permits(), 2u);
  EXPECT_TRUE(sem.try_acquire_permit());
}

TEST(Semaphore, AutoExtendPerPermitAndLossSignalled) {
  ManualBeat beat;
  MemoryPrimitives prims(beat.clock);
  Sem sem(prims, "jobs", 2, beat.options({.ttl = 600ms, .auto_extend = true}));
  Sem other(prims, "jobs", 2, beat.options({.ttl = 600ms}));
  auto p1 = sem.acquire_permit();
  auto p2 = sem.acquire_permit();
  beat.advance(5s);  // far past the TTL: both kept by the heartbeat
  EXPECT_TRUE(p1.owns_permit());
  EXPECT_TRUE(p2.owns_permit());
  EXPECT_FALSE(other.try_acquire_permit());
  const auto lost = p1.stop_token();
  prims.force_release("jobs");
  beat.advance(300ms);
  EXPECT_TRUE(lost.stop_requested());
  EXPECT_TRUE(p2.stop_token().stop_requested());
}

// ---- Election ----

TEST(Election, ExactlyOneLeaderAndTheNextTermIsHigherAfterALoss) {
  ManualBeat beat;
  MemoryPrimitives prims(beat.clock);
  std::vector<std::unique_ptr<Elect>> candidates;
  for (const char* id : {"node-a", "node-b", "node-c"})
    candidates.push_back(std::make_unique<Elect>(prims, "scheduler", id, beat.options(fast({.ttl = 3s}))));
  EXPECT_EQ(candidates[0]->leader(), std::nullopt);

  int leaders = 0;
  for (auto& c : candidates) leaders += c->try_campaign();
  ASSERT_EQ(leaders, 1);
  Elect& first = **std::find_if(candidates.begin(), candidates.end(), [](auto& c) { return c->is_leader(); });
  const auto term1 = first.term();
  EXPECT_EQ(first.leader(), (dlock::LeaderInfo{first.candidate(), term1}));
  beat.advance(10s);  // kept by auto-extend
  ASSERT_TRUE(first.is_leader());
  const auto lost = first.stop_token();

  // The others campaign (blocking); the leader's lease is lost behind its back.
  std::atomic<int> won{0};
  std::vector<std::thread> campaigns;
  for (auto& c : candidates) {
    if (c.get() == &first) continue;
    campaigns.emplace_back([&, e = c.get()] {
      if (e->try_campaign_for(5s)) ++won;
    });
  }
  prims.force_release("scheduler");
  beat.advance(1s);  // its next extension finds it gone
  EXPECT_TRUE(lost.stop_requested());
  EXPECT_FALSE(first.is_leader());
  ASSERT_TRUE(eventually([&] { return won.load() == 1; }));
  Elect* second = nullptr;
  for (auto& c : candidates)
    if (c->is_leader()) second = c.get();
  ASSERT_NE(second, nullptr);
  EXPECT_NE(second, &first);
  EXPECT_GT(second->term(), term1);
  EXPECT_EQ(first.leader()->candidate, second->candidate());

  second->resign();  // lets the last one in
  for (auto& t : campaigns) t.join();
  EXPECT_EQ(won.load(), 2);
  int now_leading = 0;
  for (auto& c : candidates) now_leading += c->is_leader();
  EXPECT_EQ(now_leading, 1);
}

// "Campaign again after resign() or a loss": the deposed leader's own
// campaign is a new acquisition, not a re-entry of the lost one.
TEST(Election, ADeposedLeaderCanCampaignAgain) {
  ManualBeat beat;
  MemoryPrimitives prims(beat.clock);
  Elect a(prims, "svc", "a", beat.options(fast({.ttl = 3s})));
  ASSERT_TRUE(a.try_campaign());
  const auto term1 = a.term();
  const auto lost = a.stop_token();
  prims.force_release("svc");
  beat.advance(1s);  // its next extension finds it gone
  ASSERT_TRUE(lost.stop_requested());
  EXPECT_TRUE(a.try_campaign());
  EXPECT_GT(a.term(), term1);
}

TEST(Election, WaitLeaderChangeWakesOnResign) {
  MemoryPrimitives prims;
  Elect a(prims, "svc", "a", fast()), b(prims, "svc", "b", fast());
  ASSERT_TRUE(a.try_campaign());
  const auto seen = b.leader();
  ASSERT_TRUE(seen && seen->candidate == "a");
  EXPECT_EQ(b.wait_leader_change(seen, 5ms), seen);  // no change: times out
  std::thread resign([&] { a.resign(); });
  const auto now = b.wait_leader_change(seen, 5s);
  resign.join();
  EXPECT_EQ(now, std::nullopt);
  EXPECT_THROW(Elect(prims, "svc", ""), dlock::InvalidArgument);
}

// ---- the front end's events, through the views ----

TEST(Primitives, EventsCarryTheNameAndTheBackend) {
  MemoryPrimitives prims;
  auto observer = std::make_shared<dlock::test::RecordingObserver>();
  Rw rw(prims, "doc", fast({.observer = observer}));
  Sem sem(prims, "jobs", 1, fast({.observer = observer}));
  Elect election(prims, "svc", "me", fast({.observer = observer}));
  rw.lock_shared();
  rw.unlock_shared();
  sem.acquire();
  sem.release();
  ASSERT_TRUE(election.try_campaign());
  (void)election.resign();
  std::vector<std::string> acquired;
  for (const auto& e : observer->events())
    if (e.type == dlock::EventType::acquired) acquired.push_back(e.lock);
  EXPECT_EQ(acquired, (std::vector<std::string>{"doc", "jobs", "svc"}));
  EXPECT_EQ(observer->count(dlock::EventType::released), 3u);
}

TEST(RwLock, OneObjectSharedByThreadsReadsConcurrently) {
  MemoryPrimitives prims;
  Rw rw(prims, "catalog", fast());  // like a std::shared_mutex shared by the threads
  Rw writer(prims, "catalog", fast());
  constexpr int readers = 4;
  Occupancy occ;
  std::atomic<int> tokens_ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < readers; ++i) {
    threads.emplace_back([&] {
      std::shared_lock read(rw);
      occ.enter();
      EXPECT_TRUE(eventually([&] { return occ.most.load() == readers; }));
      EXPECT_FALSE(writer.try_lock());
      tokens_ok += rw.reader().owns_lock();  // this thread's own read lease
      occ.leave();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(occ.most.load(), readers);
  EXPECT_EQ(tokens_ok.load(), readers);
  EXPECT_THROW((void)rw.reader(), dlock::LockLostError);  // this thread holds none
  EXPECT_TRUE(writer.try_lock());                         // every read lease was released
  writer.unlock();

  // A read lease taken on one thread may be released from another.
  std::thread([&] { rw.lock_shared(); }).join();
  EXPECT_FALSE(writer.try_lock());
  rw.unlock_shared();
  EXPECT_TRUE(writer.try_lock());
}
