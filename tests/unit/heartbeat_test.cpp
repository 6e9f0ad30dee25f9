// Auto-extend and lost-lock signalling over in-process backends on a manual
// scheduler: exclusive long holds, loss no later than validity on failing
// extensions, max_hold, batching, callbacks, and destruction orders. Loss on
// deletion: the conformance suite (tests/conformance), on every backend.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <functional>
#include <cstdio>
#include <chrono>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fork_support.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::EventType;
using dlock::Lock;
using dlock::LockOptions;
using dlock::LostEvent;
using dlock::LostReason;
using dlock::MemoryBackend;
using dlock::TimePoint;
using dlock::detail::BeatAction;
using dlock::detail::BeatTimes;
using dlock::test::FaultyBackend;
using dlock::test::RecordingObserver;
using SteadyClock = std::chrono::steady_clock;
using dlock::test::eventually;

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer does not support threads started in the child of a
// multi-threaded fork (it ends the child), so there the fork test checks only
// what needs no thread in the child.
constexpr bool threads_after_fork = false;
#else
constexpr bool threads_after_fork = true;
#endif

namespace {

// A heartbeat on a manual scheduler: time moves only in advance(), which runs
// everything that falls due (extensions, losses, callbacks) on the test's
// thread. Declare it before the backends and locks that use its clock.
struct ManualBeat {
  dlock::ManualClock clock;
  std::shared_ptr<dlock::detail::ManualHeartbeatScheduler> scheduler =
      std::make_shared<dlock::detail::ManualHeartbeatScheduler>(clock);
  std::shared_ptr<dlock::Heartbeat> hb = std::make_shared<dlock::Heartbeat>(scheduler);

  [[nodiscard]] LockOptions options(LockOptions o) const {
    o.clock = &clock;
    o.heartbeat = hb;
    return o;
  }
  void advance(std::chrono::milliseconds d) { scheduler->advance(d); }
};

std::shared_ptr<dlock::Observer> quiet() {
  struct Quiet : dlock::Observer {
    void on_event(const dlock::Event&) noexcept override {}
  };
  return std::make_shared<Quiet>();
}

}  // namespace

TEST(BeatArithmetic, ActionsInPriorityOrder) {
  const TimePoint t0{};
  BeatTimes t{.valid_until = t0 + 3s,
              .extend_due = t0 + 1s,
              .max_hold_end = t0 + 10s,
              .extending = true,
              .long_held_at = std::nullopt};
  EXPECT_EQ(dlock::detail::beat_action(t, t0, 0s), BeatAction::none);
  EXPECT_EQ(dlock::detail::beat_action(t, t0 + 1s, 0s), BeatAction::extend);
  EXPECT_EQ(dlock::detail::beat_action(t, t0 + 750ms, 250ms), BeatAction::extend);  // within the slack
  EXPECT_EQ(dlock::detail::beat_action(t, t0 + 749ms, 250ms), BeatAction::none);
  EXPECT_EQ(dlock::detail::beat_action(t, t0 + 3s, 0s), BeatAction::expire);  // expiry beats extension
  t.valid_until = t0 + 20s;
  EXPECT_EQ(dlock::detail::beat_action(t, t0 + 10s, 0s), BeatAction::max_hold);  // max_hold beats both
  t.extending = false;  // an extension is in flight: only expiry and max_hold are watched
  EXPECT_EQ(dlock::detail::beat_action(t, t0 + 2s, 0s), BeatAction::none);
}

TEST(BeatArithmetic, WakeIsTheEarliestRelevantTime) {
  const TimePoint t0{};
  BeatTimes t{.valid_until = t0 + 3s,
              .extend_due = t0 + 1s,
              .max_hold_end = std::nullopt,
              .extending = true,
              .long_held_at = std::nullopt};
  EXPECT_EQ(dlock::detail::beat_wake(t), t0 + 1s);
  t.extending = false;
  EXPECT_EQ(dlock::detail::beat_wake(t), t0 + 3s);
  t.max_hold_end = t0 + 2s;
  EXPECT_EQ(dlock::detail::beat_wake(t), t0 + 2s);
}

