// Conformance fixture of MemoryBackend: one lock table per test, no server.
#pragma once

#include <dlock/memory.hpp>

#include <string>
#include <string_view>

#include "conformance.hpp"

namespace dlock::conformance {

class MemoryFixture {
 public:
  using Backend = MemoryBackend;
  static constexpr Traits traits{.no_processes = "MemoryBackend locks live inside one process",
                                 .no_outage = "MemoryBackend has no server that could become unreachable",
                                 .threads = 8,
                                 .cycles = 1000};

  static void start_servers() {}
  static void stop_servers() {}
  void set_up(const std::string&) {}
  void tear_down() {}

  /// A handle on the test's lock table (copies share it).
  Backend make() { return table_; }
  void force_delete(std::string_view name) { (void)table_.force_release(name); }

 private:
  MemoryBackend table_;
};

}  // namespace dlock::conformance
