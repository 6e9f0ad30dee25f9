// The conformance suite over PostgresBackend in session scope (pinned and
// shared sessions) and in transaction scope, and over FallbackBackend with a PostgreSQL primary.
#include "fallback_fixture.hpp"
#include "postgres_fixture.hpp"

namespace dlock::conformance {
using PostgresSessionFixture = PostgresFixture<PostgresOptions::Scope::session>;
INSTANTIATE_TYPED_TEST_SUITE_P(PostgresSession, Conformance, PostgresSessionFixture);
using PostgresSharedFixture = PostgresFixture<PostgresOptions::Scope::session, 2>;  // shared_sessions = 2
INSTANTIATE_TYPED_TEST_SUITE_P(PostgresShared, Conformance, PostgresSharedFixture);
INSTANTIATE_TYPED_TEST_SUITE_P(PostgresTransaction, Conformance, PostgresFixture<PostgresOptions::Scope::transaction>);
INSTANTIATE_TYPED_TEST_SUITE_P(FallbackPostgresMemory, Conformance, FallbackFixture<PostgresSessionFixture>);
}  // namespace dlock::conformance
