// dlock/heartbeat.hpp: Heartbeat, the background service that extends held
// locks and notices when they are lost; LostEvent and LostReason.
//
// A Lock registers an acquisition with a Heartbeat, by default the
// process-wide one (Heartbeat::process_wide(): created with the first lock
// that needs it, stopped when the last Lock using it is destroyed), when
// LockOptions::auto_extend is on, when LockOptions::long_held is set, and when
// its holder first asks for stop_token() or on_lost(). One heartbeat serves
// every such lock of the process, with these threads:
//
//   - one timer thread (a Boost.Asio io_context with one steady_timer) knows,
//     for every watched lease, when its next extension is due, when its
//     validity ends, when its max_hold passes and when to report a long hold.
//     It never blocks on a server, so it declares a lease lost the moment its
//     validity ends without a successful extension, even while a server hangs;
//   - backend lanes perform the blocking extensions (and the release after
//     max_hold): each backend (each batch key: backend type and identity) has
//     its own serial lane, so a server that stalls delays only the leases held
//     on it. A lane that has work takes an idle thread or starts one (at most
//     AsioHeartbeatScheduler::max_backend_threads, 64); threads idle for 30 s exit.
//     Locks on one backend therefore cost one thread, not one per lock;
//   - callback lanes run on_lost callbacks, one lane per lost lease, on threads
//     of their own (at most 4, started on demand, gone after 30 s idle): a
//     callback that blocks delays no extension and no loss detection, and
//     other leases' callbacks start on another thread meanwhile. A lease's
//     callbacks run in order; those of different leases may run concurrently.
//
// A process with one backend thus runs the timer thread, one extension thread
// while it holds auto-extended locks, and a callback thread only while
// callbacks run (Heartbeat::threads() tells the current count).
//
// The timer and the lanes sit behind a scheduler seam
// (detail::HeartbeatScheduler): production uses the Asio timer thread and the
// lanes above; tests construct Heartbeat(std::make_shared<
// detail::ManualHeartbeatScheduler>(manual_clock)), which runs everything on
// the test's thread inside advance(), so heartbeat tests need no sleeping.
//
// Extensions that fall due close together (within a quarter of the extension
// interval) are collected and, for backends that offer extend_many (Redis),
// sent to each server as one pipelined batch.
//
// Lock-loss signalling: the observer gets a `lost` event and the stop token
// of the acquisition is requested, on the thread that declares the loss (the
// timer thread, or the backend's lane): std::stop_callbacks run there, at
// once, so keep them short. No lease mutex is held then, so they may call
// unlock() or release() on the lost Lock. Then the on_lost callbacks run on a
// callback lane, where any call is fine (exceptions from them are caught and
// reported to the observer).
//
// Destruction: the last reference to a heartbeat may go on one of its own
// threads (an on_lost callback that owned the last Lock); its shutdown is then
// handed to a short-lived detached thread, never a join of itself.
//
// fork(): a child process has none of the parent's threads. A pthread_atfork
// handler (registered with the first heartbeat) makes the child consistent:
// every lease the parent's heartbeats watched is marked lost in the child and
// its stop token requested (inside fork(), so its stop callbacks run there;
// its on_lost callbacks do not run and no observer event is sent: the lock is
// the parent's, which goes on holding it); inherited heartbeats hand any new
// registration to the child's own process-wide heartbeat, and destroying one
// in the child leaks its thread handles and queue on purpose instead of
// joining threads that do not exist there. A lease whose mutex another thread
// of the parent held at the instant of fork() cannot be marked (and that Lock
// must not be used in the child). Locks created in the child work normally.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "clock.hpp"
#include "detail/heartbeat_scheduler.hpp"
#include "detail/lanes.hpp"
#include "detail/time.hpp"

