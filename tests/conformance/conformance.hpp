// The conformance suite: the behaviour every backend must share, written once
// and run against each backend through a fixture type (GoogleTest
// type-parameterised tests). A backend joins with one line in a
// *_conformance_test.cpp file:
//
//   INSTANTIATE_TYPED_TEST_SUITE_P(Redis, Conformance, dlock::conformance::RedisFixture);
//
// A fixture F (memory_fixture.hpp is the smallest) provides:
//
//   using Backend                      the backend under test
//   static constexpr Traits traits     what it cannot do (with the reason), its outage
//                                      behaviour, and the size of the exclusion workloads
//   static void start_servers()        once per suite (SetUpTestSuite); throws if it cannot
//   static void stop_servers()         once per suite (TearDownTestSuite)
//   void set_up(const std::string& id) per test: isolation (key prefix, lock namespace)
//   void tear_down()                   per test: clean-up
//   Backend make()                     a new client of the lock service, as another
//                                      process would have (its own connections)
//   void force_delete(std::string_view name)
//                                      the lock vanishes behind its holder's back (an
//                                      operator's DEL, pg_terminate_backend, force_release)
//   unless traits.no_outage:
//   Backend make_faulty()              a client whose connections pass a FaultProxy
//   void cut(), silence(), heal()      make the service unreachable for it (connections
//                                      reset, or no answers), and back
//   WaitsOnServer backends also:
//   bool has_waiter(std::string_view name)  a request for `name` is queued on the server
//
// Scenarios a fixture cannot support are skipped with its reason. Real short
// TTLs (a few hundred ms) are used where the server's expiry is the point;
// each such test says so.
#pragma once

#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "unit/test_support.hpp"

namespace dlock::conformance {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

/// What a fixture's backend can be asked to do, and how big its workloads are.
struct Traits {
  const char* no_processes = nullptr;  ///< why forked processes cannot share its locks; null: they can
  const char* no_outage = nullptr;     ///< why its service cannot be made unreachable; null: it can
  const char* no_fencing = nullptr;    ///< why it issues no fencing tokens; null: it does
  /// An acquire during an outage is served by a fallback (reported `degraded`)
  /// instead of failing closed with ConnectionError.
  bool outage_degrades = false;
  /// The event of a release the service cannot receive: release_failed (the
  /// lock expires by its TTL), or release_not_held where losing the connection
  /// itself frees the lock (a PostgreSQL session).
  EventType release_outage = EventType::release_failed;
  /// The reason a holder is given when its lock is deleted behind its back
  /// (force_delete): taken, or connection where deleting it ends the session.
  LostReason deleted_reason = LostReason::taken;
  int threads = 4;  ///< mutual exclusion across threads: threads x cycles
  int cycles = 100;
  int processes = 4;  ///< mutual exclusion across processes: processes x process_cycles
  int process_cycles = 50;
};

/// Built with ThreadSanitizer, which cannot run threads in a forked child.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool thread_sanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool thread_sanitizer = true;
#else
inline constexpr bool thread_sanitizer = false;
#endif
#else
inline constexpr bool thread_sanitizer = false;
#endif

inline Ms since(SteadyClock::time_point t0) { return std::chrono::duration_cast<Ms>(SteadyClock::now() - t0); }

/// Fixtures whose service can be made unreachable (see the top of this file).
template <class F>
concept HasOutage = requires(F& f) {
  f.make_faulty();
  f.cut();
  f.silence();
  f.heal();
};

/// Drops every event (tests that provoke warnings on purpose).
struct QuietObserver : Observer {
  void on_event(const Event&) noexcept override {}
};

/// Short backoff for the contention workloads.
inline constexpr RetryPolicy fast_retry{.initial_delay = std::chrono::milliseconds(1),
                                        .max_delay = std::chrono::milliseconds(20)};

template <class F>
class Conformance : public ::testing::Test {
 public:
  using Backend = typename F::Backend;
  using L = Lock<Backend>;

  static void SetUpTestSuite() {
    try {
      F::start_servers();
      start_error() = {};
    } catch (const std::exception& e) {
      start_error() = e.what();
    }
  }
  static void TearDownTestSuite() { F::stop_servers(); }

  void SetUp() override {
    ASSERT_TRUE(start_error().empty()) << "the servers did not start: " << start_error();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    fx_.set_up(std::string(info->test_suite_name()) + "." + info->name());
  }
  void TearDown() override {
    if (start_error().empty()) fx_.tear_down();
  }

