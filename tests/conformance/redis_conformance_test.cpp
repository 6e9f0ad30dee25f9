// The conformance suite over RedisBackend (plain and over TLS), and over FallbackBackend with a Redis primary.
#include "fallback_fixture.hpp"
#include "redis_fixtures.hpp"

namespace dlock::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(Redis, Conformance, RedisFixture);
INSTANTIATE_TYPED_TEST_SUITE_P(RedisTls, Conformance, RedisTlsFixture);
INSTANTIATE_TYPED_TEST_SUITE_P(FallbackRedisMemory, Conformance, FallbackFixture<RedisFixture>);
}  // namespace dlock::conformance
