// Internal: warnings written to stderr once per kind. The backends have no
// observer, so a condition that holds for a whole server (a maxmemory-policy
// that evicts, CONFIG refused, PUBLISH refused by the ACL) is written once,
// as "dlock: warning: <message>", and kept for accessors and tests. One
// instance per server (detail::ServerFacts) gives one line per server.
#pragma once

#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace dlock::detail {

/// Thread-safe.
class OnceWarnings {
 public:
  /// The first time for `kind`: writes "dlock: warning: <message>" to stderr.
  /// Every time: keeps `message` as the latest for `kind`. Never throws (out
  /// of memory, or stderr failed: a warning is all it was).
  void warn(std::string_view kind, std::string message) noexcept {
    try {
      bool first = true;
      {
        std::lock_guard lk(mu_);
        for (auto& w : kinds_) {
          if (w.first == kind) {
            w.second = message;
            first = false;
            break;
          }
        }
        if (first) kinds_.emplace_back(std::string(kind), message);
      }
      if (first) fmt::print(stderr, "dlock: warning: {}\n", message);
    } catch (...) {
    }
  }
  /// The latest message for `kind`; "" if none.
  [[nodiscard]] std::string latest(std::string_view kind) const {
    std::lock_guard lk(mu_);
    for (const auto& w : kinds_)
      if (w.first == kind) return w.second;
    return {};
  }
  /// The latest message of each kind warned about, in the order of their first warning.
  [[nodiscard]] std::vector<std::string> all() const {
    std::lock_guard lk(mu_);
    std::vector<std::string> out;
    out.reserve(kinds_.size());
    for (const auto& w : kinds_) out.push_back(w.second);
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> kinds_;  ///< kind, latest message
};

}  // namespace dlock::detail
