// dlock/lock_order.hpp: LockOrderChecker, which finds lock-order inversions
// inside a process before they deadlock (in the spirit of Linux's lockdep and
// abseil's deadlock detection).
//
// Enable it per lock with LockOptions::lock_order (a checker, e.g.
// &LockOrderChecker::process_wide()), or for every lock by compiling with
// -DDLOCK_CHECK_LOCK_ORDER (then the process-wide checker is the default). For each blocking acquire (lock(),
// try_lock_for/until) it records "class A was held while class B was
// acquired" for every class this thread holds, where a class is the lock name
// up to the first ':' ("orders:42" -> "orders"). When a new edge would close
// a cycle (this thread holds payments and wants orders, while elsewhere orders
// was held while acquiring payments) it reports the cycle before the attempt:
// an `order_violation` event to the lock's observer and, in abort mode (the
// default when NDEBUG is not defined and DLOCK_LOCK_ORDER_REPORT_ONLY is not
// set), std::abort() with the cycle on stderr.
//
// Single-attempt try_lock() is not checked (it cannot wait, so it cannot
// deadlock; std::lock relies on that). Locks held by one class at a time are
// not checked against themselves: take several locks of one class with
// lock_all(). A lock released on another thread than the one that acquired it
// stays on the acquiring thread's list until that thread releases the same
// Lock object again (it then counts as held there, and may report a false
// inversion).
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "metrics.hpp"  // default_lock_class

namespace dlock {

class LockOrderChecker {
 public:
  enum class Action { report, abort };

#if defined(NDEBUG) || defined(DLOCK_LOCK_ORDER_REPORT_ONLY)
  static constexpr Action default_action = Action::report;
#else
  static constexpr Action default_action = Action::abort;
#endif

  explicit LockOrderChecker(Action action = default_action) : action_(action) {}

  [[nodiscard]] static LockOrderChecker& process_wide() {
    static LockOrderChecker instance;
    return instance;
  }

  void set_action(Action action) {
    std::lock_guard lk(mu_);
    action_ = action;
  }

  /// Before a blocking acquire of `name` by `lock` on this thread: records
  /// the edges and returns a description of the first cycle they close, if
  /// any. Aborts instead in abort mode.
  [[nodiscard]] std::optional<std::string> before_acquire(const void* lock, std::string_view name) {
    const std::string cls = default_lock_class(name);
    auto& held = thread_held();
    std::optional<std::string> violation;
    Action action;
    {
      std::lock_guard lk(mu_);
      action = action_;
      for (const auto& h : held) {
        if (h.lock == lock || h.cls == cls) continue;
        if (edges_[h.cls].count(cls)) continue;  // known order
        if (auto path = find_path(cls, h.cls)) {
          if (!violation && reported_.insert({h.cls, cls}).second) {
            std::string cycle = h.cls;
            for (const auto& c : *path) cycle += " -> " + c;
            violation = fmt::format(
                "lock order inversion: cycle {} (this thread holds '{}' and is acquiring '{}'; elsewhere the "
                "opposite order was used)",
                cycle, h.name, name);
          }
          continue;  // do not add the edge that closes the cycle
        }
        edges_[h.cls].insert(cls);
      }
    }
    if (violation && action == Action::abort) {
      std::fprintf(stderr, "dlock: %s\n", violation->c_str());
      std::abort();
    }
    return violation;
  }
  /// After a successful acquire on this thread.
  void acquired(const void* lock, std::string_view name) {
    thread_held().push_back(Held{lock, default_lock_class(name), std::string(name)});
  }
  /// After a release, on whatever thread.
  void released(const void* lock) noexcept {
    auto& held = thread_held();
    held.erase(std::remove_if(held.begin(), held.end(), [lock](const Held& h) { return h.lock == lock; }), held.end());
  }

  /// The recorded "held A while acquiring B" edges, for tests and debugging.
  [[nodiscard]] std::map<std::string, std::set<std::string>> edges() const {
    std::lock_guard lk(mu_);
    return edges_;
  }
  void clear() {
    std::lock_guard lk(mu_);
    edges_.clear();
    reported_.clear();
  }

 private:
  struct Held {
    const void* lock;
    std::string cls;
    std::string name;
  };
  static std::vector<Held>& thread_held() {
    thread_local std::vector<Held> held;
    return held;
  }

  // Requires mu_. A path from `from` to `to` (excluding `from`), if any.
  std::optional<std::vector<std::string>> find_path(const std::string& from, const std::string& to) const {
    std::map<std::string, std::string> parent;
    std::vector<std::string> stack{from};
    std::set<std::string> seen{from};
    while (!stack.empty()) {
      const std::string node = stack.back();
      stack.pop_back();
      auto it = edges_.find(node);
      if (it == edges_.end()) continue;
      for (const auto& next : it->second) {
        if (!seen.insert(next).second) continue;
        parent[next] = node;
        if (next == to) {
          std::vector<std::string> path{to};
          for (std::string at = to; at != from; at = parent[at]) path.push_back(parent[at]);
          std::reverse(path.begin(), path.end());
          return path;
        }
        stack.push_back(next);
      }
    }
    return std::nullopt;
  }

  mutable std::mutex mu_;
  Action action_;
  std::map<std::string, std::set<std::string>> edges_;
  std::set<std::pair<std::string, std::string>> reported_;
};

}  // namespace dlock
