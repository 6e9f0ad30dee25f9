// The conformance suite over the primitives' exclusive views of RedisBackend
// (an RwLock's writer, a one-permit Semaphore, an Election): each must behave
// exactly like a mutex, as on the in-process backend and PostgreSQL.
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/primitives_backend.hpp>

#include <string>
#include <string_view>
#include <type_traits>

#include "primitives_fixture.hpp"
#include "redis_fixtures.hpp"

namespace dlock::conformance {

template <class Ops, const char* What>
class RedisPrimitiveFixture {
 public:
  using Backend = detail::BackendView<RedisBackend, Ops>;
  static constexpr Traits traits = RedisFixture::traits;

  static void start_servers() { RedisFixture::start_servers(); }
  static void stop_servers() { RedisFixture::stop_servers(); }
  void set_up(const std::string& id) {
    redis_.set_up(id);
    prefix_ = RedisServers<1>::options(0, "dlock-conformance:" + id + ":").key_prefix;
  }
  void tear_down() { redis_.tear_down(); }

  Backend make() { return view(redis_.make()); }
  Backend make_faulty() { return view(redis_.make_faulty()); }
  void cut() { redis_.cut(); }
  void silence() { redis_.silence(); }
  void heal() { redis_.heal(); }

  /// DEL of the primitive's lease key, as an operator would.
  void force_delete(std::string_view name) {
    const auto k = detail::redis_primitive_keys(prefix_, name);
    const std::string& key = std::is_same_v<Ops, detail::PermitOps>   ? k.sem_permits
                             : std::is_same_v<Ops, detail::LeaderOps> ? k.leader
                                                                      : k.rw_writer;
    (void)redis_.make().node().command({"DEL", key});
  }

 private:
  static Backend view(RedisBackend b) { return primitive_view<Ops, What>(b); }
  RedisFixture redis_;
  std::string prefix_;
};

using RedisRwWriter = RedisPrimitiveFixture<detail::ExclusiveOps, writer>;
using RedisOnePermit = RedisPrimitiveFixture<detail::PermitOps, permit>;
using RedisLeader = RedisPrimitiveFixture<detail::LeaderOps, leader>;

INSTANTIATE_TYPED_TEST_SUITE_P(RedisRwWriter, Conformance, RedisRwWriter);
INSTANTIATE_TYPED_TEST_SUITE_P(RedisOnePermit, Conformance, RedisOnePermit);
INSTANTIATE_TYPED_TEST_SUITE_P(RedisLeader, Conformance, RedisLeader);

}  // namespace dlock::conformance
