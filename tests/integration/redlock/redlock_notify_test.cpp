// Redlock release notifications over five real redis-servers:
//  - a waiter with a 30 s backoff is woken by the holder's release, also with
//    two of the five nodes killed and with one node paused;
//  - a down node (paused or killed) is retried at most once a second, not
//    for every subscription;
//  - a failed attempt's cleanup (releasing its partial grants) publishes
//    nothing, while a real release does publish on every node;
//  - subscriptions are shared per backend and none is left behind;
//  - a backend whose locks never wait starts no thread.
#include <dlock/detail/redis_transport.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "redlock_test_support.hpp"
#include "unit/test_support.hpp"

using namespace std::chrono_literals;
using dlock::test::eventually;
using dlock::test::RedlockCluster;
using dlock::test::RedlockTest;
using RedlockLock = dlock::Lock<dlock::RedlockBackend>;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

namespace {

// A pub/sub connection of the test's own, on the transport's subscriber mode.
class RawSubscriber {
 public:
  explicit RawSubscriber(const dlock::RedisOptions& o)
      : got_(std::make_shared<Got>()),
        link_(dlock::detail::RedisLink::open(o, {.load_scripts = false, .check_eviction = false},
                                             {.push =
                                                  [got = got_](dlock::detail::RedisValue v) {
                                                    {
                                                      std::lock_guard lk(got->mu);
                                                      got->replies.push_back(std::move(v));
                                                    }
                                                    got->cv.notify_all();
                                                  },
                                              .up = {},
                                              .lost = {}})) {}
  dlock::detail::RedisValue subscribe(std::string_view channel) {
    dlock::detail::RedisCall call;
    call.request.push({"SUBSCRIBE", channel});
    link_.send(std::move(call), {});
    return next();
  }
  /// The next reply (an empty one after 5 s).
  dlock::detail::RedisValue next() {
    std::unique_lock lk(got_->mu);
    if (!got_->cv.wait_for(lk, 5s, [&] { return !got_->replies.empty(); })) return {};
    auto v = std::move(got_->replies.front());
    got_->replies.pop_front();
    return v;
  }

 private:
  struct Got {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<dlock::detail::RedisValue> replies;
  };
  std::shared_ptr<Got> got_;
  dlock::detail::RedisLink link_;
};

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new RedlockCluster(5));

// A waiter that would sleep 30 s between attempts without notifications.
constexpr dlock::RetryPolicy slow_retry{.initial_delay = 30s, .max_delay = 30s, .jitter = dlock::Jitter::none};

class RedlockNotifyTest : public RedlockTest {
 public:
  [[nodiscard]] std::string channel(std::string_view name) const {
    return dlock::detail::redis_keys(prefix_, name).channel;
  }
  /// PUBSUB NUMSUB of `name`'s release channel on node i.
  long long subscribers(std::size_t i, std::string_view name) {
    return cmd(i, {"PUBSUB", "NUMSUB", channel(name)}).elements.at(1).integer;
  }
  /// Whether every listed node has `n` subscribers on `name`'s channel.
  bool subscribed_everywhere(std::string_view name, long long n, std::initializer_list<std::size_t> nodes) {
    for (std::size_t i : nodes)
      if (subscribers(i, name) != n) return false;
    return true;
  }

  // The holder takes `name`; a waiter on another backend (another process,
  // as far as the servers can tell) blocks with a 30 s backoff; once it has
  // subscribed on `live` nodes the holder releases. Returns how long after
  // the release the waiter held the lock.
  Ms wake_latency(const dlock::RedlockOptions& o, std::string_view name, std::initializer_list<std::size_t> live) {
    dlock::RedlockBackend a(o), b(o);
    RedlockLock holder(a, std::string(name), {.ttl = 30s, .observer = quiet()});
    EXPECT_TRUE(holder.try_lock());
    auto obs = std::make_shared<dlock::test::RecordingObserver>();
    RedlockLock waiter(b, std::string(name), {.ttl = 30s, .retry = slow_retry, .observer = obs});
    std::atomic<bool> got{false};
    Clock::time_point acquired_at{};
    std::thread t([&] {
      got = waiter.try_lock_for(10s);  // without notifications: false after 10 s
      acquired_at = Clock::now();
    });
    EXPECT_TRUE(eventually([&] { return subscribed_everywhere(name, 1, live); }, 3s))
        << "the waiter never subscribed on every live node";
    // Its subscription (which also waits for a paused node) and its attempt
    // after subscribing are done: it waits now.
    EXPECT_TRUE(eventually([&] { return obs->count(dlock::EventType::contended) >= 2; }, 5s))
        << "the waiter never tried again after subscribing";
    const auto released_at = Clock::now();
    holder.unlock();
    t.join();
    EXPECT_TRUE(got) << "the waiter slept through the release";
    if (!got) return 10s;
    const auto latency = std::chrono::duration_cast<Ms>(acquired_at - released_at);
    std::printf("woken and acquired %lld ms after the release (backoff 30 s)\n",
                static_cast<long long>(latency.count()));
    waiter.unlock();
    return latency;
  }
};

