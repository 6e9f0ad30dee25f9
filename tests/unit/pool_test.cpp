// detail::Pool: bounded, a broken handle never reused, generation bumps, fork().
#include <dlock/detail/pool.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "fork_support.hpp"

namespace {

using namespace std::chrono_literals;

struct Conn {
  int id = 0;
  bool broken = false;
};
using Handle = std::shared_ptr<Conn>;
using Pool = dlock::detail::Pool<Handle>;

struct Opener {
  int opened = 0;
  Handle operator()() { return std::make_shared<Conn>(Conn{++opened}); }
};

TEST(Pool, ReusesAHealthyHandle) {
  Pool pool(2, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->handle->id, 1);
  pool.give_back(std::move(*a), true);
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->handle->id, 1);
  EXPECT_EQ(open.opened, 1);
  EXPECT_EQ(pool.open_count(), 1u);
  pool.give_back(std::move(*b), true);
  EXPECT_EQ(pool.idle_count(), 1u);
}

TEST(Pool, IsBoundedAndWaitsForAFreeHandle) {
  Pool pool(2, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a && b);
  EXPECT_EQ(pool.open_count(), 2u);
  EXPECT_FALSE(pool.take(10ms, std::ref(open)));  // full: the wait ends empty
  EXPECT_EQ(open.opened, 2);
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto c = pool.take(10s, std::ref(open));
    got = c.has_value() && c->handle->id == 1;
    if (c) pool.give_back(std::move(*c), true);
  });
  pool.give_back(std::move(*a), true);  // wakes the waiter, which reuses it
  waiter.join();
  EXPECT_TRUE(got);
  EXPECT_EQ(open.opened, 2);
  pool.give_back(std::move(*b), true);
  EXPECT_EQ(pool.open_count(), 2u);
}

TEST(Pool, NeverReusesABrokenHandle) {
  Pool pool(1, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a);
  pool.give_back(std::move(*a), false);  // broken in use
  EXPECT_EQ(pool.open_count(), 0u);
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->handle->id, 2);
  b->handle->broken = true;  // broke while idle-bound: the predicate catches it
  pool.give_back(std::move(*b), true);
  EXPECT_EQ(pool.idle_count(), 0u);
  auto c = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->handle->id, 3);
  pool.give_back(std::move(*c), true);
  c.reset();
  // Broken while idle (e.g. the server closed it): dropped when next taken.
  auto d = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(d);
  Conn* raw = d->handle.get();
  pool.give_back(std::move(*d), true);
  raw->broken = true;
  auto e = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->handle->id, 4);
  EXPECT_EQ(pool.open_count(), 1u);
  pool.give_back(std::move(*e), true);
}

TEST(Pool, ABrokenHandleRetiresTheIdleOnesFromBefore) {
  Pool pool(3, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a && b);
  const auto gen = pool.generation();
  pool.give_back(std::move(*a), true);   // idle, generation gen
  pool.give_back(std::move(*b), false);  // broken: generation bumped
  EXPECT_EQ(pool.generation(), gen + 1);
  auto c = pool.take(0ms, std::ref(open));  // the idle one is from before: dropped
  ASSERT_TRUE(c);
  EXPECT_EQ(c->handle->id, 3);
  EXPECT_EQ(pool.open_count(), 1u);
  pool.give_back(std::move(*c), true);
}

TEST(Pool, AHandleTakenBeforeABreakOrAnInvalidateIsNotKeptWhenGivenBack) {
  Pool pool(3, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a && b);
  pool.give_back(std::move(*b), false);  // broken while `a` is checked out
  pool.give_back(std::move(*a), true);   // healthy, but from before the break
  auto c = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->handle->id, 3);  // a new one: `a` was dropped
  EXPECT_EQ(pool.open_count(), 1u);
  pool.invalidate();  // e.g. a failover: `c` reaches the old primary
  pool.give_back(std::move(*c), true);
  auto d = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->handle->id, 4);
  EXPECT_EQ(pool.open_count(), 1u);
  pool.give_back(std::move(*d), true);
}

