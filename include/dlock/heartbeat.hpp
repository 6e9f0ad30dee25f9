// dlock/heartbeat.hpp: Heartbeat, the background service that extends held
// locks and notices when they are lost; LostEvent and LostReason.
//
// A Lock with LockOptions::auto_extend registers each acquisition with a
// Heartbeat, by default the process-wide one (Heartbeat::process_wide()), which
// is created with the first such lock and stopped when the last Lock using it
// is destroyed. It runs two threads for the whole process, not one per lock:
//
//   - a timer thread (one Boost.Asio io_context with one steady_timer) that
//     knows, for every watched lease, when its next extension is due, when
//     its validity ends and when its max_hold passes, and never blocks; it
//     declares a lease lost the moment its validity ends without a successful
//     extension, even while a server is not answering;
//   - a worker thread that performs the (blocking) extensions and releases
//     and runs the holders' on_lost callbacks.
//
// Extensions that fall due close together (within a quarter of the extension
// interval) are collected and, for backends that offer extend_many (Redis),
// sent to each server as one pipelined batch.
//
// Lock-loss signalling: the stop token of the acquisition is requested, the
// observer gets a `lost` event, and the on_lost callbacks run on the worker
// thread (exceptions from them are caught and reported to the observer).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include "backend.hpp"
#include "clock.hpp"

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

/// One watched lease, as the heartbeat sees it. Implemented by the front end.
class Beat {
 public:
  virtual ~Beat() = default;

  /// Leases with equal keys are extended together by extend_batch().
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
  virtual void expire(Heartbeat& hb) noexcept = 0;
  /// Timer thread: max_hold passed; declare the lease lost and have the
  /// worker release it.
  virtual void stop_holding(Heartbeat& hb) noexcept = 0;
  /// Worker thread: extend every lease of `group` (all share this batch key
  /// and this dynamic type).
  virtual void extend_batch(Heartbeat& hb, std::span<const std::shared_ptr<Beat>> group) noexcept = 0;

 private:
  friend class dlock::Heartbeat;
  using Queue = std::multimap<std::chrono::steady_clock::time_point, std::shared_ptr<Beat>>;
  std::optional<Queue::iterator> slot_;  // guarded by the heartbeat's mutex
};

}  // namespace detail

class Heartbeat {
 public:
  /// Starts the timer and worker threads.
  Heartbeat() : work_(io_.get_executor()), timer_(io_), thread_([this] { io_.run(); }) {}
  /// Stops both threads; pending extensions are dropped (every Lock that used
  /// this heartbeat holds a reference to it, so none is left by then).
  ~Heartbeat() {
    work_.reset();
    boost::asio::post(io_, [this] { timer_.cancel(); });
    io_.stop();
    thread_.join();
    worker_.join();
  }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  /// The process-wide heartbeat: created on first use, destroyed when the
  /// last shared_ptr to it goes.
  [[nodiscard]] static std::shared_ptr<Heartbeat> process_wide() {
    static std::mutex mu;
    static std::weak_ptr<Heartbeat> instance;
    std::lock_guard lk(mu);
    auto hb = instance.lock();
    if (!hb) {
      hb = std::make_shared<Heartbeat>();
      instance = hb;
    }
    return hb;
  }

  /// Number of leases being watched.
  [[nodiscard]] std::size_t watched() const {
    std::lock_guard lk(mu_);
    return queue_.size();
  }

  // ---- used by Lock ----

  /// (Re)schedules `beat` at its wake_at(); drops it when that is nullopt.
  /// Must not be called while holding the beat's own mutex.
  void watch(const std::shared_ptr<detail::Beat>& beat) {
    const auto wake = beat->wake_at();
    const auto real = wake ? std::chrono::steady_clock::now() + (*wake - beat->clock().now())
                           : std::chrono::steady_clock::time_point{};
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
    if (rearm) boost::asio::post(io_, [this] { arm(); });
  }
  void unwatch(detail::Beat& beat) noexcept {
    std::lock_guard lk(mu_);
    if (beat.slot_) queue_.erase(*std::exchange(beat.slot_, std::nullopt));
  }
  /// Runs `f` on the worker thread.
  template <class F>
  void post_work(F&& f) {
    boost::asio::post(worker_, std::forward<F>(f));
  }

 private:
  using RealTime = std::chrono::steady_clock::time_point;

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
    timer_.expires_at(next);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) on_timer();
    });
  }

  // Timer thread: handles every lease that is due, or due within the slack.
  void on_timer() {
    std::vector<std::shared_ptr<detail::Beat>> due;
    {
      std::lock_guard lk(mu_);
      const RealTime horizon = std::chrono::steady_clock::now() + max_slack_;
      while (!queue_.empty() && queue_.begin()->first <= horizon) {
        auto node = queue_.extract(queue_.begin());
        node.mapped()->slot_.reset();
        due.push_back(std::move(node.mapped()));
      }
      armed_for_ = RealTime::min();  // arm() below runs anyway: watch() need not post one
    }
    std::map<detail::Beat::BatchKey, std::vector<std::shared_ptr<detail::Beat>>> batches;
    for (auto& beat : due) {
      switch (beat->claim(beat->clock().now())) {
        case detail::BeatAction::extend:
          batches[beat->batch_key()].push_back(beat);
          break;
        case detail::BeatAction::expire:
          beat->expire(*this);
          break;
        case detail::BeatAction::max_hold:
          beat->stop_holding(*this);
          break;
        case detail::BeatAction::none:
          break;
      }
      watch(beat);  // the next wake-up: expiry while an extension is in flight, or nothing once lost
    }
    for (auto& [key, group] : batches) {
      post_work([this, group = std::move(group)] {
        group.front()->extend_batch(*this, group);
        for (const auto& beat : group) watch(beat);
      });
    }
    arm();
  }

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  boost::asio::steady_timer timer_;
  boost::asio::thread_pool worker_{1};
  mutable std::mutex mu_;
  detail::Beat::Queue queue_;
  RealTime armed_for_ = RealTime::max();
  Clock::duration max_slack_{};
  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace dlock
