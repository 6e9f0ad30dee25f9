// The conformance suite over MemoryBackend.
#include "memory_fixture.hpp"

namespace dlock::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(Memory, Conformance, MemoryFixture);
}  // namespace dlock::conformance
