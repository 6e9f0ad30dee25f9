// Internal: Lanes, serial task queues served by threads started on demand.
//
// Tasks posted with equal keys form a lane: they run one at a time, in the
// order posted. Different lanes never wait for each other while fewer than
// `max_threads` threads are busy: a lane that gets work takes an idle thread or
// starts a new one. A thread that finds no work for `idle_timeout` exits, so a
// quiet process keeps no threads. The heartbeat uses one Lanes for blocking
// backend operations (a lane per backend: a stalled server delays only its own
// leases) and one for on_lost callbacks (a lane per lease).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace dlock::detail {

class Lanes {
 public:
  using Key = std::pair<const void*, const void*>;
  using Task = std::function<void()>;

  Lanes(std::size_t max_threads, std::chrono::milliseconds idle_timeout) noexcept
      : max_threads_(max_threads < 1 ? 1 : max_threads), idle_timeout_(idle_timeout) {}
  /// stop(), then drops whatever could not run.
  ~Lanes() { stop(); }
  Lanes(const Lanes&) = delete;
  Lanes& operator=(const Lanes&) = delete;

  /// Queues `task` (which must not throw) on lane `key`. A task posted once
  /// every thread has ended in stop() is dropped. Throws std::bad_alloc only.
  void post(Key key, Task task) {
    std::vector<std::thread> finished;
    {
      std::lock_guard lk(mu_);
      if (stopping_ && live_ == 0) return;  // `task` is destroyed on return, outside the mutex
      Lane& lane = lanes_[key];
      lane.tasks.push_back(std::move(task));
      if (!lane.running && lane.tasks.size() == 1) {
        ready_.push_back(key);
        if (idle_ > 0) cv_.notify_one();
        if (ready_.size() > idle_ && threads_.size() < max_threads_ && !stopping_) start_thread();
      }
      finished.swap(finished_);
    }
    for (auto& t : finished) t.join();  // threads that retired; they have left run()
  }

  /// Runs every queued task (also those queued meanwhile by running tasks),
  /// then ends the threads and waits for them. Must not be called on one of
  /// this object's threads. Idempotent.
  void stop() noexcept {
    std::list<std::thread> threads;
    std::vector<std::thread> finished;
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
      cv_.notify_all();
      threads.swap(threads_);
      finished.swap(finished_);
    }
    for (auto& t : threads) t.join();
    for (auto& t : finished) t.join();
  }

  /// Whether the calling thread is one of this object's threads.
  [[nodiscard]] bool on_own_thread() const noexcept {
    const auto self = std::this_thread::get_id();
    std::lock_guard lk(mu_);
    for (const auto& t : threads_)
      if (t.get_id() == self) return true;
    return false;
  }

  /// Threads that have not ended (busy or idle).
  [[nodiscard]] std::size_t threads() const noexcept {
    std::lock_guard lk(mu_);
    return live_;
  }

 private:
  struct Lane {
    std::deque<Task> tasks;
    bool running = false;  // a thread runs its front task
  };
  using Thread = std::list<std::thread>::iterator;

  // Requires mu_. A thread that cannot be started is no error: the task
  // waits for a running thread, or for the next post.
  void start_thread() noexcept {
    try {
      threads_.emplace_back();
      const Thread self = std::prev(threads_.end());
      *self = std::thread([this, self] { run(self); });  // run() waits for mu_, held here
      ++live_;
    } catch (...) {
      if (!threads_.empty() && !threads_.back().joinable()) threads_.pop_back();
    }
  }

  void run(Thread self) noexcept {
    std::unique_lock lk(mu_);
    for (;;) {
      if (ready_.empty()) {
        if (stopping_) {  // stop() owns this thread's handle and joins it
          --live_;
          return;
        }
        ++idle_;
        const bool woken = cv_.wait_for(lk, idle_timeout_, [&] { return stopping_ || !ready_.empty(); });
        --idle_;
        if (!woken) {  // idle for idle_timeout: retire; the next post() or stop() joins this thread
          finished_.push_back(std::move(*self));
          threads_.erase(self);
          --live_;
          return;
        }
        continue;
      }
      const Key key = ready_.front();
      ready_.pop_front();
      const auto lane = lanes_.find(key);
      Task task = std::move(lane->second.tasks.front());
      lane->second.tasks.pop_front();
      lane->second.running = true;
      lk.unlock();
      try {
        task();
      } catch (...) {  // tasks do not throw; if one does, the thread survives
      }
      task = nullptr;  // its captures may run user code (destructors): not under mu_
      lk.lock();
      lane->second.running = false;
      if (lane->second.tasks.empty()) {
        lanes_.erase(lane);
      } else {
        ready_.push_back(key);
      }
    }
  }

  const std::size_t max_threads_;
  const std::chrono::milliseconds idle_timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, Lane> lanes_;
  std::deque<Key> ready_;  // lanes with tasks and no running thread, oldest first
  std::list<std::thread> threads_;
  std::vector<std::thread> finished_;  // retired threads, not yet joined
  std::size_t idle_ = 0;               // threads waiting for work
  std::size_t live_ = 0;               // threads that have not left run()
  bool stopping_ = false;
};

}  // namespace dlock::detail
