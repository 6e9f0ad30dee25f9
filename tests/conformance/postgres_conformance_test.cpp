// The conformance suite over PostgresBackend, in session and in transaction scope.
#include "postgres_fixture.hpp"

namespace dlock::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(PostgresSession, Conformance, PostgresFixture<PostgresOptions::Scope::session>);
INSTANTIATE_TYPED_TEST_SUITE_P(PostgresTransaction, Conformance, PostgresFixture<PostgresOptions::Scope::transaction>);
}  // namespace dlock::conformance