 protected:
  static std::string& start_error() {
    static std::string error;
    return error;
  }
  /// The test's lock name, with an optional suffix.
  static std::string name(std::string_view suffix = {}) {
    return std::string("conformance") + (suffix.empty() ? "" : ":") + std::string(suffix);
  }
  /// `o`, reporting to a quiet observer unless it names one.
  static LockOptions options(LockOptions o = {}) {
    if (!o.observer) o.observer = std::make_shared<QuietObserver>();
    return o;
  }
  static std::shared_ptr<test::RecordingObserver> recorder() { return std::make_shared<test::RecordingObserver>(); }
  static std::string events(const test::RecordingObserver& o) {
    std::string out;
    for (const auto& e : o.events()) out += std::string(to_string(e.type)) + "(" + e.reason + ") ";
    return out;
  }

  // Takes the lock with auto_extend through the fault proxy, applies `fault`,
  // and checks that the holder is told no later than its validity ends: every
  // extension from the fault on fails, so the validity ends at most one TTL
  // after the last one sent before it.
  template <class Fault>
  void loss_during_hold_is_signalled_by_the_validity_end(Fault fault, const char* what) {
    constexpr auto ttl = 1s;
    auto faulty = fx_.make_faulty();
    auto obs = recorder();
    L lock(faulty, name(), {.ttl = ttl, .auto_extend = true, .observer = obs});
    ASSERT_TRUE(lock.try_lock());
    std::mutex mu;
    std::optional<SteadyClock::time_point> stopped_at;
    std::stop_callback on_stop(lock.stop_token(), [&] {
      std::lock_guard lk(mu);
      stopped_at = SteadyClock::now();
    });
    fault();
    const auto fault_at = SteadyClock::now();
    const bool told = test::eventually(
        [&] {
          std::lock_guard lk(mu);
          return stopped_at.has_value();
        },
        ttl + 5s);
    fx_.heal();  // lets a hung extension finish now rather than at its timeout
    ASSERT_TRUE(told) << "the holder was never told; events: " << events(*obs);
    std::lock_guard lk(mu);
    std::printf("%s during the hold signalled %lld ms after the fault (ttl %lld ms)\n", what,
                static_cast<long long>(std::chrono::duration_cast<Ms>(*stopped_at - fault_at).count()),
                static_cast<long long>(Ms(ttl).count()));
    EXPECT_LE(*stopped_at - fault_at, ttl + 500ms) << "told after its validity ended";
    EXPECT_FALSE(lock.owns_lock());
    EXPECT_EQ(obs->count(EventType::lost), 1u) << events(*obs);
  }