TEST(AutoExtend, HoldOfFiveTtlsStaysExclusive) {
  ManualBeat beat;
  MemoryBackend mem(beat.clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> holder(mem, "job", beat.options({.ttl = 500ms, .auto_extend = true, .observer = observer}));
  Lock<MemoryBackend> other(mem, "job", {.clock = &beat.clock});
  auto g = holder.acquire();
  for (int step = 0; step < 125; ++step) {  // 5 x ttl in steps of 20 ms
    beat.advance(20ms);
    ASSERT_FALSE(other.try_lock()) << "at " << (step + 1) * 20 << " ms";
    ASSERT_TRUE(g.owns_lock());
  }
  EXPECT_FALSE(g.stop_token().stop_requested());
  EXPECT_EQ(observer->count(EventType::extended), 15u);  // every ttl/3 (less the batching slack) for 5 ttls
  EXPECT_EQ(observer->count(EventType::lost), 0u);
  g.unlock();
  EXPECT_TRUE(other.try_lock());
}

TEST(AutoExtend, FailingExtensionsAreDeclaredLostNoLaterThanValidityEnds) {
  ManualBeat beat;
  FaultyBackend backend(beat.clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<FaultyBackend> lock(backend, "job", beat.options({.ttl = 600ms, .auto_extend = true, .observer = observer}));
  auto g = lock.acquire();
  std::optional<TimePoint> stopped;
  std::stop_callback on_stop(g.stop_token(), [&] { stopped = beat.clock.now(); });
  int reason = -1;
  g.on_lost([&](const LostEvent& e) { reason = static_cast<int>(e.reason); });

  backend.extend_fails = true;  // e.g. the server stopped answering
  const TimePoint valid_until = g.valid_until();
  beat.advance(std::chrono::ceil<std::chrono::milliseconds>(valid_until - beat.clock.now()) - 1ms);
  EXPECT_FALSE(stopped.has_value());  // every retry failed, and the lease is still valid
  EXPECT_GE(observer->count(EventType::extend_failed), 3u);
  beat.advance(1ms);
  ASSERT_TRUE(stopped.has_value());
  EXPECT_EQ(*stopped, valid_until);  // declared at the validity's end exactly
  EXPECT_EQ(reason, static_cast<int>(LostReason::connection));
  EXPECT_FALSE(g.owns_lock());
}

TEST(AutoExtend, TransientFailureIsRetriedAndTheLeaseSurvives) {
  ManualBeat beat;
  FaultyBackend backend(beat.clock);
  Lock<FaultyBackend> lock(backend, "job", beat.options({.ttl = 900ms, .auto_extend = true, .observer = quiet()}));
  auto g = lock.acquire();
  backend.extend_fails = true;
  beat.advance(400ms);  // the first extension (due at 300 ms) failed, and a retry too
  EXPECT_GE(backend.extend_calls.load(), 2);
  backend.extend_fails = false;  // the next retry succeeds within validity
  beat.advance(1200ms);
  EXPECT_TRUE(g.owns_lock());
  EXPECT_FALSE(g.stop_token().stop_requested());
}

TEST(AutoExtend, MaxHoldReleasesAndReports) {
  ManualBeat beat;
  MemoryBackend mem(beat.clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job",
                           beat.options({.ttl = 300ms, .auto_extend = true, .max_hold = 700ms, .observer = observer}));
  Lock<MemoryBackend> other(mem, "job", {.clock = &beat.clock});
  auto g = lock.acquire();
  int reason = -1;
  g.on_lost([&](const LostEvent& e) { reason = static_cast<int>(e.reason); });
  beat.advance(699ms);
  EXPECT_TRUE(g.owns_lock());  // extended past its ttl
  EXPECT_FALSE(g.stop_token().stop_requested());
  beat.advance(1ms);
  EXPECT_TRUE(g.stop_token().stop_requested());
  EXPECT_EQ(reason, static_cast<int>(LostReason::max_hold));
  EXPECT_TRUE(other.try_lock());  // released by the heartbeat: free at once, not only after its ttl
  g.unlock();                     // the holder's own unlock is then a quiet no-op
  EXPECT_TRUE(other.owns_lock());
  EXPECT_EQ(observer->count(EventType::lost), 1u);  // the hold's one terminal event
  EXPECT_EQ(observer->count(EventType::released), 0u);
  EXPECT_EQ(observer->count(EventType::release_not_held), 0u);
}

TEST(LostSignal, WithoutAutoExtendTheStopTokenFiresWhenValidityEnds) {
  ManualBeat beat;
  MemoryBackend mem(beat.clock);
  Lock<MemoryBackend> lock(mem, "job", beat.options({.ttl = 150ms, .observer = quiet()}));
  auto g = lock.acquire();
  const auto token = g.stop_token();  // starts a watch
  beat.advance(149ms);
  EXPECT_FALSE(token.stop_requested());
  beat.advance(1ms);
  EXPECT_TRUE(token.stop_requested());
  EXPECT_FALSE(g.owns_lock());
}

TEST(LostSignal, CallbackRegisteredAfterTheLossRunsAtOnceAndThrowingOnesAreReported) {
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", {.ttl = 1s, .observer = observer, .clock = &clock});
  lock.lock();
  clock.advance(2s);
  EXPECT_THROW(lock.extend(), dlock::LockLostError);  // discovers the loss
  EXPECT_TRUE(lock.stop_token().stop_requested());
  int ran = 0;
  lock.on_lost([&](const LostEvent& e) {
    ++ran;
    EXPECT_EQ(e.reason, LostReason::expired);
  });
  EXPECT_EQ(ran, 1);
  lock.on_lost([](const LostEvent&) { throw std::runtime_error("boom"); });
  EXPECT_EQ(observer->count(EventType::callback_failed), 1u);
  for (const auto& e : observer->events()) {
    if (e.type == EventType::callback_failed) {
      EXPECT_NE(e.message.find("boom"), std::string::npos);
    }
  }
}

TEST(LostSignal, NotSignalledOnNormalRelease) {
  ManualBeat beat;
  MemoryBackend mem(beat.clock);
  Lock<MemoryBackend> lock(mem, "job", beat.options({.ttl = 300ms, .auto_extend = true}));
  int calls = 0;
  std::stop_token token;
  {
    auto g = lock.acquire();
    token = g.stop_token();
    g.on_lost([&](const LostEvent&) { ++calls; });
    beat.advance(200ms);
  }
  beat.advance(1s);
  EXPECT_FALSE(token.stop_requested());
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(beat.hb->watched(), 0u);
}

TEST(Batching, ExtensionsFallingDueTogetherShareOneRoundTrip) {
  ManualBeat beat;
  dlock::test::BatchingBackend backend(beat.clock);
  constexpr int n = 200;
  std::vector<std::unique_ptr<Lock<dlock::test::BatchingBackend>>> locks;
  for (int i = 0; i < n; ++i) {
    locks.push_back(std::make_unique<Lock<dlock::test::BatchingBackend>>(
        backend, "job:" + std::to_string(i), beat.options({.ttl = 600ms, .auto_extend = true})));
    locks.back()->lock();
    beat.advance(1ms);  // acquired over 200 ms: their extensions fall due spread out, not at one instant
  }
  beat.advance(1400ms);
  for (auto& l : locks) EXPECT_TRUE(l->owns_lock());
  const int batches = backend.batches.load();
  const int items = backend.extended_items.load();
  EXPECT_EQ(backend.single_extends.load(), 0);
  EXPECT_GE(items, n * 7);         // every lock was extended every 200 ms
  EXPECT_LE(batches, items / 20);  // far fewer round trips than extensions
  RecordProperty("batches", batches);
  RecordProperty("extensions", items);
  std::printf("%d extensions in %d batches\n", items, batches);
  for (auto& l : locks) l->unlock();
}

TEST(Destruction, GuardDestroyedWhileItsExtensionIsInFlight) {
  FaultyBackend backend;
  {
    Lock<FaultyBackend> lock(backend, "job", {.ttl = 300ms, .auto_extend = true});
    auto g = lock.acquire();
    backend.extend_delay_ms = 150;
    ASSERT_TRUE(eventually([&] { return backend.extend_calls.load() > 0; }));
  }  // guard, then lock: waits for the extension, releases; the heartbeat goes with the last lock
  backend.extend_delay_ms = 0;
  Lock<FaultyBackend> again(backend, "job");
  EXPECT_TRUE(again.try_lock());
}

TEST(Destruction, HeartbeatWithPendingTimersOutlivesOrPrecedesLocks) {
  MemoryBackend mem;
  auto hb = std::make_shared<dlock::Heartbeat>();
  auto lock =
      std::make_unique<Lock<MemoryBackend>>(mem, "job", LockOptions{.ttl = 10s, .auto_extend = true, .heartbeat = hb});
  lock->lock();
  EXPECT_EQ(hb->watched(), 1u);
  hb.reset();  // the lock keeps its heartbeat alive while it may need it
  EXPECT_TRUE(lock->owns_lock());
  lock.reset();  // releases, then destroys the heartbeat with nothing pending
  Lock<MemoryBackend> other(mem, "job");
  EXPECT_TRUE(other.try_lock());
}

TEST(Destruction, ProcessWideHeartbeatStopsWithTheLastLock) {
  MemoryBackend mem;
  std::weak_ptr<dlock::Heartbeat> weak;
  {
    Lock<MemoryBackend> a(mem, "a", {.auto_extend = true});
    Lock<MemoryBackend> b(mem, "b", {.auto_extend = true});
    a.lock();
    b.lock();
    weak = dlock::Heartbeat::process_wide();
    EXPECT_EQ(weak.lock()->watched(), 2u);
  }
  EXPECT_TRUE(weak.expired());
}

TEST(LongHeld, ReportedOnceWhenAHoldPassesItsThreshold) {
  ManualBeat beat;
  MemoryBackend mem(beat.clock);
  auto observer = std::make_shared<RecordingObserver>();
  Lock<MemoryBackend> lock(mem, "job", beat.options({.ttl = 10s, .long_held = 100ms, .observer = observer}));
  auto g = lock.acquire();
  beat.advance(99ms);
  EXPECT_EQ(observer->count(EventType::long_held), 0u);
  beat.advance(1ms);
  EXPECT_EQ(observer->count(EventType::long_held), 1u);
  beat.advance(5s);
  EXPECT_EQ(observer->count(EventType::long_held), 1u);  // once per hold
  EXPECT_TRUE(g.owns_lock());                            // a report, not a loss
  g.unlock();
  Lock<MemoryBackend> quick(mem, "job", beat.options({.ttl = 10s, .long_held = 5s, .observer = observer}));
  quick.lock();
  beat.advance(4s);
  quick.unlock();
  beat.advance(2s);
  EXPECT_EQ(observer->count(EventType::long_held), 1u);
}

TEST(Destruction, GuardOutlivesTheBackendObject) {
  ManualBeat beat;
  auto backend = std::make_unique<MemoryBackend>(beat.clock);
  auto lock = std::make_unique<Lock<MemoryBackend>>(*backend, "job", beat.options({.ttl = 300ms, .auto_extend = true}));
  auto g = lock->acquire();
  MemoryBackend observer_view = *backend;  // another handle on the same table
  backend.reset();                         // the application's backend object goes first
  beat.advance(1s);                        // the heartbeat keeps extending through the lock's handle
  EXPECT_TRUE(g.owns_lock());
  Lock<MemoryBackend> other(observer_view, "job", {.clock = &beat.clock});
  EXPECT_FALSE(other.try_lock());
  g.unlock();
  EXPECT_TRUE(other.try_lock());
}

// ---- Isolation: one stalled backend or one slow callback must not cost other leases ----

namespace {

// A gate that test code opens once; waiters block until then.
class Gate {
 public:
  void wait() {
    std::unique_lock lk(mu_);
    ++waiting_;
    cv_.wait(lk, [&] { return open_; });
  }
  void open() {
    std::lock_guard lk(mu_);
    open_ = true;
    cv_.notify_all();
  }
  [[nodiscard]] int waiting() {
    std::lock_guard lk(mu_);
    return waiting_;
  }
  // Opens the gate when a test leaves, also by a failed assertion, before its
  // locks go (declare it after them).
  struct OpenOnExit {
    Gate& gate;
    ~OpenOnExit() { gate.open(); }
  };

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int waiting_ = 0;
};

// A MemoryBackend whose extensions, once `stall` is set, block until `gate`
// opens: a server that stopped answering, with a command timeout longer than
// any lease's TTL.
class StallingBackend {
 public:
  using Handle = dlock::NoHandle;
  [[nodiscard]] std::string_view kind() const noexcept { return "stalling"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:3"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest& r) { return mem_.try_acquire(r); }
  dlock::ReleaseResult release(std::string_view name, dlock::Lease<Handle>& lease) { return mem_.release(name, lease); }
  std::optional<TimePoint> extend(std::string_view name, dlock::Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                  TimePoint started) {
    if (stall) gate.wait();
    return mem_.extend(name, lease, ttl, started);
  }
  std::atomic<bool> stall{false};
  Gate gate;

 private:
  MemoryBackend mem_;
};

}  // namespace

TEST(Isolation, AStalledBackendDoesNotDelayAnotherBackendsExtensions) {
  StallingBackend stalled;
  MemoryBackend healthy;
  auto observer = std::make_shared<RecordingObserver>();
  Lock<StallingBackend> a(stalled, "a", {.ttl = 300ms, .auto_extend = true});
  Lock<MemoryBackend> b(healthy, "b", {.ttl = 300ms, .auto_extend = true, .observer = observer});
  Gate::OpenOnExit opener{stalled.gate};
  a.lock();
  b.lock();
  const auto b_token = b.stop_token();
  stalled.stall = true;
  ASSERT_TRUE(eventually([&] { return stalled.gate.waiting() == 1; }));  // a's extension hangs from here on
  const auto before = observer->count(EventType::extended);
  // b falls due every 100 ms; each of these extensions would queue behind a's
  // if both backends shared one thread, and b would be lost after 300 ms.
  EXPECT_TRUE(eventually([&] { return observer->count(EventType::extended) >= before + 5; }, 3s));
  EXPECT_FALSE(b_token.stop_requested());
  EXPECT_TRUE(b.owns_lock());
  EXPECT_EQ(observer->count(EventType::lost), 0u);
  stalled.gate.open();
  b.unlock();
  a.unlock();
}

TEST(Isolation, ABlockingOnLostCallbackDelaysNeitherExtensionsNorOtherCallbacks) {
  MemoryBackend mem;
  Gate gate;
  auto observer = std::make_shared<RecordingObserver>();
  const LockOptions lose_fast{.ttl = 3s, .auto_extend = true, .extend_interval = 50ms};
  Lock<MemoryBackend> slow(mem, "slow", lose_fast);
  Lock<MemoryBackend> other(mem, "other", lose_fast);
  Lock<MemoryBackend> b(mem, "b", {.ttl = 300ms, .auto_extend = true, .observer = observer});
  slow.lock();
  other.lock();
  b.lock();
  Gate::OpenOnExit opener{gate};
  slow.on_lost([&](const LostEvent&) { gate.wait(); });  // e.g. waits for a worker to stop
  std::atomic<bool> other_ran{false};
  other.on_lost([&](const LostEvent&) { other_ran = true; });
  const auto b_token = b.stop_token();

  ASSERT_TRUE(mem.force_release("slow"));
  ASSERT_TRUE(eventually([&] { return gate.waiting() == 1; }));  // the callback is blocked from here on
  const auto before = observer->count(EventType::extended);
  EXPECT_TRUE(eventually([&] { return observer->count(EventType::extended) >= before + 5; }, 3s));
  EXPECT_FALSE(b_token.stop_requested());
  EXPECT_TRUE(b.owns_lock());
  ASSERT_TRUE(mem.force_release("other"));
  EXPECT_TRUE(eventually([&] { return other_ran.load(); }, 3s));  // not queued behind the blocked one
  gate.open();
  b.unlock();
}

TEST(Destruction, LastLockOwnedByAnOnLostCallback) {
  // The callback's closure holds the last reference to the Lock, and the Lock
  // the last reference to its heartbeat: when the closure goes, the heartbeat
  // is destroyed on one of its own threads. It must neither join that thread
  // nor free what that thread still runs on (ASan saw a use-after-free).
  MemoryBackend mem;
  const int live_before = dlock::detail::HeartbeatCore::live_count().load();
  auto hb = std::make_shared<dlock::Heartbeat>();
  const std::weak_ptr<dlock::Heartbeat> weak_hb = hb;
  auto lock = std::make_shared<Lock<MemoryBackend>>(
      mem, "job", LockOptions{.ttl = 3s, .auto_extend = true, .extend_interval = 50ms, .heartbeat = hb});
  hb.reset();
  lock->lock();
  std::atomic<bool> ran{false};
  lock->on_lost([keep = lock, &ran](const LostEvent&) { ran = true; });
  lock.reset();  // now only the callback owns it
  ASSERT_TRUE(mem.force_release("job"));
  ASSERT_TRUE(eventually([&] { return ran.load(); }));
  ASSERT_TRUE(eventually([&] { return weak_hb.expired(); }));
  // The deferred shutdown has joined every thread of that heartbeat.
  EXPECT_TRUE(eventually([&] { return dlock::detail::HeartbeatCore::live_count().load() == live_before; }));
}

TEST(Destruction, LastLockOwnedByAnOnLostCallbackOnTheManualScheduler) {
  // The same ownership on the manual scheduler: the heartbeat goes inside
  // advance(), and its shutdown waits until advance() has finished.
  ManualBeat beat;
  MemoryBackend mem(beat.clock);
  const int live_before = dlock::detail::HeartbeatCore::live_count().load();
  auto lock = std::make_shared<Lock<MemoryBackend>>(
      mem, "job", beat.options({.ttl = 3s, .auto_extend = true, .extend_interval = 50ms}));
  const std::weak_ptr<dlock::Heartbeat> weak_hb = beat.hb;
  beat.hb.reset();
  lock->lock();
  bool ran = false;
  lock->on_lost([keep = lock, &ran](const LostEvent&) { ran = true; });
  lock.reset();
  ASSERT_TRUE(mem.force_release("job"));
  beat.advance(50ms);
  EXPECT_TRUE(ran);
  EXPECT_TRUE(weak_hb.expired());
  EXPECT_EQ(dlock::detail::HeartbeatCore::live_count().load(), live_before - 1);
}

// A loss is announced (observer, stop token, on_lost) only after the lease's
// operation mutex is released, so a stop_callback or an on_lost callback may
// unlock the very Lock that was lost. Each scenario runs in a child process
// that is killed if it deadlocks; the manual scheduler runs everything on the
// child's one thread.
namespace {
// In a child: takes a lock, registers a callback that unlocks it (on_lost, or
// a stop_callback), deletes the lock behind its back, and calls extend().
std::optional<std::string> unlock_from_callback_after_extend(bool stop_callback) {
  return dlock::test::in_child_while(
      [stop_callback] {
        ManualBeat beat;
        MemoryBackend mem(beat.clock);
        Lock<MemoryBackend> lock(mem, "job", beat.options({.ttl = 3s, .observer = quiet()}));
        lock.lock();
        bool ran = false;
        auto unlock = [&] {
          lock.unlock();
          ran = true;
        };
        std::optional<std::stop_callback<std::function<void()>>> cb;
        if (stop_callback) {
          cb.emplace(lock.stop_token(), unlock);
        } else {
          lock.on_lost([&](const LostEvent&) { unlock(); });
        }
        (void)mem.force_release("job");
        try {
          lock.extend();
          return std::string("extend did not throw");
        } catch (const dlock::LockLostError&) {
        }
        return std::string(ran ? "ok" : "callback did not run");
      },
      [] {}, 10s);
}
}  // namespace

TEST(LossAnnouncement, OnLostCallbackUnlocksTheLockFromAnExplicitExtend) {
  EXPECT_EQ(unlock_from_callback_after_extend(false).value_or("deadlock (killed after 10 s)"), "ok");
}

TEST(LossAnnouncement, StopCallbackUnlocksTheLockFromAnExplicitExtend) {
  EXPECT_EQ(unlock_from_callback_after_extend(true).value_or("deadlock (killed after 10 s)"), "ok");
}

TEST(LossAnnouncement, StopCallbackUnlocksTheLockFromAnAutoExtension) {
  // The heartbeat's extension finds the lock taken: the stop callback runs on
  // the backend's lane, which must no longer hold the lease's mutex then.
  const auto out = dlock::test::in_child_while(
      [] {
        ManualBeat beat;
        MemoryBackend mem(beat.clock);
        Lock<MemoryBackend> lock(
            mem, "job", beat.options({.ttl = 3s, .auto_extend = true, .extend_interval = 1s, .observer = quiet()}));
        lock.lock();
        bool ran = false;
        std::stop_callback cb(lock.stop_token(), [&] {
          lock.unlock();
          ran = true;
        });
        (void)mem.force_release("job");
        beat.advance(1s);
        return std::string(ran ? "ok" : "stop callback did not run");
      },
      [] {}, 10s);
  EXPECT_EQ(out.value_or("deadlock (killed after 10 s)"), "ok");
}

TEST(Fork, TheChildLosesInheritedLeasesAndGetsAFreshHeartbeat) {
  MemoryBackend mem;
  auto lock = std::make_unique<Lock<MemoryBackend>>(mem, "parent-job", LockOptions{.ttl = 600ms, .auto_extend = true});
  lock->lock();
  const auto token = lock->stop_token();
  auto inherited = dlock::Heartbeat::process_wide();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the child: no gtest assertions here, only an exit status
    int code = 0;
    if (!token.stop_requested()) code |= 1;  // at once, without any heartbeat thread
    if (threads_after_fork) {
      MemoryBackend child_mem;
      auto observer = std::make_shared<RecordingObserver>();
      Lock<MemoryBackend> fresh(child_mem, "child-job", {.ttl = 300ms, .auto_extend = true, .observer = observer});
      fresh.lock();
      if (dlock::Heartbeat::process_wide() == inherited) code |= 2;
      if (!eventually([&] { return observer->count(EventType::extended) >= 3; }, 5s)) code |= 4;
      if (!fresh.owns_lock()) code |= 8;
      fresh.unlock();
    }
    lock.reset();       // destroys an inherited Lock ...
    inherited.reset();  // ... and the inherited heartbeat, whose threads do not exist here
    ::_exit(code);
  }
  int status = 0;
  const bool exited = eventually([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 20s);
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  ASSERT_TRUE(exited) << "the child hung (in a destructor?)";
  ASSERT_TRUE(WIFEXITED(status));
  const int code = WEXITSTATUS(status);
  EXPECT_EQ(code & 1, 0) << "the inherited lease's stop token was not requested in the child";
  EXPECT_EQ(code & 2, 0) << "the child's process_wide() returned the parent's heartbeat";
  EXPECT_EQ(code & 4, 0) << "a lock taken in the child was not auto-extended";
  EXPECT_EQ(code & 8, 0) << "a lock taken in the child was lost";
  // The parent is unaffected.
  EXPECT_TRUE(lock->owns_lock());
  EXPECT_FALSE(token.stop_requested());
  lock->unlock();
}

TEST(Isolation, OneBackendNeedsOneExtensionThread) {
  MemoryBackend mem;
  auto hb = std::make_shared<dlock::Heartbeat>();
  auto observer = std::make_shared<RecordingObserver>();
  std::vector<std::unique_ptr<Lock<MemoryBackend>>> locks;
  for (int i = 0; i < 50; ++i) {
    locks.push_back(std::make_unique<Lock<MemoryBackend>>(
        mem, "job:" + std::to_string(i),
        LockOptions{.ttl = 300ms, .auto_extend = true, .observer = observer, .heartbeat = hb}));
    locks.back()->lock();
  }
  ASSERT_TRUE(eventually([&] { return observer->count(EventType::extended) >= 150; }));
  EXPECT_EQ(hb->threads(), 2u);  // the timer thread and one lane thread for the one backend
  for (auto& l : locks) l->unlock();
}

TEST(Lanes, OneLaneRunsInOrderOthersDoNotWaitForIt) {
  Gate gate;
  std::mutex mu;
  std::vector<int> order;
  dlock::detail::Lanes lanes(4, 10s);  // after what its tasks use, before the opener
  Gate::OpenOnExit opener{gate};
  const dlock::detail::Lanes::Key stuck{&lanes, nullptr}, free{nullptr, &lanes};
  auto record = [&](int i) {
    std::lock_guard lk(mu);
    order.push_back(i);
  };
  lanes.post(stuck, [&] { gate.wait(); });
  lanes.post(stuck, [&] { record(1); });  // behind the blocked task of its own lane
  for (int i = 10; i < 15; ++i) lanes.post(free, [&, i] { record(i); });
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lk(mu);
    return order.size() == 5;
  }));
  {
    std::lock_guard lk(mu);
    EXPECT_EQ(order, (std::vector<int>{10, 11, 12, 13, 14}));  // in order, and not behind the stuck lane
  }
  EXPECT_EQ(lanes.threads(), 2u);
  gate.open();
  lanes.stop();  // runs what is queued
  EXPECT_EQ(order.back(), 1);
  EXPECT_EQ(lanes.threads(), 0u);
}

TEST(Lanes, IdleThreadsRetireAndTheThreadCountIsCapped) {
  Gate gate;
  std::atomic<int> ran{0};
  dlock::detail::Lanes lanes(2, 50ms);
  Gate::OpenOnExit opener{gate};
  int keys[3];
  for (auto& k : keys)
    lanes.post({&k, nullptr}, [&] {
      gate.wait();
      ++ran;
    });
  ASSERT_TRUE(eventually([&] { return gate.waiting() == 2; }));
  EXPECT_EQ(lanes.threads(), 2u);  // the third lane waits for a thread
  gate.open();
  ASSERT_TRUE(eventually([&] { return ran.load() == 3; }));
  EXPECT_TRUE(eventually([&] { return lanes.threads() == 0; }));  // idle for 50 ms: retired
  lanes.post({keys, nullptr}, [&] { ++ran; });                    // and started again on demand
  EXPECT_TRUE(eventually([&] { return ran.load() == 4; }));
}