namespace dlock {

/// Why a held lock was lost.
enum class LostReason {
  expired,     ///< validity ended without a successful extension
  taken,       ///< the server says another owner (or nobody) holds it while it should still be valid
  connection,  ///< the connection or session that held it is gone, or extensions kept failing until validity ended
  max_hold,    ///< LockOptions::max_hold passed; the heartbeat released it
};

[[nodiscard]] constexpr std::string_view to_string(LostReason r) noexcept {
  switch (r) {
    case LostReason::expired:
      return "expired";
    case LostReason::taken:
      return "taken";
    case LostReason::connection:
      return "connection";
    case LostReason::max_hold:
      return "max_hold";
  }
  return "unknown";
}

/// What an on_lost callback receives.
struct LostEvent {
  LostReason reason{};
  std::string lock;
  std::string owner;
  std::optional<std::uint64_t> token;
  std::string message;
};

class Heartbeat;

namespace detail {

/// The times that decide what the heartbeat does with one lease.
struct BeatTimes {
  TimePoint valid_until;
  TimePoint extend_due;                   ///< meaningful when `extending`
  std::optional<TimePoint> max_hold_end;  ///< when to stop extending and release
  bool extending = false;                 ///< auto-extend is on and no extension is in flight
  std::optional<TimePoint> long_held_at;  ///< when to report a long hold (until reported)
};

enum class BeatAction { none, extend, expire, max_hold };

/// What to do for a lease at `now`. `slack` lets an extension go out early, so
/// that extensions falling due close together travel in one batch.
[[nodiscard]] constexpr BeatAction beat_action(const BeatTimes& t, TimePoint now, Clock::duration slack) noexcept {
  if (t.max_hold_end && now >= *t.max_hold_end) return BeatAction::max_hold;
  if (now >= t.valid_until) return BeatAction::expire;
  if (t.extending && now + slack >= t.extend_due) return BeatAction::extend;
  return BeatAction::none;
}

/// When the heartbeat must next look at the lease.
[[nodiscard]] constexpr TimePoint beat_wake(const BeatTimes& t) noexcept {
  TimePoint wake = t.valid_until;
  if (t.max_hold_end) wake = std::min(wake, *t.max_hold_end);
  if (t.extending) wake = std::min(wake, t.extend_due);
  if (t.long_held_at) wake = std::min(wake, *t.long_held_at);
  return wake;
}

class HeartbeatCore;

/// One watched lease, as the heartbeat sees it. Implemented by the front end.
class Beat {
 public:
  virtual ~Beat() = default;

  /// Leases with equal keys are extended together by extend_batch(), and
  /// their blocking operations run one at a time (one lane per backend).
  using BatchKey = std::pair<const void*, const void*>;
  [[nodiscard]] virtual BatchKey batch_key() const noexcept = 0;
  /// The lease's clock (LockOptions::clock).
  [[nodiscard]] virtual const Clock& clock() const noexcept = 0;
  [[nodiscard]] virtual Clock::duration slack() const noexcept = 0;
  /// When to look again, or nullopt once the lease is released or lost.
  [[nodiscard]] virtual std::optional<TimePoint> wake_at() const noexcept = 0;
  /// Timer thread: decides what to do now, and claims an extension (marks it
  /// in flight) so that it is not started twice.
  [[nodiscard]] virtual BeatAction claim(TimePoint now) noexcept = 0;
  /// Timer thread: the validity ended; declare the lease lost.
  virtual void expire(HeartbeatCore& hb) noexcept = 0;
  /// Timer thread: max_hold passed; declare the lease lost and have the
  /// backend's lane release it.
  virtual void stop_holding(HeartbeatCore& hb) noexcept = 0;
  /// The backend's lane: extend every lease of `group` (all share this batch
  /// key and this dynamic type).
  virtual void extend_batch(HeartbeatCore& hb, std::span<const std::shared_ptr<Beat>> group) noexcept = 0;
  /// In a child process, inside fork() (no other thread exists): the lease is
  /// the parent's, so mark it lost here. Returns the stop source to request
  /// once the heartbeat's mutexes are released (nostopstate when there is
  /// none, or when a thread of the parent held the lease's mutex at the fork).
  [[nodiscard]] virtual std::stop_source forked() noexcept = 0;

