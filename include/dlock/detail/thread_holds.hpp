// Internal: the locks each thread holds, and the thread's agent name, for the
// wait records of cross-process deadlock detection (see RecordsWaits).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>

#include "../backend.hpp"

namespace dlock::detail {

struct ThreadHold {
  const void* acquisition;  // identifies the acquisition (its Held object)
  const void* backend;      // backend_identity()
  std::string name;
  std::string owner;
};

/// The locks one thread acquired and has not released yet. An acquisition
/// keeps the list it was added to and removes itself from it on release,
/// from whichever thread releases it, so hand-offs between threads leave
/// nothing behind. Thread-safe.
class ThreadHoldList {
 public:
  void add(ThreadHold hold) {
    std::lock_guard lk(mu_);
    holds_.push_back(std::move(hold));
  }
  void remove(const void* acquisition) noexcept {
    std::lock_guard lk(mu_);
    std::erase_if(holds_, [acquisition](const ThreadHold& h) { return h.acquisition == acquisition; });
  }
  /// (name, owner) of the holds on `backend`, copied.
  [[nodiscard]] std::vector<std::pair<std::string, std::string>> on(const void* backend) const {
    std::lock_guard lk(mu_);
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& h : holds_)
      if (h.backend == backend) out.emplace_back(h.name, h.owner);
    return out;
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard lk(mu_);
    return holds_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<ThreadHold> holds_;
};

/// This thread's list.
[[nodiscard]] inline const std::shared_ptr<ThreadHoldList>& thread_hold_list() {
  thread_local const auto list = std::make_shared<ThreadHoldList>();
  return list;
}

/// Entries in this thread's list (for tests and diagnostics).
[[nodiscard]] inline std::size_t thread_hold_count() { return thread_hold_list()->size(); }

/// "host:pid:thread" for this thread.
inline const std::string& agent_id() {
  thread_local const std::string id = [] {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    return fmt::format("{}:{}:{:x}", host, ::getpid(), std::hash<std::thread::id>{}(std::this_thread::get_id()));
  }();
  return id;
}

/// While alive, keeps a wait record published for one blocked acquire.
template <class B>
class WaitPublisher {
 public:
  WaitPublisher(B& backend, std::string_view lock, std::string_view waiter, std::chrono::milliseconds ttl)
      : backend_(backend),
        lock_(lock),
        waiter_(waiter),
        ttl_(ttl),
        held_(thread_hold_list()->on(backend_identity(backend))) {
    for (const auto& [name, owner] : held_) holds_.push_back(HeldLockRef{name, owner});
    publish();
  }
  WaitPublisher(const WaitPublisher&) = delete;
  WaitPublisher& operator=(const WaitPublisher&) = delete;
  ~WaitPublisher() { backend_.clear_wait(record()); }

  /// Refreshes the record once half its TTL has passed.
  void refresh() {
    if (std::chrono::steady_clock::now() - published_ >= ttl_ / 2) publish();
  }

 private:
  WaitRecord record() const noexcept { return WaitRecord{agent_id(), waiter_, lock_, holds_, ttl_}; }
  void publish() {
    backend_.record_wait(record());
    published_ = std::chrono::steady_clock::now();
  }

  B& backend_;
  std::string_view lock_;
  std::string_view waiter_;
  std::chrono::milliseconds ttl_;
  std::vector<std::pair<std::string, std::string>> held_;  // copies: another thread may release them meanwhile
  std::vector<HeldLockRef> holds_;                         // views into held_
  std::chrono::steady_clock::time_point published_{};
};

}  // namespace dlock::detail