TEST(Pool, AFailedOpenFreesItsSlot) {
  Pool pool(1, [](const Handle& h) { return !h->broken; });
  const auto gen = pool.generation();
  EXPECT_THROW((void)pool.take(0ms, []() -> Handle { throw std::runtime_error("refused"); }), std::runtime_error);
  EXPECT_EQ(pool.open_count(), 0u);
  EXPECT_EQ(pool.generation(), gen + 1);
  Opener open;
  EXPECT_TRUE(pool.take(0ms, std::ref(open)));
}

TEST(Pool, ARetiredHandleFreesItsSlotAndSuspectsNothing) {
  Pool pool(2, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a && b);
  pool.give_back(std::move(*a), true);  // idle
  const auto gen = pool.generation();
  pool.retire(std::move(*b));  // closed on purpose, healthy
  EXPECT_EQ(pool.generation(), gen);
  EXPECT_EQ(pool.open_count(), 1u);
  auto c = pool.take(0ms, std::ref(open));  // the idle one is still good
  ASSERT_TRUE(c);
  EXPECT_EQ(c->handle->id, 1);
  auto d = pool.take(0ms, std::ref(open));  // and the retired one's slot is free
  ASSERT_TRUE(d);
  EXPECT_EQ(d->handle->id, 3);
  pool.give_back(std::move(*c), true);
  pool.give_back(std::move(*d), true);
}

TEST(Pool, AnEmptyHandleReservesASlotForAnAsynchronousOpen) {
  Pool pool(1, [](const Handle& h) { return h && !h->broken; });
  auto r = pool.take(0ms, [] { return Handle(); });  // reserved: opened later, without blocking
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->handle);
  EXPECT_EQ(pool.open_count(), 1u);
  Opener open;
  EXPECT_FALSE(pool.take(0ms, std::ref(open)));  // the reservation counts
  r->handle = std::make_shared<Conn>(Conn{7});   // the open succeeded
  pool.give_back(std::move(*r), true);
  auto a = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->handle->id, 7);
  pool.give_back(std::move(*a), true);
  // An open that failed: given back unhealthy, the slot is freed and the idle ones suspect.
  Pool other(1);
  auto f = other.take(0ms, [] { return Handle(); });
  ASSERT_TRUE(f);
  const auto gen = other.generation();
  other.give_back(std::move(*f), false);
  EXPECT_EQ(other.open_count(), 0u);
  EXPECT_EQ(other.generation(), gen + 1);
}

TEST(Pool, AChildDropsWhatItInherited) {
  Pool pool(2, [](const Handle& h) { return !h->broken; });
  Opener open;
  auto a = pool.take(0ms, std::ref(open));
  auto b = pool.take(0ms, std::ref(open));
  ASSERT_TRUE(a && b);
  pool.give_back(std::move(*a), true);  // idle in the parent; b stays checked out
  const auto gen = pool.generation();
  const auto out = dlock::test::in_child_while(
      [&]() -> std::string {
        if (pool.open_count() != 0 || pool.idle_count() != 0) return "inherited counts";
        auto c = pool.take(0ms, std::ref(open));
        if (!c || c->handle->id != 3) return "reused the parent's handle";
        if (pool.generation() != gen + 1) return "no generation bump";
        pool.give_back(std::move(*b), true);  // checked out before the fork: dropped uncounted
        if (pool.open_count() != 1 || pool.idle_count() != 0) return "counted a handle from before the fork";
        pool.give_back(std::move(*c), true);
        return "ok";
      },
      [] {});
  EXPECT_EQ(out, "ok");
  EXPECT_EQ(pool.open_count(), 2u);  // the parent is untouched
  EXPECT_EQ(pool.idle_count(), 1u);
  pool.give_back(std::move(*b), true);
}

}  // namespace
