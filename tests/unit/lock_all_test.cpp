// lock_all: canonical order whatever the caller's order, one deadline for the
// set, everything released on failure; and the lock-order checker.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::EventType;
using dlock::Lock;
using dlock::LockOptions;
using dlock::MemoryBackend;
using dlock::test::RecordingObserver;

TEST(LockAll, AcquiresInCanonicalOrderWhateverTheCallersOrder) {
  MemoryBackend mem;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> c(mem, "c", {.observer = observer});
  Lock<MemoryBackend> a(mem, "a", {.observer = observer});
  Lock<MemoryBackend> b(mem, "b", {.observer = observer});
  {
    auto all = dlock::lock_all(c, a, b);
    EXPECT_TRUE(all.owns_lock());
    EXPECT_EQ(&all.get<0>(), &c);
  }
  EXPECT_FALSE(a.owns_lock() || b.owns_lock() || c.owns_lock());
  std::vector<std::string> order;
  for (const auto& e : observer->events())
    if (e.type == EventType::acquired) order.push_back(e.lock);
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(LockAll, OppositeOrdersFromTwoThreadsNeverDeadlock) {
  MemoryBackend mem;
  constexpr int rounds = 300;
  long shared = 0;
  auto worker = [&](bool reversed) {
    LockOptions o{.retry = {.initial_delay = 50us, .max_delay = 1ms}};
    Lock<MemoryBackend> x(mem, "account:x", o);
    Lock<MemoryBackend> y(mem, "account:y", o);
    for (int i = 0; i < rounds; ++i) {
      auto both = reversed ? dlock::lock_all(y, x) : dlock::lock_all(x, y);
      const long v = shared;
      std::this_thread::yield();
      shared = v + 1;
    }
  };
  std::thread t1(worker, false);
  std::thread t2(worker, true);
  t1.join();
  t2.join();
  EXPECT_EQ(shared, 2 * rounds);
}

TEST(LockAll, OneDeadlineForTheSetAndNothingHeldAfterFailure) {
  MemoryBackend mem;
  Lock<MemoryBackend> holder(mem, "b");
  Lock<MemoryBackend> a(mem, "a", {.retry = {.initial_delay = 1ms, .max_delay = 5ms}});
  Lock<MemoryBackend> b(mem, "b", {.retry = {.initial_delay = 1ms, .max_delay = 5ms}});
  Lock<MemoryBackend> c(mem, "c");
  holder.lock();
  const auto start = std::chrono::steady_clock::now();
  auto set = dlock::try_lock_all_for(100ms, c, b, a);
  EXPECT_FALSE(set);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_FALSE(a.owns_lock());  // taken first, then released
  EXPECT_FALSE(c.owns_lock());  // never taken
  Lock<MemoryBackend> probe(mem, "a");
  EXPECT_TRUE(probe.try_lock());
  probe.unlock();
  holder.unlock();
  auto later = dlock::try_lock_all_for(1s, c, b, a);
  EXPECT_TRUE(later.owns_lock());
}

TEST(LockAll, ErrorsReleaseWhatWasTaken) {
  dlock::test::FaultyBackend faulty;
  MemoryBackend mem;
  Lock<MemoryBackend> a(mem, "a");
  Lock<dlock::test::FaultyBackend> f(faulty, "f", {.retry = {.max_attempts = 1}});
  faulty.failing_acquires = 100;
  EXPECT_THROW((void)dlock::lock_all(a, f), dlock::ConnectionError);
  EXPECT_FALSE(a.owns_lock());
  EXPECT_TRUE(a.try_lock());
}

TEST(LockOrder, ReportsAnInversionAcrossTwoThreadsBeforeItDeadlocks) {
  MemoryBackend mem;
  dlock::LockOrderChecker checker(dlock::LockOrderChecker::Action::report);
  auto observer = std::make_shared<RecordingObserver>();
  const LockOptions o{.observer = observer, .lock_order = &checker};

  std::thread first([&] {  // orders, then payments
    Lock<MemoryBackend> orders(mem, "orders:1", o);
    Lock<MemoryBackend> payments(mem, "payments:1", o);
    std::scoped_lock hold_orders(orders);
    std::scoped_lock hold_payments(payments);
  });
  first.join();
  EXPECT_EQ(checker.edges()["orders"].count("payments"), 1u);
  EXPECT_EQ(observer->count(EventType::order_violation), 0u);

  std::thread second([&] {  // payments, then orders: the inversion
    Lock<MemoryBackend> payments(mem, "payments:2", o);
    Lock<MemoryBackend> orders(mem, "orders:2", o);
    std::scoped_lock hold_payments(payments);
    EXPECT_TRUE(orders.try_lock_for(1s));  // reported before the attempt; no deadlock here, nothing else holds it
    orders.unlock();
  });
  second.join();
  ASSERT_EQ(observer->count(EventType::order_violation), 1u);
  for (const auto& e : observer->events()) {
    if (e.type != EventType::order_violation) continue;
    EXPECT_NE(e.message.find("payments -> orders -> payments"), std::string::npos) << e.message;
    EXPECT_NE(e.message.find("'payments:2'"), std::string::npos) << e.message;
  }
  EXPECT_EQ(checker.edges()["payments"].count("orders"), 0u);  // the closing edge is not recorded
}

TEST(LockOrder, ConsistentOrderAndTryLockAreNotReported) {
  MemoryBackend mem;
  dlock::LockOrderChecker checker(dlock::LockOrderChecker::Action::report);
  auto observer = std::make_shared<RecordingObserver>();
  const LockOptions o{.observer = observer, .lock_order = &checker};
  for (int i = 0; i < 3; ++i) {
    Lock<MemoryBackend> a(mem, "a:1", o);
    Lock<MemoryBackend> b(mem, "b:1", o);
    std::scoped_lock both(a, b);  // std::lock: lock() one, try_lock() the other, in either order
  }
  Lock<MemoryBackend> b(mem, "b:1", o);
  Lock<MemoryBackend> a(mem, "a:1", o);
  b.lock();
  EXPECT_TRUE(a.try_lock());  // a single attempt cannot deadlock
  EXPECT_EQ(observer->count(EventType::order_violation), 0u);
}

TEST(LockOrderDeathTest, AbortModeStopsTheProcessWithTheCycle) {
  EXPECT_DEATH(
      {
        MemoryBackend mem;
        dlock::LockOrderChecker checker(dlock::LockOrderChecker::Action::abort);
        const LockOptions o{.lock_order = &checker};
        {
          Lock<MemoryBackend> a(mem, "a:1", o);
          Lock<MemoryBackend> b(mem, "b:1", o);
          a.lock();
          b.lock();
        }
        Lock<MemoryBackend> b(mem, "b:2", o);
        Lock<MemoryBackend> a(mem, "a:2", o);
        b.lock();
        a.lock();
      },
      "lock order inversion: cycle b -> a -> b");
}
