// The conformance suite over the primitives' exclusive views of the in-process
// backend: an RwLock's writer, a one-permit Semaphore and an Election must each
// behave exactly like a mutex (primitives_backend.hpp, docs/primitives.md).
#include <dlock/memory_primitives.hpp>
#include <dlock/primitives_backend.hpp>

#include <string>
#include <string_view>

#include "conformance.hpp"
#include "primitives_fixture.hpp"

namespace dlock::conformance {

template <class Ops, const char* What>
class MemoryPrimitiveFixture {
 public:
  using Backend = detail::BackendView<MemoryPrimitives, Ops>;
  static constexpr Traits traits{.no_processes = "MemoryPrimitives leases live inside one process",
                                 .no_outage = "MemoryPrimitives has no server that could become unreachable",
                                 .threads = 8,
                                 .cycles = 300};

  static void start_servers() {}
  static void stop_servers() {}
  void set_up(const std::string&) {}
  void tear_down() {}

  /// A view of the test's table (copies share it).
  Backend make() { return primitive_view<Ops, What>(table_); }
  void force_delete(std::string_view name) { (void)table_.force_release(name); }

 private:
  MemoryPrimitives table_;
};

using RwWriter = MemoryPrimitiveFixture<detail::ExclusiveOps, writer>;
using OnePermit = MemoryPrimitiveFixture<detail::PermitOps, permit>;
using Leader = MemoryPrimitiveFixture<detail::LeaderOps, leader>;

INSTANTIATE_TYPED_TEST_SUITE_P(RwWriter, Conformance, RwWriter);
INSTANTIATE_TYPED_TEST_SUITE_P(OnePermit, Conformance, OnePermit);
INSTANTIATE_TYPED_TEST_SUITE_P(Leader, Conformance, Leader);

}  // namespace dlock::conformance
