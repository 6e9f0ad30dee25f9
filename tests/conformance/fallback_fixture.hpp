// Conformance fixture of FallbackBackend<Primary, MemoryBackend> over any
// other fixture's backend: while the primary's service is healthy it must
// behave as the primary does; while it is unreachable, acquires degrade to the
// in-process table (reported as `degraded`) instead of failing closed.
#pragma once

#include <dlock/fallback.hpp>
#include <dlock/memory.hpp>

#include <string>
#include <string_view>

#include "conformance.hpp"

namespace dlock::conformance {

template <class Primary>
class FallbackFixture {
 public:
  using Backend = FallbackBackend<typename Primary::Backend, MemoryBackend>;
  static constexpr Traits traits = [] {
    Traits t = Primary::traits;
    t.outage_degrades = true;
    return t;
  }();

  static void start_servers() { Primary::start_servers(); }
  static void stop_servers() { Primary::stop_servers(); }
  void set_up(const std::string& id) { primary_.set_up(id); }
  void tear_down() { primary_.tear_down(); }

  Backend make() {
    auto primary = primary_.make();
    return Backend(primary, local_);
  }
  Backend make_faulty() {
    auto primary = primary_.make_faulty();
    return Backend(primary, local_);
  }
  void cut() { primary_.cut(); }
  void silence() { primary_.silence(); }
  void heal() { primary_.heal(); }
  void force_delete(std::string_view name) { primary_.force_delete(name); }

 private:
  Primary primary_;
  MemoryBackend local_;  ///< the fallback, shared by this test's clients
};

}  // namespace dlock::conformance