  F fx_;
};

TYPED_TEST_SUITE_P(Conformance);

// ---- mutual exclusion and fencing ----

// N threads x M cycles, each thread with its own client and Lock, increment a
// counter that only the lock protects (a separate load and store: two holders
// at once lose an increment) and record the token in acquisition order.
TYPED_TEST_P(Conformance, MutualExclusionAcrossThreads) {
  constexpr auto traits = TypeParam::traits;
  const int total = traits.threads * traits.cycles;
  std::atomic<long> counter{0};
  std::vector<std::atomic<std::uint64_t>> tokens(static_cast<std::size_t>(total) + 1);
  std::atomic<int> errors{0};
  const auto t0 = SteadyClock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < traits.threads; ++t) {
    threads.emplace_back([&] {
      try {
        auto backend = this->fx_.make();
        typename TestFixture::L lock(backend, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
        for (int i = 0; i < traits.cycles; ++i) {
          std::scoped_lock hold(lock);
          const long c = counter.load(std::memory_order_relaxed);
          if (!traits.no_fencing && c <= total)
            tokens[static_cast<std::size_t>(c)].store(lock.fencing_token(), std::memory_order_relaxed);
          std::this_thread::yield();
          counter.store(c + 1, std::memory_order_relaxed);
        }
      } catch (const std::exception& e) {
        ++errors;
        ADD_FAILURE() << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  std::printf("%d threads x %d cycles: %lld ms\n", traits.threads, traits.cycles,
              static_cast<long long>(since(t0).count()));
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(counter.load(), total) << "lost updates: two threads held the lock at once";
  if (traits.no_fencing) return;
  int out_of_order = 0;
  for (int i = 1; i < total; ++i)
    out_of_order += tokens[static_cast<std::size_t>(i)].load() <= tokens[static_cast<std::size_t>(i - 1)].load();
  EXPECT_EQ(out_of_order, 0) << "fencing tokens not strictly increasing in acquisition order";
}

// As above with forked processes, each opening its own client after the
// fork; the counter, the tokens and the owner ids live in shared memory. The
// parent has used the lock before forking, as a server that forks workers
// would have.
TYPED_TEST_P(Conformance, MutualExclusionAndTokensAcrossProcesses) {
  constexpr auto traits = TypeParam::traits;
  if (traits.no_processes) GTEST_SKIP() << traits.no_processes;
  if (thread_sanitizer) GTEST_SKIP() << "ThreadSanitizer does not support starting threads in a forked child";
  constexpr int max_entries = 4096;
  const int total = traits.processes * traits.process_cycles;
  ASSERT_LE(total, max_entries);
  struct Shared {
    std::atomic<long> counter;
    std::atomic<std::uint64_t> tokens[max_entries];
    char owners[max_entries][40];
  };
  static_assert(std::atomic<long>::is_always_lock_free && std::atomic<std::uint64_t>::is_always_lock_free);
  void* mem = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* shared = new (mem) Shared{};
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, sizeof(Shared)); }
  } unmap{mem};

  auto backend = this->fx_.make();
  typename TestFixture::L parents(backend, this->name(), this->options({.ttl = 10s}));
  ASSERT_TRUE(parents.try_lock());
  parents.unlock();

  const auto t0 = SteadyClock::now();
  std::vector<pid_t> pids;
  for (int p = 0; p < traits.processes; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0) << "fork failed";
    if (pid == 0) {
      ::alarm(120);  // a hung child must not hang the suite
      int rc = 0;
      try {
        auto own = this->fx_.make();
        typename TestFixture::L lock(own, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
        for (int i = 0; i < traits.process_cycles; ++i) {
          std::scoped_lock hold(lock);
          const long c = shared->counter.load(std::memory_order_relaxed);
          if (c >= 0 && c < max_entries) {
            if (!traits.no_fencing) shared->tokens[c].store(lock.fencing_token(), std::memory_order_relaxed);
            const std::string owner(lock.owner_id());
            std::snprintf(shared->owners[c], sizeof shared->owners[c], "%s", owner.c_str());
          }
          ::usleep(100);  // widen the window a broken lock would let another process into
          shared->counter.store(c + 1, std::memory_order_relaxed);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", static_cast<int>(::getpid()), e.what());
        rc = 1;
      }
      ::_exit(rc);
    }
    pids.push_back(pid);
  }
  for (const pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << pid << " status " << status;
  }
  std::printf("%d processes x %d cycles: %lld ms\n", traits.processes, traits.process_cycles,
              static_cast<long long>(since(t0).count()));
  ASSERT_EQ(shared->counter.load(), total) << "lost updates: two processes held the lock at once";
  // Owner ids are UUIDv7: a millisecond timestamp, then random bits. Compare
  // the last 62 random bits ("vrrr-rrrrrrrrrrrr"), so that processes drawing
  // the same sequence (a generator copied by fork) show even when their
  // acquisitions fall in different milliseconds.
  std::set<std::string> random_parts;
  for (int i = 0; i < total; ++i) random_parts.insert(std::string(shared->owners[i]).substr(19));
  EXPECT_EQ(random_parts.size(), static_cast<std::size_t>(total))
      << "acquisitions in different processes drew the same random bits for their owner ids";
  if (!traits.no_fencing) {
    int out_of_order = 0;
    for (int i = 1; i < total; ++i) out_of_order += shared->tokens[i].load() <= shared->tokens[i - 1].load();
    EXPECT_EQ(out_of_order, 0) << "fencing tokens not strictly increasing in acquisition order";
  }
  EXPECT_TRUE(parents.try_lock()) << "the children left the lock held";
}

TYPED_TEST_P(Conformance, TokensStrictlyIncreaseAcrossAcquisitions) {
  constexpr auto traits = TypeParam::traits;
  if (traits.no_fencing) GTEST_SKIP() << traits.no_fencing;
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  typename TestFixture::L a(b1, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
  typename TestFixture::L b(b2, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
  std::uint64_t last = 0;
  for (int i = 0; i < 12; ++i) {  // two clients taking turns, through both the single and the waiting acquire
    auto& l = i % 2 ? b : a;
    ASSERT_TRUE(i % 3 ? l.try_lock() : l.try_lock_for(2s)) << i;
    const std::uint64_t token = l.fencing_token();
    EXPECT_GT(token, last) << i;
    last = token;
    l.unlock();
  }
}

// ---- contention ----

TYPED_TEST_P(Conformance, TryLockOnContentionReturnsFalseWithoutThrowing) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  typename TestFixture::L holder(b1, this->name(), this->options({.ttl = 10s}));
  auto obs = this->recorder();
  typename TestFixture::L other(b2, this->name(), {.ttl = 10s, .observer = obs});
  ASSERT_TRUE(holder.try_lock());
  bool got = true;
  EXPECT_NO_THROW(got = other.try_lock());
  EXPECT_FALSE(got);
  EXPECT_FALSE(other.owns_lock());
  EXPECT_TRUE(holder.owns_lock());
  EXPECT_EQ(obs->count(EventType::contended), 1u) << this->events(*obs);
  holder.unlock();
  EXPECT_TRUE(other.try_lock());
}

TYPED_TEST_P(Conformance, TimedTryLockReturnsFalseAfterAboutItsTimeout) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  typename TestFixture::L holder(b1, this->name(), this->options({.ttl = 10s}));
  typename TestFixture::L other(b2, this->name(), this->options({.ttl = 10s, .retry = {.initial_delay = 5ms}}));
  ASSERT_TRUE(holder.try_lock());
  const auto t0 = SteadyClock::now();
  bool got = true;
  EXPECT_NO_THROW(got = other.try_lock_for(400ms));
  const Ms took = since(t0);
  std::printf("try_lock_for(400ms) on a held lock returned after %lld ms\n", static_cast<long long>(took.count()));
  EXPECT_FALSE(got);
  EXPECT_GE(took, 390ms);
  EXPECT_LT(took, 400ms + 1s);
  EXPECT_FALSE(other.owns_lock());
}

// A Lock is not recursive: every acquire form by the holding thread fails at
// once with DeadlockError, before the service is asked, and leaves the hold alone.
TYPED_TEST_P(Conformance, ReentryByTheHoldingThreadFailsAtOnce) {
  auto b = this->fx_.make();
  typename TestFixture::L lock(b, this->name(), this->options({.ttl = 10s, .acquire_timeout = 2s}));
  ASSERT_TRUE(lock.try_lock());
  const auto t0 = SteadyClock::now();
  EXPECT_THROW(lock.lock(), DeadlockError);
  EXPECT_THROW((void)lock.try_lock(), DeadlockError);
  EXPECT_THROW((void)lock.try_lock_for(2s), DeadlockError);
  EXPECT_THROW((void)lock.try_lock_until(SteadyClock::now() + 2s), DeadlockError);
  EXPECT_THROW((void)lock.acquire(), DeadlockError);
  EXPECT_THROW((void)lock.try_acquire_for(2s), DeadlockError);
  EXPECT_LT(since(t0), 1s);
  EXPECT_TRUE(lock.owns_lock());
  lock.unlock();
  EXPECT_TRUE(lock.try_lock());
}

// A stop request ends a waiting acquire promptly on every backend (a
// server-side wait within one 250 ms slice, a sliced subscription within 20 ms),
// with CancelledError, and leaves nothing held.
TYPED_TEST_P(Conformance, AWaitingAcquireIsCancelledPromptlyAndLeavesNothingHeld) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  auto b3 = this->fx_.make();
  typename TestFixture::L holder(b1, this->name(), this->options({.ttl = 10s}));
  auto obs = this->recorder();
  typename TestFixture::L waiter(b2, this->name(),
                                 {.ttl = 10s, .retry = {.initial_delay = 5s, .max_delay = 5s}, .observer = obs});
  ASSERT_TRUE(holder.try_lock());
  std::stop_source stop;
  std::atomic<bool> cancelled{false};
  std::atomic<SteadyClock::rep> ended{0};
  std::thread t([&] {
    try {
      (void)waiter.try_lock_for(30s, stop.get_token());
    } catch (const CancelledError&) {
      cancelled = true;
    } catch (...) {
    }
    ended = SteadyClock::now().time_since_epoch().count();
  });
  // Blocked: a second attempt has begun (subscribed, or waiting on the server).
  EXPECT_TRUE(test::eventually([&] { return obs->count(EventType::attempt) >= 2; }));
  std::this_thread::sleep_for(50ms);  // not synchronisation: lets the wait settle into its slice
  const auto requested = SteadyClock::now();
  stop.request_stop();
  t.join();
  const auto took =
      std::chrono::duration_cast<Ms>(SteadyClock::time_point(SteadyClock::duration(ended.load())) - requested);
  std::printf("a waiting acquire was cancelled %lld ms after the stop request\n", static_cast<long long>(took.count()));
  EXPECT_TRUE(cancelled.load()) << this->events(*obs);
  EXPECT_LT(took, 1s);
  EXPECT_FALSE(waiter.owns_lock());
  EXPECT_TRUE(holder.owns_lock());
  holder.unlock();
  typename TestFixture::L third(b3, this->name(), this->options({.ttl = 10s}));
  EXPECT_TRUE(third.try_lock()) << "the cancelled acquire left the lock held";
}

// ---- release ----

TYPED_TEST_P(Conformance, SecondUnlockIsANoOp) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  auto obs = this->recorder();
  typename TestFixture::L lock(b1, this->name(), {.ttl = 10s, .observer = obs});
  ASSERT_TRUE(lock.try_lock());
  EXPECT_EQ(lock.release(), ReleaseResult::released);
  EXPECT_EQ(lock.release(), ReleaseResult::not_held);
  lock.unlock();
  lock.unlock();
  {
    auto g = lock.acquire();
    g.unlock();
    g.unlock();
  }
  EXPECT_EQ(obs->count(EventType::released), 2u) << this->events(*obs);
  EXPECT_EQ(obs->count(EventType::release_not_held), 0u) << this->events(*obs);
  EXPECT_EQ(obs->count(EventType::release_failed), 0u) << this->events(*obs);
  typename TestFixture::L other(b2, this->name(), this->options({.ttl = 10s}));
  EXPECT_TRUE(other.try_lock()) << "released, but still held on the server";
}

// Real short TTL: the first owner's lease expires on the server, a second
// owner takes the lock, and the first owner's late release must not free it.
TYPED_TEST_P(Conformance, AFormerOwnersReleaseDoesNotFreeTheNewHoldersLock) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  auto b3 = this->fx_.make();
  auto stale_obs = this->recorder();
  typename TestFixture::L stale(b1, this->name(), {.ttl = 400ms, .observer = stale_obs});
  typename TestFixture::L next(b2, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
  ASSERT_TRUE(stale.try_lock());
  const std::uint64_t stale_token = TypeParam::traits.no_fencing ? 0 : stale.fencing_token();
  const auto t0 = SteadyClock::now();
  ASSERT_TRUE(next.try_lock_for(10s));
  EXPECT_GE(since(t0), 300ms) << "taken over before the lease could have expired";
  EXPECT_FALSE(stale.owns_lock());
  EXPECT_EQ(stale.release(), ReleaseResult::not_held);
  EXPECT_EQ(stale_obs->count(EventType::release_not_held), 1u) << this->events(*stale_obs);
  EXPECT_EQ(stale_obs->count(EventType::released), 0u) << this->events(*stale_obs);
  EXPECT_TRUE(next.owns_lock());
  typename TestFixture::L third(b3, this->name(), this->options({.ttl = 10s}));
  EXPECT_FALSE(third.try_lock()) << "the former owner's release freed the new holder's lock";
  if (!TypeParam::traits.no_fencing) {
    EXPECT_GT(next.fencing_token(), stale_token);
  }
  EXPECT_EQ(next.release(), ReleaseResult::released);
}

// ---- extend and expiry (real short TTLs: the server's expiry is the point) ----

TYPED_TEST_P(Conformance, ExtendKeepsTheLockPastItsOriginalTtl) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  typename TestFixture::L lock(b1, this->name(), this->options({.ttl = 500ms}));
  typename TestFixture::L other(b2, this->name(), this->options({.ttl = 10s}));
  ASSERT_TRUE(lock.try_lock());
  const auto first = lock.valid_until();
  lock.extend(5s);
  EXPECT_GT(lock.valid_until(), first + 4s);
  std::this_thread::sleep_until(first + 400ms);  // past the original TTL (waiting for the server is the point)
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_FALSE(other.try_lock()) << "the server let the lock go at its original TTL";
  EXPECT_EQ(lock.release(), ReleaseResult::released);
  EXPECT_TRUE(other.try_lock());
}

