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

namespace {
/// A non-copyable in-process backend (kept by reference, so its identity is
/// its address) with a chosen kind and endpoint; logs the order of acquires.
class NamedBackend {
 public:
  using Handle = dlock::NoHandle;
  NamedBackend(std::string kind, std::string endpoint, std::vector<std::string>& log)
      : kind_(std::move(kind)), endpoint_(std::move(endpoint)), log_(log) {}
  NamedBackend(const NamedBackend&) = delete;
  [[nodiscard]] std::string_view kind() const noexcept { return kind_; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return endpoint_; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest& r) {
    log_.push_back(kind_ + " " + endpoint_ + " " + std::string(r.name));
    return mem_.try_acquire(r);
  }
  dlock::ReleaseResult release(std::string_view name, dlock::Lease<Handle>& lease) { return mem_.release(name, lease); }
  std::optional<dlock::TimePoint> extend(std::string_view name, dlock::Lease<Handle>& lease,
                                         std::chrono::milliseconds ttl, dlock::TimePoint started) {
    return mem_.extend(name, lease, ttl, started);
  }

 private:
  std::string kind_, endpoint_;
  std::vector<std::string>& log_;
  MemoryBackend mem_;
};

// Acquires one lock named `name` on each backend, passing them in the given order.
std::vector<std::string> acquire_order(NamedBackend& first, NamedBackend& second, std::vector<std::string>& log) {
  log.clear();
  Lock<NamedBackend> a(first, "x");
  Lock<NamedBackend> b(second, "x");
  auto both = dlock::lock_all(a, b);
  EXPECT_TRUE(both.owns_lock());
  return log;
}
}  // namespace

TEST(LockAll, OrderIsByKindEndpointAndNameNotByObjectAddress) {
  std::vector<std::string> log;
  // Array elements lie at increasing addresses; each case puts the canonically
  // later backend at the lower address, as another process might.
  NamedBackend by_endpoint[2] = {{"redis", "10.0.0.2:6379", log}, {"redis", "10.0.0.1:6379", log}};
  const std::vector<std::string> endpoint_order{"redis 10.0.0.1:6379 x", "redis 10.0.0.2:6379 x"};
  EXPECT_EQ(acquire_order(by_endpoint[0], by_endpoint[1], log), endpoint_order);
  EXPECT_EQ(acquire_order(by_endpoint[1], by_endpoint[0], log), endpoint_order);

  NamedBackend by_kind[2] = {{"redis", "a:1", log}, {"postgres", "b:2", log}};
  const std::vector<std::string> kind_order{"postgres b:2 x", "redis a:1 x"};
  EXPECT_EQ(acquire_order(by_kind[0], by_kind[1], log), kind_order);
  EXPECT_EQ(acquire_order(by_kind[1], by_kind[0], log), kind_order);
}

TEST(LockAll, AMultiGuardReleasesOnlyTheAcquisitionsItAdopted) {
  MemoryBackend mem;
  Lock<MemoryBackend> a(mem, "a");
  Lock<MemoryBackend> b(mem, "b");
  auto set = dlock::lock_all(a, b);
  a.unlock();
  a.lock();  // a new acquisition of `a`, not the set's
  EXPECT_FALSE(set.owns_lock());
  set.unlock();
  EXPECT_TRUE(a.owns_lock());  // left alone
  EXPECT_FALSE(b.owns_lock());
  Lock<MemoryBackend> probe(mem, "a");
  EXPECT_FALSE(probe.try_lock());
}

TEST(LockAll, SortCanonicallyIgnoresAddressesExceptBetweenEqualServices) {
  using dlock::detail::SetMember;
  const char objects[4] = {};  // fabricated identities at known increasing addresses
  auto member = [](std::string_view kind, std::string_view endpoint, std::string_view name, const void* id) {
    return SetMember{kind, endpoint, name, id, {}, {}};
  };
  std::array<SetMember, 5> set{member("redis", "b:6379", "x", &objects[0]), member("redis", "a:6379", "y", &objects[1]),
                               member("postgres", "z:5432", "x", &objects[2]),
                               member("redis", "a:6379", "x", &objects[3]),
                               member("memory", "in-process", "x", &objects[3])};
  dlock::detail::sort_canonically(set);
  std::vector<std::string> order;
  for (const auto& m : set)
    order.push_back(std::string(m.kind) + " " + std::string(m.endpoint) + " " + std::string(m.name));
  EXPECT_EQ(order, (std::vector<std::string>{"memory in-process x", "postgres z:5432 x", "redis a:6379 x",
                                             "redis a:6379 y", "redis b:6379 x"}));

  // Only two objects for the same service and name fall back to identity.
  std::array<SetMember, 2> twins{member("memory", "in-process", "x", &objects[2]),
                                 member("memory", "in-process", "x", &objects[1])};
  dlock::detail::sort_canonically(twins);
  EXPECT_EQ(twins[0].backend, &objects[1]);
}