 private:
  friend class HeartbeatCore;
  using Queue = std::multimap<std::chrono::steady_clock::time_point, std::shared_ptr<Beat>>;
  std::optional<Queue::iterator> slot_;  // guarded by the heartbeat's mutex
};

/// What every heartbeat of the process shares: the list fork() needs, and the
/// process-wide instance. Never destroyed (a detached shutdown may outlive main).
struct HeartbeatRegistry {
  std::mutex process_wide_mu;  // held while the process-wide heartbeat is made
  std::weak_ptr<Heartbeat> process_wide;
  std::mutex mu;  // guards cores; taken after process_wide_mu, before any core's mutex
  std::vector<HeartbeatCore*> cores;
};
[[nodiscard]] inline HeartbeatRegistry& heartbeat_registry() noexcept {
  static auto* const registry = new HeartbeatRegistry;
  return *registry;
}

/// The machinery of one Heartbeat: the queue of leases, driven by a
/// scheduler (its timer, and its lanes for backend operations and for
/// callbacks). Every heartbeat thread refers to this object, never to the
/// Heartbeat handle, so that the handle can go on one of these threads while
/// the machinery is shut down elsewhere.
class HeartbeatCore {
 public:
  explicit HeartbeatCore(std::shared_ptr<HeartbeatScheduler> scheduler) : sched_(std::move(scheduler)) {
    sched_->start([this] { on_timer(); });
    ++live_count();
    register_fork_handlers();
  }
  /// Stops the timer, then runs what the lanes still have queued (pending
  /// extensions find their leases released; pending callbacks run), and
  /// joins every thread. Must not run on one of them (see ~Heartbeat).
  ~HeartbeatCore() {
    sched_->stop();
    --live_count();
  }
  HeartbeatCore(const HeartbeatCore&) = delete;
  HeartbeatCore& operator=(const HeartbeatCore&) = delete;

  /// Cores not yet fully shut down (for tests: a deferred shutdown has ended).
  [[nodiscard]] static std::atomic<int>& live_count() noexcept {
    static std::atomic<int> n{0};
    return n;
  }

  /// (Re)schedules `beat` at its wake_at(); drops it when that is nullopt.
  /// Must not be called while holding the beat's own mutex.
  void watch(const std::shared_ptr<Beat>& beat) {
    const auto wake = beat->wake_at();
    const auto real = wake ? saturating_add(sched_->now(), saturating_sub(*wake, beat->clock().now())) : RealTime{};
    bool rearm = false;
    {
      std::lock_guard lk(mu_);
      if (beat->slot_) queue_.erase(*std::exchange(beat->slot_, std::nullopt));
      if (!wake) return;
      beat->slot_ = queue_.emplace(real, beat);
      max_slack_ = std::max(max_slack_, beat->slack());
      rearm = real < armed_for_;
      if (rearm) armed_for_ = real;
    }
    if (rearm) sched_->post_timer([this] { arm(); });
  }
  void unwatch(Beat& beat) noexcept {
    std::lock_guard lk(mu_);
    if (beat.slot_) queue_.erase(*std::exchange(beat.slot_, std::nullopt));
  }
  [[nodiscard]] std::size_t watched() const {
    std::lock_guard lk(mu_);
    return queue_.size();
  }

  /// Runs a blocking operation of a backend on that backend's lane.
  void post_backend(Beat::BatchKey key, Lanes::Task task) {
    sched_->post(HeartbeatScheduler::Lane::backend, key, std::move(task));
  }
  /// Runs a lease's on_lost callbacks on its callback lane.
  void post_callbacks(const Beat& lease, Lanes::Task task) {
    sched_->post(HeartbeatScheduler::Lane::callback, {&lease, nullptr}, std::move(task));
  }

  [[nodiscard]] HeartbeatScheduler& scheduler() const noexcept { return *sched_; }

  // ---- fork (see heartbeat.hpp's header comment) ----

  /// True in a child process for a heartbeat inherited from the parent.
  [[nodiscard]] bool orphaned() const noexcept { return orphaned_.load(std::memory_order_acquire); }

 private:
  friend class dlock::Heartbeat;       // an orphan's successor_, under mu_
  using RealTime = Clock::time_point;  // the scheduler's time

