// The conformance suite over RedlockBackend on five redis-servers.
#include "redis_fixtures.hpp"

namespace dlock::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(Redlock5, Conformance, RedlockFixture<5>);
}  // namespace dlock::conformance