// Without the heartbeat's extensions the server would free the lock after one TTL.
TYPED_TEST_P(Conformance, AutoExtendKeepsTheLockForSeveralTtls) {
  constexpr auto ttl = 300ms;
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  auto obs = this->recorder();
  typename TestFixture::L holder(b1, this->name(), {.ttl = ttl, .auto_extend = true, .observer = obs});
  typename TestFixture::L other(b2, this->name(), this->options({.ttl = 10s}));
  ASSERT_TRUE(holder.try_lock());
  std::atomic<int> lost_calls{0};
  holder.on_lost([&](const LostEvent&) { ++lost_calls; });
  const std::stop_token token = holder.stop_token();
  const auto end = SteadyClock::now() + 4 * ttl;
  int checks = 0;
  while (SteadyClock::now() < end) {
    EXPECT_FALSE(other.try_lock()) << "another owner got the lock during an auto-extended hold";
    EXPECT_TRUE(holder.owns_lock());
    ++checks;
    std::this_thread::sleep_for(50ms);  // pacing of the probes, not synchronisation
  }
  EXPECT_GE(checks, 5);
  EXPECT_GE(obs->count(EventType::extended), 3u) << this->events(*obs);
  EXPECT_EQ(obs->count(EventType::lost), 0u) << this->events(*obs);
  EXPECT_EQ(holder.release(), ReleaseResult::released);
  EXPECT_FALSE(token.stop_requested()) << "a normal release signalled a loss";
  EXPECT_EQ(lost_calls.load(), 0);
  EXPECT_TRUE(other.try_lock());
}

