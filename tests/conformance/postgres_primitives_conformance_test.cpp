// The conformance suite over the primitives' exclusive views of PostgresBackend
// (an RwLock's writer, a one-permit Semaphore, an Election), in session and
// transaction scope: each must behave exactly like a mutex, as on the
// in-process backend (primitives_conformance_test.cpp).
#include <dlock/postgres.hpp>
#include <dlock/primitives_backend.hpp>

#include <string>
#include <string_view>
#include <type_traits>

#include "primitives_fixture.hpp"
#include "postgres_fixture.hpp"

namespace dlock::conformance {

template <class Ops, const char* What, detail::PgPrimitive Tag, PostgresOptions::Scope S>
class PostgresPrimitiveFixture {
 public:
  using Backend = detail::BackendView<PostgresBackend, Ops>;
  static constexpr Traits traits = PostgresFixture<S>::traits;

  static void start_servers() { PostgresFixture<S>::start_servers(); }
  static void stop_servers() { PostgresFixture<S>::stop_servers(); }
  void set_up(const std::string& id) { pg_.set_up(id); }
  void tear_down() { pg_.tear_down(); }

  Backend make() { return view(pg_.make()); }
  Backend make_faulty() { return view(pg_.make_faulty()); }
  void cut() { pg_.cut(); }
  void silence() { pg_.silence(); }
  void heal() { pg_.heal(); }

  /// A primitive's key lives in the two-int4 space (objsubid 2); a one-permit
  /// semaphore's only slot is its base key.
  void force_delete(std::string_view name) { pg_.terminate_holders(key(name), 2); }
  bool has_waiter(std::string_view name) { return pg_.has_waiter_key(key(name), 2); }

 private:
  static Backend view(PostgresBackend b) { return primitive_view<Ops, What>(b); }
  std::string key(std::string_view name) { return std::to_string(pg_.make().primitive_key(name, Tag)); }

  PostgresFixture<S> pg_;
};

template <PostgresOptions::Scope S>
using RwWriter = PostgresPrimitiveFixture<detail::ExclusiveOps, writer, detail::PgPrimitive::rw, S>;
template <PostgresOptions::Scope S>
using OnePermit = PostgresPrimitiveFixture<detail::PermitOps, permit, detail::PgPrimitive::permit, S>;
template <PostgresOptions::Scope S>
using Leader = PostgresPrimitiveFixture<detail::LeaderOps, leader, detail::PgPrimitive::leader, S>;

INSTANTIATE_TYPED_TEST_SUITE_P(PgRwWriter, Conformance, RwWriter<PostgresOptions::Scope::session>);
INSTANTIATE_TYPED_TEST_SUITE_P(PgOnePermit, Conformance, OnePermit<PostgresOptions::Scope::session>);
INSTANTIATE_TYPED_TEST_SUITE_P(PgLeader, Conformance, Leader<PostgresOptions::Scope::session>);
INSTANTIATE_TYPED_TEST_SUITE_P(PgRwWriterXact, Conformance, RwWriter<PostgresOptions::Scope::transaction>);
INSTANTIATE_TYPED_TEST_SUITE_P(PgOnePermitXact, Conformance, OnePermit<PostgresOptions::Scope::transaction>);
INSTANTIATE_TYPED_TEST_SUITE_P(PgLeaderXact, Conformance, Leader<PostgresOptions::Scope::transaction>);

}  // namespace dlock::conformance
