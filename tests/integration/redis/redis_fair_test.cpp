// Fair (FIFO) mode of the mutex on a real redis-server (LockOptions::fair;
// issue 16 item 1): 8 processes on one lock take turns, a waiter killed while
// queued stalls the queue at most its waiter ttl (a real TTL on the server:
// that is the point), a release wakes only the head, and backends without
// fair mode reject the option.
#include <dlock/detail/redis_subscriber.hpp>
#include <dlock/dlock.hpp>
#include <dlock/memory.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "unit/test_support.hpp"

using namespace std::chrono_literals;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

static_assert(dlock::QueuesFairly<dlock::RedisBackend>);

class RedisFair : public dlock::test::RedisTest {
 protected:
  static dlock::LockOptions fair_options(std::chrono::milliseconds max_delay) {
    return {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = max_delay}, .fair = true};
  }
  long long queued(dlock::RedisBackend& admin, const std::string& name) {
    const auto r = admin.node().command({"ZCARD", key(name) + ":queue"});
    return r.integer;
  }
};

// Shared with the forked workers: the order of acquisitions.
struct Log {
  static constexpr int processes = 8;
  static constexpr int cycles = 300;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<int> next{0};
  std::atomic<int> failed{0};
  int who[processes * cycles];
};

TEST_F(RedisFair, EightProcessesTakeTurns) {
  void* mem = ::mmap(nullptr, sizeof(Log), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  Log* log = new (mem) Log;
  std::vector<pid_t> pids;
  for (int p = 0; p < Log::processes; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // a worker: its own backend, 300 short critical sections
      int code = 0;
      try {
        dlock::RedisBackend redis(options());
        dlock::Lock<dlock::RedisBackend> lock(redis, "turns", fair_options(100ms));
        log->ready.fetch_add(1);
        while (!log->go.load()) std::this_thread::yield();  // a start line, not a wait for an outcome
        for (int c = 0; c < Log::cycles; ++c) {
          lock.lock();
          log->who[log->next.fetch_add(1)] = p;  // the short hold: one read-modify-write
          lock.unlock();
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "worker %d: %s\n", p, e.what());
        log->failed.fetch_add(1);
        code = 1;
      }
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (log->ready.load() < Log::processes && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  log->go = true;
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(log->failed.load(), 0);
  const int n = log->next.load();
  ASSERT_EQ(n, Log::processes * Log::cycles);
  int changes = 0;
  int longest_run = 1, run = 1;  // in the middle 80%: the first and last turns may find fewer waiters
  for (int i = 1; i < n; ++i) {
    const bool same = log->who[i] == log->who[i - 1];
    if (!same) ++changes;
    run = same ? run + 1 : 1;
    if (i >= n / 10 && i < n * 9 / 10) longest_run = std::max(longest_run, run);
  }
  std::printf(
      "fair mode, %d processes x %d cycles: owner changes %d of %d acquisitions (%.1f%%), longest run (middle 80%%) "
      "%d, "
      "%.0f handoffs/s\n",
      Log::processes, Log::cycles, changes, n - 1, 100.0 * changes / (n - 1), longest_run, n / secs);
  EXPECT_GE(changes, (n - 1) * 9 / 10);
  // Every process's acquisitions interleave with the others': each takes a
  // turn in every tenth of the run, and none runs more than a few in a row.
  for (int part = 0; part < 10; ++part) {
    std::vector<int> seen(Log::processes);
    for (int i = part * n / 10; i < (part + 1) * n / 10; ++i) ++seen[log->who[i]];
    for (int p = 0; p < Log::processes; ++p) EXPECT_GT(seen[p], 0) << "process " << p << " in tenth " << part;
  }
  EXPECT_LE(longest_run, 3);
  ::munmap(mem, sizeof(Log));
}

TEST_F(RedisFair, AWaiterKilledWhileQueuedStallsTheQueueAtMostItsWaiterTtl) {
  // Real TTLs on the server are the point here: the dead waiter's place lapses after its waiter ttl.
  const auto opts = fair_options(200ms);
  const auto waiter_ttl = dlock::detail::fair_waiter_ttl(opts);  // 1 s
  dlock::RedisBackend admin(options());
  dlock::RedisBackend redis(options());
  dlock::Lock<dlock::RedisBackend> holder(redis, "q", opts);
  holder.lock();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the waiter that dies in the queue: a backend of its own
    dlock::RedisBackend own(options());
    dlock::Lock<dlock::RedisBackend> lock(own, "q", opts);
    lock.lock();
    ::_exit(3);  // it must never get the lock
  }
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (queued(admin, "q") < 1 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(queued(admin, "q"), 1) << "the child never queued";
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));

  dlock::Lock<dlock::RedisBackend> next(redis, "q", opts);
  std::atomic<bool> got{false};
  std::chrono::steady_clock::time_point got_at{};
  std::thread t([&] {
    got = next.try_lock_for(10s);
    got_at = std::chrono::steady_clock::now();
  });
  while (queued(admin, "q") < 2 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
  const auto released_at = std::chrono::steady_clock::now();
  holder.unlock();
  t.join();
  ASSERT_TRUE(got);
  const auto stalled = std::chrono::duration_cast<std::chrono::milliseconds>(got_at - released_at);
  std::printf("behind a killed waiter (waiter ttl %lld ms), the next one got the lock %lld ms after the release\n",
              static_cast<long long>(waiter_ttl.count()), static_cast<long long>(stalled.count()));
  EXPECT_LE(stalled, waiter_ttl + opts.retry.max_delay + 300ms);
  next.unlock();
}

TEST_F(RedisFair, AReleaseWakesOnlyTheWaiterItNames) {
  dlock::RedisBackend redis(options());
  dlock::RedisBackend admin(options());
  const auto a = dlock::OwnerId::generate();
  const auto b = dlock::OwnerId::generate();
  auto sub_a = redis.subscribe_release("w", a);
  auto sub_b = redis.subscribe_release("w", b);
  auto plain = redis.subscribe_release("w");
  const std::string channel = redis_keys_for("w").channel;
  (void)admin.node().command({"PUBLISH", channel, std::string(a.str())});
  EXPECT_TRUE(sub_a.wait_for(2s));
  EXPECT_TRUE(plain.wait_for(2s));
  EXPECT_FALSE(sub_b.wait_for(50ms));  // named another waiter
  (void)admin.node().command({"PUBLISH", channel, ""});
  EXPECT_TRUE(sub_b.wait_for(2s));  // names nobody: everyone may look
}

// A process that queues for the same lock again and again (its own backend,
// as each of 8 processes has) keeps its pub/sub subscription between its
// acquires (RedisSubscriber::linger): each return to the queue costs one
// script call, not a SUBSCRIBE round trip, a second attempt and an
// UNSUBSCRIBE; and the channel is still unsubscribed once it lingered.
TEST_F(RedisFair, AWaiterBackInTheQueueKeepsItsSubscription) {
  dlock::RedisBackend admin(options());
  dlock::RedisBackend holder_backend(options());
  dlock::RedisBackend waiter_backend(options());
  const auto opts = fair_options(200ms);
  dlock::Lock<dlock::RedisBackend> holder(holder_backend, "back", opts);
  dlock::Lock<dlock::RedisBackend> waiter(waiter_backend, "back", opts);
  const std::string channel = redis_keys_for("back").channel;
  const auto stat = [&](std::string_view cmd) {  // calls of `cmd` the server answered so far
    const std::string info = admin.node().command({"INFO", "commandstats"}).str;
    const std::string field = "cmdstat_" + std::string(cmd) + ":calls=";
    const auto at = info.find(field);
    return at == std::string::npos ? 0LL : std::atoll(info.c_str() + at + field.size());
  };
  constexpr int cycles = 10;
  const long long subscribes_before = stat("subscribe");
  for (int c = 0; c < cycles; ++c) {
    ASSERT_TRUE(holder.try_lock());
    std::thread t([&] { waiter.lock(); });  // contended: it queues and waits on its subscription
    const bool queued_up = dlock::test::eventually([&] { return queued(admin, "back") == 1; }, 5s);
    holder.unlock();
    t.join();
    waiter.unlock();
    ASSERT_TRUE(queued_up) << "cycle " << c;
  }
  const long long subscribes = stat("subscribe") - subscribes_before;
  std::printf("%d returns to the queue: %lld SUBSCRIBEs\n", cycles, subscribes);
  EXPECT_LE(subscribes, 1) << "each return to the queue subscribed again";
  EXPECT_TRUE(waiter_backend.release_subscribed("back")) << "the subscription did not outlive the acquire";
  const auto numsub = [&] { return admin.node().command({"PUBSUB", "NUMSUB", channel}).elements.at(1).integer; };
  EXPECT_TRUE(dlock::test::eventually([&] { return numsub() == 0; }, dlock::detail::RedisSubscriber::linger + 3s))
      << "still subscribed after the linger";
  EXPECT_FALSE(waiter_backend.release_subscribed("back"));
}

TEST_F(RedisFair, ABackendWithoutFairModeRejectsItNamingTheField) {
  dlock::MemoryBackend memory;
  try {
    dlock::Lock<dlock::MemoryBackend> lock(memory, "m", {.fair = true});
    FAIL() << "no error";
  } catch (const dlock::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("LockOptions.fair"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'m'"), std::string::npos) << e.what();
  }
}

}  // namespace