TYPED_TEST_P(Conformance, WithoutExtensionTheLeaseExpiresAndTheNextOwnerHasAHigherToken) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  typename TestFixture::L lock(b1, this->name(), this->options({.ttl = 400ms}));
  typename TestFixture::L next(b2, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
  ASSERT_TRUE(lock.try_lock());
  const std::uint64_t first = TypeParam::traits.no_fencing ? 0 : lock.fencing_token();
  const auto valid_until = lock.valid_until();
  ASSERT_TRUE(test::eventually([&] { return !lock.owns_lock(); }, 3s)) << "still valid long after its TTL";
  EXPECT_GE(SteadyClock::now(), valid_until);
  EXPECT_THROW((void)lock.fencing_token(), LockLostError);
  ASSERT_TRUE(next.try_lock_for(10s)) << "the server never let the expired lease go";
  std::printf("next owner acquired %lld ms after the first lease's validity ended\n",
              static_cast<long long>(std::chrono::duration_cast<Ms>(SteadyClock::now() - valid_until).count()));
  if (!TypeParam::traits.no_fencing) {
    EXPECT_GT(next.fencing_token(), first);
  }
  EXPECT_THROW(lock.extend(), LockLostError) << "the expired owner extended the new holder's lock";
  EXPECT_TRUE(next.owns_lock());
}

