// Internal: the locks each thread holds, and the thread's agent name, for the
// wait records of cross-process deadlock detection (see RecordsWaits).
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
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

/// Locks acquired on this thread and not yet released. A lock released on
/// another thread stays listed here until this thread releases one.
inline std::vector<ThreadHold>& thread_holds() {
  thread_local std::vector<ThreadHold> holds;
  return holds;
}

inline void forget_hold(const void* acquisition) noexcept {
  auto& holds = thread_holds();
  holds.erase(std::remove_if(holds.begin(), holds.end(),
                             [acquisition](const ThreadHold& h) { return h.acquisition == acquisition; }),
              holds.end());
}

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
      : backend_(backend), lock_(lock), waiter_(waiter), ttl_(ttl) {
    for (const auto& h : thread_holds())
      if (h.backend == backend_identity(backend)) holds_.push_back(HeldLockRef{h.name, h.owner});
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
  std::vector<HeldLockRef> holds_;
  std::chrono::steady_clock::time_point published_{};
};

}  // namespace dlock::detail