  static void register_fork_handlers() noexcept {
    static const int once = ::pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child);
    (void)once;
  }
  // The parent, before fork(): every mutex the child will need is taken, so
  // that the child gets them unlocked and consistent.
  static void before_fork() noexcept {
    auto& r = heartbeat_registry();
    r.process_wide_mu.lock();
    r.mu.lock();
    for (auto* core : r.cores) core->mu_.lock();
  }
  static void after_fork_in_parent() noexcept {
    auto& r = heartbeat_registry();
    for (auto it = r.cores.rbegin(); it != r.cores.rend(); ++it) (*it)->mu_.unlock();
    r.mu.unlock();
    r.process_wide_mu.unlock();
  }
  // The child, inside fork(), alone: every inherited core is orphaned, every
  // lease it watched is marked lost, and the stop tokens are requested last,
  // with no mutex held (their stop callbacks run here, synchronously).
  static void after_fork_in_child() noexcept {
    auto& r = heartbeat_registry();
    std::vector<std::stop_source> stops;
    for (auto* core : r.cores) core->orphan(stops);
    for (auto it = r.cores.rbegin(); it != r.cores.rend(); ++it) (*it)->mu_.unlock();
    r.cores.clear();      // orphans are never orphaned again
    r.process_wide = {};  // the child's first caller makes its own
    r.mu.unlock();
    r.process_wide_mu.unlock();
    for (auto& stop : stops) stop.request_stop();
  }
  // Requires mu_; in the child only.
  void orphan(std::vector<std::stop_source>& stops) noexcept {
    orphaned_.store(true, std::memory_order_release);
    auto mark = [&](Beat& beat) noexcept {
      beat.slot_.reset();  // the orphan's queue is never touched again
      auto stop = beat.forked();
      if (!stop.stop_possible()) return;
      try {
        stops.push_back(std::move(stop));
      } catch (...) {  // out of memory inside fork(): the lease is still marked lost
      }
    };
    for (auto& entry : queue_) mark(*entry.second);
    for (auto& beat : handling_) mark(*beat);  // taken off the queue by the timer at the fork
  }

  // Timer thread.
  void arm() {
    RealTime next;
    {
      std::lock_guard lk(mu_);
      if (queue_.empty()) {
        armed_for_ = RealTime::max();
        return;
      }
      next = queue_.begin()->first;
      armed_for_ = next;
    }
    sched_->arm(next);
  }

  // Timer thread: handles every lease that is due, or due within the slack.
  void on_timer() {
    {
      std::lock_guard lk(mu_);
      const RealTime horizon = saturating_add(sched_->now(), max_slack_);
      while (!queue_.empty() && queue_.begin()->first <= horizon) {
        auto node = queue_.extract(queue_.begin());
        node.mapped()->slot_.reset();
        handling_.push_back(std::move(node.mapped()));
      }
      armed_for_ = RealTime::min();  // arm() below runs anyway: watch() need not post one
    }
    std::map<Beat::BatchKey, std::vector<std::shared_ptr<Beat>>> batches;
    for (const auto& beat : handling_) {  // only this thread changes handling_
      switch (beat->claim(beat->clock().now())) {
        case BeatAction::extend:
          batches[beat->batch_key()].push_back(beat);
          break;
        case BeatAction::expire:
          beat->expire(*this);
          break;
        case BeatAction::max_hold:
          beat->stop_holding(*this);
          break;
        case BeatAction::none:
          break;
      }
      watch(beat);  // the next wake-up: expiry while an extension is in flight, or nothing once lost
    }
    std::vector<std::shared_ptr<Beat>> handled;
    {
      std::lock_guard lk(mu_);
      handled.swap(handling_);
    }
    handled.clear();  // may destroy leases, and so user callbacks: not under mu_
    for (auto& [key, group] : batches) {
      try {
        post_backend(key, [this, group = std::move(group)] {
          group.front()->extend_batch(*this, group);
          for (const auto& beat : group) watch(beat);
        });
      } catch (...) {  // out of memory: these leases stay claimed and are declared lost when their validity ends
      }
    }
    arm();
  }

  const std::shared_ptr<HeartbeatScheduler> sched_;
  mutable std::mutex mu_;
  Beat::Queue queue_;                            // guarded by mu_
  std::vector<std::shared_ptr<Beat>> handling_;  // guarded by mu_; taken off the queue by on_timer()
  RealTime armed_for_ = RealTime::max();         // guarded by mu_
  Clock::duration max_slack_{};                  // guarded by mu_
  std::atomic<bool> orphaned_{false};
  std::shared_ptr<Heartbeat> successor_;  // guarded by mu_: an orphan's stand-in in the child
};

}  // namespace detail