// ---- loss signalling ----

TYPED_TEST_P(Conformance, LockDeletedBehindTheHoldersBackIsSignalled) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  auto obs = this->recorder();
  constexpr auto interval = 200ms;
  typename TestFixture::L lock(b1, this->name(),
                               {.ttl = 5s, .auto_extend = true, .extend_interval = interval, .observer = obs});
  ASSERT_TRUE(lock.try_lock());
  std::atomic<int> calls{0};
  std::atomic<int> reason{-1};
  std::mutex mu;
  std::string lost_lock, lost_owner;
  lock.on_lost([&](const LostEvent& e) {
    {
      std::lock_guard lk(mu);
      lost_lock = e.lock;
      lost_owner = e.owner;
    }
    reason = static_cast<int>(e.reason);
    ++calls;
  });
  const std::stop_token token = lock.stop_token();
  const std::string owner(lock.owner_id());
  EXPECT_FALSE(token.stop_requested());

  this->fx_.force_delete(this->name());
  const auto deleted_at = SteadyClock::now();
  ASSERT_TRUE(test::eventually([&] { return token.stop_requested(); }, 5s)) << this->events(*obs);
  const Ms latency = since(deleted_at);
  EXPECT_LT(latency, interval + 800ms) << "not noticed by the next extension";
  ASSERT_TRUE(test::eventually([&] { return calls.load() == 1; }, 2s));
  std::printf("loss signalled %lld ms after the delete (extension interval %lld ms), reason %s\n",
              static_cast<long long>(latency.count()), static_cast<long long>(interval.count()),
              std::string(to_string(static_cast<LostReason>(reason.load()))).c_str());
  EXPECT_EQ(reason.load(), static_cast<int>(TypeParam::traits.deleted_reason));
  {
    std::lock_guard lk(mu);
    EXPECT_EQ(lost_lock, this->name());
    EXPECT_EQ(lost_owner, owner);
  }
  EXPECT_EQ(obs->count(EventType::lost), 1u) << this->events(*obs);
  EXPECT_FALSE(lock.owns_lock());
  EXPECT_THROW((void)lock.fencing_token(), LockLostError);
  EXPECT_THROW(lock.extend(), LockLostError);
  EXPECT_EQ(lock.release(), ReleaseResult::not_held);
  typename TestFixture::L other(b2, this->name(), this->options({.ttl = 10s}));
  EXPECT_TRUE(other.try_lock());
  EXPECT_EQ(calls.load(), 1);
}

// ---- the service unreachable ----

