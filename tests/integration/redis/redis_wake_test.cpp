// Wake-one in default (barging) mode on RedisBackend (a real redis-server): a
// release wakes one blocking waiter of a backend, not all of them; a woken
// waiter that does not take the lock passes the wake on; a release that
// finds nobody waiting is kept for the next wait.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"

using namespace std::chrono_literals;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

class RedisWake : public dlock::test::RedisTest {
 protected:
  // Script calls (EVALSHA + EVAL) the server has answered: dlock's round trips.
  double script_calls() {
    const std::string info = cmd({"INFO", "commandstats"}).str;
    double total = 0;
    for (const std::string_view c : {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="}) {
      const auto at = info.find(c);
      if (at != std::string::npos) total += std::atof(info.c_str() + at + c.size());
    }
    return total;
  }
  void publish(std::string_view name) { (void)cmd({"PUBLISH", redis().node().keys(name).channel, "x"}); }
};

// The symptom: every release woke every waiter of the process, all
// retried, one won (21 calls per acquisition at 48 waiters before wake-one;
// 3.3-4.1 after on a loaded machine, 5.0 under TSan).
TEST_F(RedisWake, ManyWaitersOfOneBackendCostFewCallsPerHandoff) {
  constexpr int waiters = 48, target = 1500;
  std::atomic<int> acquisitions{0};
  std::atomic<bool> stop{false};
  const double before = script_calls();
  std::vector<std::thread> threads;
  for (int i = 0; i < waiters; ++i) {
    threads.emplace_back([&] {
      dlock::Lock<dlock::RedisBackend> lock(redis(), "busy", {.ttl = 10s});  // the default retry policy
      while (!stop.load()) {
        if (!lock.try_lock_for(10s)) continue;
        if (acquisitions.fetch_add(1) + 1 >= target) stop = true;
        lock.unlock();
      }
    });
  }
  for (auto& t : threads) t.join();
  const double per = (script_calls() - before) / acquisitions.load();
  EXPECT_LE(per, 8.0) << acquisitions.load() << " acquisitions";
  std::printf("%d waiters: %.2f script calls per acquisition\n", waiters, per);
}

TEST_F(RedisWake, OneReleaseWakesOneWaiter) {
  constexpr int n = 6;
  std::vector<dlock::RedisBackend::Subscription> subs;
  for (int i = 0; i < n; ++i) subs.push_back(redis().subscribe_release_one("one"));
  std::atomic<int> woken{0};
  std::vector<std::thread> threads;
  for (auto& s : subs) {
    threads.emplace_back([&s, &woken] {
      if (s.wait_for(1500ms)) {
        ++woken;
        s.taken();  // used: not passed on
      }
    });
  }
  publish("one");
  for (auto& t : threads) t.join();
  EXPECT_EQ(woken.load(), 1);
}

TEST_F(RedisWake, AWakeNobodyWaitedForIsKeptForTheNextWait) {
  auto a = redis().subscribe_release_one("kept");
  auto b = redis().subscribe_release_one("kept");
  publish("kept");
  EXPECT_TRUE(a.wait_for(2s));  // kept until a waits (or delivered to it waiting)
  a.taken();
  EXPECT_FALSE(b.wait_for(100ms));  // one release, one wake
}

TEST_F(RedisWake, AWokenWaiterThatGivesUpPassesTheWakeOn) {
  auto b = redis().subscribe_release_one("pass");
  {
    auto a = redis().subscribe_release_one("pass");
    publish("pass");
    ASSERT_TRUE(a.wait_for(2s));
  }  // a gives up holding the wake: b gets it
  EXPECT_TRUE(b.wait_for(2s));
}

TEST_F(RedisWake, AWakeTakenOrUsedByAContendedAttemptIsNotPassedOn) {
  auto b = redis().subscribe_release_one("used");
  {
    auto a = redis().subscribe_release_one("used");
    publish("used");
    ASSERT_TRUE(a.wait_for(2s));
    a.taken();
  }
  EXPECT_FALSE(b.wait_for(100ms));
  {
    auto a = redis().subscribe_release_one("used");
    publish("used");
    ASSERT_TRUE(b.wait_for(2s));
    EXPECT_FALSE(b.wait_for(50ms));  // waiting again: its attempt found a holder, whose release wakes the next
  }
  EXPECT_FALSE(b.wait_for(50ms));
}

}  // namespace