class Heartbeat {
 public:
  /// Starts the timer thread (the lanes start theirs on demand).
  Heartbeat() : Heartbeat(std::make_shared<detail::AsioHeartbeatScheduler>()) {}
  /// A heartbeat driven by `scheduler` (tests: a ManualHeartbeatScheduler,
  /// which the test keeps a reference to while it drives it).
  explicit Heartbeat(std::shared_ptr<detail::HeartbeatScheduler> scheduler)
      : core_(std::make_unique<detail::HeartbeatCore>(std::move(scheduler))) {
    auto& r = detail::heartbeat_registry();
    std::lock_guard lk(r.mu);
    r.cores.push_back(core_.get());
  }
  /// Stops the threads; pending extensions find their leases released and
  /// pending callbacks still run (every Lock that used this heartbeat holds
  /// a reference to it, so none is left by then). On one of the heartbeat's
  /// own threads (an on_lost callback that owned the last Lock) the shutdown
  /// is handed to a detached thread instead of joining itself; in a child
  /// process after fork() an inherited heartbeat is leaked, threads and all,
  /// since none of its threads exists there.
  ~Heartbeat() {
    {
      auto& r = detail::heartbeat_registry();
      std::lock_guard lk(r.mu);
      std::erase(r.cores, core_.get());
    }
    if (core_->orphaned()) {
      std::shared_ptr<Heartbeat> successor;
      {
        std::lock_guard lk(core_->mu_);
        successor.swap(core_->successor_);
      }
      (void)core_.release();  // deliberately leaked: see above
      return;
    }
    if (core_->scheduler().on_own_thread()) {
      auto* core = core_.release();
      core->scheduler().defer([core] { delete core; });  // if it cannot, a leak rather than a self-join
    }
  }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  /// The process-wide heartbeat: created on first use, destroyed when the
  /// last shared_ptr to it goes. In a child process after fork(), a new one.
  [[nodiscard]] static std::shared_ptr<Heartbeat> process_wide() {
    auto& r = detail::heartbeat_registry();
    std::lock_guard lk(r.process_wide_mu);
    auto hb = r.process_wide.lock();
    if (!hb) {
      hb = std::make_shared<Heartbeat>();
      r.process_wide = hb;
    }
    return hb;
  }

  /// Number of leases being watched.
  [[nodiscard]] std::size_t watched() const {
    if (core_->orphaned()) {
      std::shared_ptr<Heartbeat> successor;
      {
        std::lock_guard lk(core_->mu_);
        successor = core_->successor_;
      }
      return successor ? successor->watched() : 0;
    }
    return core_->watched();
  }

  /// Threads it runs now: the timer thread, plus the lanes' threads that
  /// have not retired (see the header comment).
  [[nodiscard]] std::size_t threads() const noexcept { return core_->orphaned() ? 0 : core_->scheduler().threads(); }

  // ---- used by Lock ----

  /// (Re)schedules `beat` at its wake_at(); drops it when that is nullopt.
  /// Must not be called while holding the beat's own mutex. In a child
  /// process, an inherited heartbeat hands the lease to the child's own.
  void watch(const std::shared_ptr<detail::Beat>& beat) {
    if (core_->orphaned()) return successor()->watch(beat);
    core_->watch(beat);
  }
  void unwatch(detail::Beat& beat) noexcept {
    if (!core_->orphaned()) return core_->unwatch(beat);
    std::shared_ptr<Heartbeat> successor;
    {
      std::lock_guard lk(core_->mu_);
      successor = core_->successor_;
    }
    if (successor) successor->unwatch(beat);
  }

 private:
  // The heartbeat that stands in for an orphan (in a child process).
  std::shared_ptr<Heartbeat> successor() {
    {
      std::lock_guard lk(core_->mu_);
      if (core_->successor_) return core_->successor_;
    }
    auto fresh = process_wide();  // takes the registry's mutexes: not under mu_
    std::lock_guard lk(core_->mu_);
    if (!core_->successor_) core_->successor_ = std::move(fresh);
    return core_->successor_;
  }

  std::unique_ptr<detail::HeartbeatCore> core_;
};

}  // namespace dlock