TYPED_TEST_P(Conformance, UnreachableAtAcquireFailsWithinTheDeadline) {
  constexpr auto traits = TypeParam::traits;
  if constexpr (!HasOutage<TypeParam>) {
    GTEST_SKIP() << traits.no_outage;
  } else {
    auto faulty = this->fx_.make_faulty();
    auto obs = this->recorder();
    typename TestFixture::L lock(faulty, this->name(), {.ttl = 2s, .retry = fast_retry, .observer = obs});
    this->fx_.cut();
    if (traits.outage_degrades) {
      typename TestFixture::L peer(faulty, this->name(), this->options({.ttl = 2s}));
      EXPECT_TRUE(lock.try_lock()) << "no degraded grant";
      EXPECT_EQ(obs->count(EventType::degraded), 1u) << this->events(*obs);
      EXPECT_FALSE(peer.try_lock()) << "the fallback does not exclude";
      lock.unlock();
    } else {
      EXPECT_THROW((void)lock.try_lock(), ConnectionError);
      auto t0 = SteadyClock::now();
      EXPECT_THROW((void)lock.try_lock_for(300ms), ConnectionError) << "an outage reported as contention";
      const Ms timed = since(t0);
      typename TestFixture::L blocking(faulty, this->name(),
                                       {.ttl = 2s, .retry = fast_retry, .acquire_timeout = 300ms, .observer = obs});
      t0 = SteadyClock::now();
      EXPECT_THROW(blocking.lock(), ConnectionError) << "an outage reported as contention";
      const Ms blocked = since(t0);
      std::printf(
          "unreachable: try_lock_for(300ms) threw after %lld ms, lock() with acquire_timeout 300ms after %lld ms\n",
          static_cast<long long>(timed.count()), static_cast<long long>(blocked.count()));
      EXPECT_LT(timed, 300ms + 1500ms);
      EXPECT_LT(blocked, 300ms + 1500ms);
      EXPECT_FALSE(lock.owns_lock());
      EXPECT_FALSE(blocking.owns_lock());
    }
    this->fx_.heal();
    EXPECT_TRUE(lock.try_lock_for(5s)) << "no recovery once the service is back";
  }
}

TYPED_TEST_P(Conformance, UnreachableAtReleaseIsReportedNotThrown) {
  constexpr auto traits = TypeParam::traits;
  if constexpr (!HasOutage<TypeParam>) {
    GTEST_SKIP() << traits.no_outage;
  } else {
    auto faulty = this->fx_.make_faulty();
    auto obs = this->recorder();
    typename TestFixture::L lock(faulty, this->name(), {.ttl = 1s, .observer = obs});
    ASSERT_TRUE(lock.try_lock());
    this->fx_.cut();
    EXPECT_NO_THROW(lock.unlock());
    EXPECT_EQ(obs->count(traits.release_outage), 1u) << this->events(*obs);
    EXPECT_EQ(obs->count(EventType::released), 0u) << this->events(*obs);
    EXPECT_FALSE(lock.owns_lock());
    EXPECT_NO_THROW(lock.unlock());  // still a no-op afterwards
    this->fx_.heal();
    auto b2 = this->fx_.make();
    typename TestFixture::L other(b2, this->name(), this->options({.ttl = 10s, .retry = fast_retry}));
    EXPECT_TRUE(other.try_lock_for(5s)) << "the lock never became free (not even by its TTL)";
  }
}

// The service becomes unreachable while a lock is held with auto_extend:
// reset connections (cut) or no answers at all (silent: a paused server or a
// black hole, where each extension hangs until its timeout).
TYPED_TEST_P(Conformance, UnreachableDuringAHoldIsSignalledByTheValidityEnd) {
  if constexpr (!HasOutage<TypeParam>) {
    GTEST_SKIP() << TypeParam::traits.no_outage;
  } else {
    this->loss_during_hold_is_signalled_by_the_validity_end([this] { this->fx_.cut(); }, "cut");
  }
}

TYPED_TEST_P(Conformance, SilentServiceDuringAHoldIsSignalledByTheValidityEnd) {
  if constexpr (!HasOutage<TypeParam>) {
    GTEST_SKIP() << TypeParam::traits.no_outage;
  } else {
    this->loss_during_hold_is_signalled_by_the_validity_end([this] { this->fx_.silence(); }, "silence");
  }
}

// ---- waiting ----

TYPED_TEST_P(Conformance, ReleaseWakesAWaiterWithALongBackoff) {
  using B = typename TestFixture::Backend;
  if constexpr (!NotifiesRelease<B> && !WaitsOnServer<B>) {
    GTEST_SKIP() << "the backend neither notifies releases nor waits on the server: a waiter sleeps its backoff";
  } else {
    auto b1 = this->fx_.make();
    auto b2 = this->fx_.make();
    typename TestFixture::L holder(b1, this->name(), this->options({.ttl = 30s}));
    ASSERT_TRUE(holder.try_lock());
    auto obs = this->recorder();
    // Without a wake-up this waiter would sleep 30 s before its next attempt.
    typename TestFixture::L waiter(
        b2, this->name(),
        {.ttl = 30s, .retry = {.initial_delay = 30s, .max_delay = 30s, .jitter = Jitter::none}, .observer = obs});
    std::atomic<bool> got{false};
    std::atomic<SteadyClock::rep> acquired_at{0};
    std::thread t([&] {
      got = waiter.try_lock_for(20s);
      acquired_at = SteadyClock::now().time_since_epoch().count();
    });
    // Until it waits: subscribed and found it held once more, or queued on the server.
    const bool waiting = test::eventually(
        [&] {
          if constexpr (NotifiesRelease<B>) {
            return obs->count(EventType::contended) >= 2;
          } else {
            return this->fx_.has_waiter(this->name());
          }
        },
        10s);
    const auto released_at = SteadyClock::now();
    holder.unlock();
    t.join();
    ASSERT_TRUE(waiting) << "the waiter never started waiting; events: " << this->events(*obs);
    ASSERT_TRUE(got);
    const std::chrono::duration<double, std::milli> latency =
        SteadyClock::time_point(SteadyClock::duration(acquired_at.load())) - released_at;
    std::printf("waiter with a 30 s backoff acquired %.1f ms after the release\n", latency.count());
    EXPECT_LT(latency, 1s);
    waiter.unlock();
  }
}

