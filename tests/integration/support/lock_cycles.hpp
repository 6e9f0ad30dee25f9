// Test support: a loop of lock cycles that reports what went wrong instead of
// asserting, so that it can run in a forked child too (unit/fork_support.hpp).
#pragma once

#include <dlock/dlock.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace dlock::test {

/// `cycles` try_lock + release of the names "<who>:0" .. "<who>:7" on
/// `backend`, each also checked by `check(name, owner)` while held (returns
/// what is wrong, or ""). Returns "" or what went wrong first.
template <class Backend>
std::string lock_cycles(Backend& backend, const std::string& who, int cycles,
                        const std::function<std::string(const std::string&, std::string_view)>& check = {}) {
  struct Quiet : Observer {
    void on_event(const Event&) noexcept override {}
  };
  static const auto quiet = std::make_shared<Quiet>();
  for (int i = 0; i < cycles; ++i) {
    const std::string name = who + ":" + std::to_string(i % 8);
    try {
      Lock<Backend> lock(backend, name, {.ttl = std::chrono::seconds(10), .observer = quiet});
      if (!lock.try_lock()) return "not acquired: " + name;
      if (check) {
        if (std::string why = check(name, lock.owner_id()); !why.empty()) return why;
      }
      if (lock.release() != ReleaseResult::released) return "not released: " + name;
    } catch (const std::exception& e) {
      return name + ": " + e.what();
    }
  }
  return {};
}

}  // namespace dlock::test