std::size_t process_threads() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("Threads:", 0) == 0) return std::stoul(line.substr(8));
  return 0;
}

TEST_F(RedlockNotifyTest, WaiterWakesWithTwoOfFiveNodesKilled) {
  server(1).kill();
  server(3).kill();
  const Ms latency = wake_latency(options(), "wake-2-down", {0, 2, 4});
  EXPECT_LT(latency, 2s) << "woke " << latency.count() << " ms after the release";
  EXPECT_TRUE(eventually([&] { return subscribed_everywhere("wake-2-down", 0, {0, 2, 4}); }, 3s));
}

TEST_F(RedlockNotifyTest, WaiterWakesWithANodePausedAndThatNodeCostsASubscribeAtMostTwoNodeTimeouts) {
  auto o = options();
  o.node_timeout = 200ms;  // roomy enough that the live nodes always make it on a loaded machine
  dlock::RedlockBackend rl(o);
  server(2).pause();
  // A subscription waits for the paused node at most 2 x node_timeout (connect, then acknowledgement).
  const auto t0 = Clock::now();
  auto sub = rl.subscribe_release("probe");
  const auto took = Clock::now() - t0;
  EXPECT_LT(took, 2 * o.node_timeout + 400ms) << std::chrono::duration_cast<Ms>(took).count() << " ms";
  EXPECT_EQ(sub.acknowledged(), 4u);
  const Ms latency = wake_latency(o, "wake-paused", {0, 1, 3, 4});
  EXPECT_LT(latency, 2s) << "woke " << latency.count() << " ms after the release";
}

TEST_F(RedlockNotifyTest, APausedNodeDoesNotCostEverySubscriptionItsTimeout) {
  auto o = options();
  o.node_timeout = 200ms;
  dlock::RedlockBackend rl(o);
  server(2).pause();
  // Each subscription waits for the paused node only when its connection is
  // (re)tried: on the first one, then at most once per second. Waiting on
  // every one would take 20 x node_timeout at least.
  constexpr int subscriptions = 20;
  const auto t0 = Clock::now();
  for (int i = 0; i < subscriptions; ++i) {
    auto sub = rl.subscribe_release("paused-backoff");
    EXPECT_LE(sub.acknowledged(), 4u);
  }
  const auto took = Clock::now() - t0;
  EXPECT_LT(took, 10 * o.node_timeout) << std::chrono::duration_cast<Ms>(took).count() << " ms for " << subscriptions
                                       << " subscriptions";
}

TEST_F(RedlockNotifyTest, AKilledNodeIsNotReconnectedForEverySubscription) {
  // The backend's subscriber, with roomy timeouts so that live nodes never fail here.
  std::vector<dlock::detail::RedisSubscriber::Server> servers;
  for (std::size_t i = 0; i < 5; ++i) {
    dlock::RedisOptions n = server(i).options();
    n.connect_timeout = n.command_timeout = 2s;
    servers.push_back({n, dlock::detail::redis_endpoint(n)});
  }
  dlock::detail::RedisSubscriber subscriber(std::move(servers));
  server(1).kill();
  constexpr int subscriptions = 20;
  const auto t0 = Clock::now();
  for (int i = 0; i < subscriptions; ++i) {
    auto sub = subscriber.subscribe(channel("killed-backoff"));
    EXPECT_EQ(sub.acknowledged(), 4u);
  }
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - t0).count();
  // One refused connect, then at most one more per second (one per subscription without the backoff).
  EXPECT_LE(subscriber.failures(), static_cast<std::uint64_t>(2 + seconds));
}

