// Internal: the seam under the heartbeat. A HeartbeatScheduler keeps the time
// the heartbeat's queue is kept in, one timer, and the lanes where blocking
// backend work and on_lost callbacks run.
//
//   - AsioHeartbeatScheduler (production): steady_clock, a Boost.Asio timer
//     thread, and two Lanes (see lanes.hpp and heartbeat.hpp).
//   - ManualHeartbeatScheduler (tests): a ManualClock and no thread at all;
//     advance() moves the clock from one timer expiry to the next and runs,
//     on the caller's thread, everything that falls due, so heartbeat tests
//     need no sleeping and no timing margins.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "../clock.hpp"
#include "lanes.hpp"

namespace dlock::detail {

class HeartbeatScheduler {
 public:
  enum class Lane { backend, callback };

  virtual ~HeartbeatScheduler() = default;

  /// The time the heartbeat's queue is kept in.
  [[nodiscard]] virtual Clock::time_point now() const noexcept = 0;
  /// Sets what the timer calls. Once, before anything else.
  virtual void start(std::function<void()> on_timer) = 0;
  /// Runs `task` on the timer's thread, serialised with on_timer.
  virtual void post_timer(std::function<void()> task) = 0;
  /// On the timer's thread: call on_timer once at `at`, replacing the last arm().
  virtual void arm(Clock::time_point at) = 0;
  /// Runs `task` (which must not throw) on lane `key` of kind `lane`.
  virtual void post(Lane lane, Lanes::Key key, Lanes::Task task) = 0;
  /// Stops the timer, runs what the lanes still hold, ends every thread.
  /// Not on one of this scheduler's threads.
  virtual void stop() noexcept = 0;
  /// Whether the caller runs on one of this scheduler's threads.
  [[nodiscard]] virtual bool on_own_thread() const noexcept = 0;
  /// Runs `task` later, off this scheduler's threads (the shutdown of a
  /// heartbeat whose last reference went on one of them).
  virtual void defer(std::function<void()> task) noexcept = 0;
  /// Threads running now.
  [[nodiscard]] virtual std::size_t threads() const noexcept = 0;
};

/// Production: steady_clock, one Asio timer thread, and two Lanes.
class AsioHeartbeatScheduler final : public HeartbeatScheduler {
 public:
  /// Limits on the lanes' threads, and how long an idle one lives.
  static constexpr std::size_t max_backend_threads = 64;
  static constexpr std::size_t max_callback_threads = 4;
  static constexpr std::chrono::seconds idle_thread_timeout{30};

  AsioHeartbeatScheduler() : work_(io_.get_executor()), timer_(io_), thread_([this] { io_.run(); }) {}
  ~AsioHeartbeatScheduler() override { stop(); }

  [[nodiscard]] Clock::time_point now() const noexcept override { return std::chrono::steady_clock::now(); }
  void start(std::function<void()> on_timer) override { on_timer_ = std::move(on_timer); }
  void post_timer(std::function<void()> task) override { boost::asio::post(io_, std::move(task)); }
  void arm(Clock::time_point at) override {
    timer_.expires_at(at);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) on_timer_();
    });
  }
  void post(Lane lane, Lanes::Key key, Lanes::Task task) override {
    (lane == Lane::backend ? backend_lanes_ : callback_lanes_).post(key, std::move(task));
  }
  void stop() noexcept override {
    if (!thread_.joinable()) return;
    work_.reset();
    boost::asio::post(io_, [this] { timer_.cancel(); });
    io_.stop();
    thread_.join();
    backend_lanes_.stop();  // before the callbacks: an extension may still post some
    callback_lanes_.stop();
  }
  [[nodiscard]] bool on_own_thread() const noexcept override {
    return std::this_thread::get_id() == thread_.get_id() || backend_lanes_.on_own_thread() ||
           callback_lanes_.on_own_thread();
  }
  void defer(std::function<void()> task) noexcept override {
    try {
      std::thread(std::move(task)).detach();
    } catch (...) {  // no thread to be had: the task is dropped (a deliberate leak, never a self-join)
    }
  }
  [[nodiscard]] std::size_t threads() const noexcept override {
    return (thread_.joinable() ? 1 : 0) + backend_lanes_.threads() + callback_lanes_.threads();
  }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  boost::asio::steady_timer timer_;
  std::function<void()> on_timer_;
  Lanes backend_lanes_{max_backend_threads, idle_thread_timeout};
  Lanes callback_lanes_{max_callback_threads, idle_thread_timeout};
  std::thread thread_;  // last: starts once everything above exists
};