// ---- several locks ----

TYPED_TEST_P(Conformance, LockAllTakesBothNames) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  typename TestFixture::L a(b1, this->name("a"), this->options({.ttl = 10s, .retry = fast_retry}));
  typename TestFixture::L b(b1, this->name("b"), this->options({.ttl = 10s, .retry = fast_retry}));
  typename TestFixture::L other_a(b2, this->name("a"), this->options({.ttl = 10s}));
  typename TestFixture::L other_b(b2, this->name("b"), this->options({.ttl = 10s}));
  {
    auto both = lock_all(b, a);
    EXPECT_TRUE(both);
    EXPECT_TRUE(both.owns_lock());
    EXPECT_TRUE(a.owns_lock());
    EXPECT_TRUE(b.owns_lock());
    EXPECT_FALSE(other_a.try_lock());
    EXPECT_FALSE(other_b.try_lock());
  }
  EXPECT_FALSE(a.owns_lock());
  EXPECT_FALSE(b.owns_lock());
  EXPECT_TRUE(other_a.try_lock());
  EXPECT_TRUE(other_b.try_lock());
}

TYPED_TEST_P(Conformance, TryLockAllForLeavesNothingHeldWhenOneNameIsTaken) {
  auto b1 = this->fx_.make();
  auto b2 = this->fx_.make();
  auto b3 = this->fx_.make();
  typename TestFixture::L holder(b2, this->name("b"), this->options({.ttl = 10s}));
  ASSERT_TRUE(holder.try_lock());
  typename TestFixture::L a(b1, this->name("a"), this->options({.ttl = 10s, .retry = fast_retry}));
  typename TestFixture::L b(b1, this->name("b"), this->options({.ttl = 10s, .retry = fast_retry}));
  const auto t0 = SteadyClock::now();
  {
    auto none = try_lock_all_for(300ms, a, b);  // "a" sorts first: taken, then given back
    EXPECT_FALSE(none);
    EXPECT_FALSE(none.owns_lock());
  }
  EXPECT_LT(since(t0), 300ms + 1s);
  EXPECT_FALSE(a.owns_lock());
  EXPECT_FALSE(b.owns_lock());
  typename TestFixture::L probe(b3, this->name("a"), this->options({.ttl = 10s}));
  EXPECT_TRUE(probe.try_lock()) << "the failed set left its first lock held";
  probe.unlock();
  holder.unlock();
  auto both = try_lock_all_for(5s, a, b);
  EXPECT_TRUE(both);
  EXPECT_TRUE(both.owns_lock());
}

REGISTER_TYPED_TEST_SUITE_P(Conformance, MutualExclusionAcrossThreads, MutualExclusionAndTokensAcrossProcesses,
                            TokensStrictlyIncreaseAcrossAcquisitions, TryLockOnContentionReturnsFalseWithoutThrowing,
                            TimedTryLockReturnsFalseAfterAboutItsTimeout, SecondUnlockIsANoOp,
                            AFormerOwnersReleaseDoesNotFreeTheNewHoldersLock, ExtendKeepsTheLockPastItsOriginalTtl,
                            AutoExtendKeepsTheLockForSeveralTtls,
                            WithoutExtensionTheLeaseExpiresAndTheNextOwnerHasAHigherToken,
                            LockDeletedBehindTheHoldersBackIsSignalled, UnreachableAtAcquireFailsWithinTheDeadline,
                            UnreachableAtReleaseIsReportedNotThrown, UnreachableDuringAHoldIsSignalledByTheValidityEnd,
                            SilentServiceDuringAHoldIsSignalledByTheValidityEnd, ReleaseWakesAWaiterWithALongBackoff,
                            LockAllTakesBothNames, TryLockAllForLeavesNothingHeldWhenOneNameIsTaken,
                            ReentryByTheHoldingThreadFailsAtOnce,
                            AWaitingAcquireIsCancelledPromptlyAndLeavesNothingHeld);

}  // namespace dlock::conformance