TEST_F(RedlockNotifyTest, AFailedAttemptsCleanupPublishesNothingButARealReleaseDoes) {
  const std::string ch = channel("split");
  // A raw subscriber on every node. PUBLISH of a marker after the operation
  // under test: Redis delivers in order, so whatever the operation published
  // arrives before the marker.
  std::vector<std::unique_ptr<RawSubscriber>> raw;
  for (std::size_t i = 0; i < 5; ++i) {
    raw.push_back(std::make_unique<RawSubscriber>(server(i).options()));
    const auto ack = raw.back()->subscribe(ch);
    ASSERT_EQ(ack.elements.at(0).str, "subscribe");
  }
  const auto next_message = [&](std::size_t i, std::string_view marker) {
    EXPECT_EQ(cmd(i, {"PUBLISH", ch, marker}).integer, 2) << "node " << i;  // raw, and the backend's
    const auto m = raw[i]->next();
    return m.elements.size() == 3 ? m.elements[2].str : std::string("?");
  };

  // Another owner holds 3 of 5 nodes: our attempt gets nodes 3 and 4, and
  // releases them again before it returns.
  for (std::size_t i : {0u, 1u, 2u}) ASSERT_EQ(cmd(i, {"SET", key("split"), "someone-else", "PX", "10000"}).str, "OK");
  auto o = options();
  o.node_timeout = 500ms;  // every node acknowledges, also on a loaded machine
  dlock::RedlockBackend rl(o);
  auto waiting = rl.subscribe_release("split");  // as a blocked Lock would be
  ASSERT_EQ(waiting.acknowledged(), 5u);
  const auto owner = dlock::OwnerId::generate();
  ASSERT_TRUE(std::holds_alternative<dlock::Contended>(rl.try_acquire({"split", owner, 10s, Clock::now()})));
  EXPECT_EQ(keys_present("split"), 3u) << "the partial grants were not released";
  EXPECT_FALSE(waiting.wait_for(300ms)) << "the cleanup woke a waiter";
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(next_message(i, "marker-1"), "marker-1") << "node " << i;

  // Control: a real release publishes the owner on every node that held it.
  for (std::size_t i : {0u, 1u, 2u}) (void)cmd(i, {"DEL", key("split")});
  while (waiting.wait_for(100ms)) {
  }  // the markers woke it
  RedlockLock lock(rl, "split", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  const std::string holder(lock.owner_id());
  lock.unlock();
  EXPECT_TRUE(waiting.wait_for(2s));
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(next_message(i, "marker-2"), holder) << "node " << i;
}

TEST_F(RedlockNotifyTest, SubscriptionsAreSharedPerBackendAndNoneIsLeftBehind) {
  dlock::RedlockBackend a(options()), b(options()), c(options());
  RedlockLock holder(a, "herd", {.ttl = 30s});
  ASSERT_TRUE(holder.try_lock());
  // Four waiters on two backends: two subscribers per node, not four.
  constexpr int waiters = 4;
  std::atomic<int> acquired{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < waiters; ++w) {
    threads.emplace_back([&, w] {
      RedlockLock l(w % 2 == 0 ? b : c, "herd",
                    {.ttl = 30s, .retry = {.initial_delay = 50ms, .max_delay = 200ms}, .observer = quiet()});
      if (l.try_lock_for(20s)) {
        ++acquired;
        std::this_thread::sleep_for(5ms);  // the critical section
        l.unlock();
      }
    });
  }
  const auto every_node_has = [&](long long n) { return subscribed_everywhere("herd", n, {0, 1, 2, 3, 4}); };
  EXPECT_TRUE(eventually([&] { return every_node_has(2); }, 3s))
      << "expected one pub/sub connection per backend and node, shared by its waiters";
  holder.unlock();
  for (auto& t : threads) t.join();
  EXPECT_EQ(acquired.load(), waiters);
  EXPECT_TRUE(eventually([&] { return every_node_has(0); }, 3s)) << "subscriptions left behind";
  EXPECT_EQ(keys_present("herd"), 0u);
}

TEST_F(RedlockNotifyTest, ABackendWhoseLocksNeverWaitStartsNoThread) {
  const std::size_t before = process_threads();
  ASSERT_GT(before, 0u);
  dlock::RedlockBackend rl(options()), other(options());
  RedlockLock lock(rl, "lazy", {.ttl = 10s, .observer = quiet()});
  RedlockLock holder(other, "lazy", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();
  ASSERT_TRUE(holder.try_lock());
  EXPECT_FALSE(lock.try_lock());  // one attempt: contended, no subscription
  EXPECT_LE(process_threads(), before) << "a backend that never waited started a thread";
  EXPECT_FALSE(lock.try_lock_for(100ms));  // waits: subscribes, starting the transport's I/O thread if none runs yet
  EXPECT_LE(process_threads(), before + 1);
  holder.unlock();
}

}  // namespace