/// Tests: a ManualClock and no thread. Everything runs inside advance() /
/// run_pending(), on the caller's thread, in a fixed order: timer tasks and
/// lane tasks in posting order, then the timer when it is due. The leases it
/// watches must use the same clock (LockOptions::clock, MemoryBackend(clock)).
class ManualHeartbeatScheduler final : public HeartbeatScheduler {
 public:
  explicit ManualHeartbeatScheduler(ManualClock& clock) noexcept : clock_(clock) {}

  /// Moves the clock forward by `d`, stopping at every timer expiry on the way
  /// and running what falls due there (extensions, losses, callbacks).
  void advance(Clock::duration d) {
    const auto end = clock_.now() + d;
    for (;;) {
      run_pending();
      std::optional<Clock::time_point> next;
      {
        std::lock_guard lk(mu_);
        next = armed_;
      }
      if (!next || *next > end) break;
      if (*next > clock_.now()) clock_.advance(*next - clock_.now());
      fire();
    }
    if (end > clock_.now()) clock_.advance(end - clock_.now());
    run_pending();
  }
  /// Runs the queued tasks, and the timer if it is due now, until none is left.
  void run_pending() {
    const auto self = std::this_thread::get_id();
    {
      std::lock_guard lk(mu_);
      runner_ = self;
    }
    for (;;) {
      std::function<void()> task;
      {
        std::lock_guard lk(mu_);
        if (!tasks_.empty()) {
          task = std::move(tasks_.front());
          tasks_.pop_front();
        }
      }
      if (task) {
        task();
        continue;
      }
      {
        std::lock_guard lk(mu_);
        if (!armed_ || *armed_ > clock_.now()) break;
      }
      fire();
    }
    std::vector<std::function<void()>> deferred;
    {
      std::lock_guard lk(mu_);
      runner_ = {};
      deferred.swap(deferred_);
    }
    for (auto& task : deferred) task();
  }
  /// Tasks queued and not yet run.
  [[nodiscard]] std::size_t pending() const {
    std::lock_guard lk(mu_);
    return tasks_.size();
  }

  [[nodiscard]] Clock::time_point now() const noexcept override { return clock_.now(); }
  void start(std::function<void()> on_timer) override {
    std::lock_guard lk(mu_);
    on_timer_ = std::move(on_timer);
  }
  void post_timer(std::function<void()> task) override { push(std::move(task)); }
  void arm(Clock::time_point at) override {
    std::lock_guard lk(mu_);
    armed_ = at;
  }
  void post(Lane, Lanes::Key, Lanes::Task task) override { push(std::move(task)); }
  void stop() noexcept override {
    std::deque<std::function<void()>> tasks;
    {
      std::lock_guard lk(mu_);
      stopped_ = true;
      on_timer_ = nullptr;
      armed_.reset();
      tasks.swap(tasks_);
    }
    for (auto& task : tasks) task();  // as the real lanes do: what was queued still runs
  }
  [[nodiscard]] bool on_own_thread() const noexcept override {
    std::lock_guard lk(mu_);
    return runner_ == std::this_thread::get_id();
  }
  void defer(std::function<void()> task) noexcept override {
    std::lock_guard lk(mu_);
    try {
      deferred_.push_back(std::move(task));
    } catch (...) {  // dropped: a deliberate leak, never a self-join
    }
  }
  [[nodiscard]] std::size_t threads() const noexcept override { return 0; }

 private:
  void push(std::function<void()> task) {
    std::lock_guard lk(mu_);
    if (!stopped_) tasks_.push_back(std::move(task));
  }
  void fire() {
    std::function<void()> on_timer;
    {
      std::lock_guard lk(mu_);
      armed_.reset();
      on_timer = on_timer_;
    }
    if (on_timer) on_timer();
  }

  ManualClock& clock_;
  mutable std::mutex mu_;
  std::function<void()> on_timer_;
  std::optional<Clock::time_point> armed_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::function<void()>> deferred_;
  std::thread::id runner_;
  bool stopped_ = false;
};

}  // namespace dlock::detail
