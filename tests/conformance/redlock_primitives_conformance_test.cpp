// The conformance suite over the primitives' exclusive views of
// RedlockBackend on five redis-servers (an RwLock's writer, an Election):
// each must behave exactly like the Redlock mutex.
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/primitives_backend.hpp>

#include <string>
#include <string_view>
#include <type_traits>

#include "primitives_fixture.hpp"
#include "redis_fixtures.hpp"

namespace dlock::conformance {

template <class Ops, const char* What>
class RedlockPrimitiveFixture {
 public:
  using Backend = detail::BackendView<RedlockBackend, Ops>;
  static constexpr Traits traits = RedlockFixture<5>::traits;

  static void start_servers() { RedlockFixture<5>::start_servers(); }
  static void stop_servers() { RedlockFixture<5>::stop_servers(); }
  void set_up(const std::string& id) {
    redlock_.set_up(id);
    prefix_ = RedisServers<5>::options(0, "dlock-conformance:" + id + ":").key_prefix;
  }
  void tear_down() { redlock_.tear_down(); }

  Backend make() { return view(redlock_.make()); }
  Backend make_faulty() { return view(redlock_.make_faulty()); }
  void cut() { redlock_.cut(); }
  void silence() { redlock_.silence(); }
  void heal() { redlock_.heal(); }

  /// DEL of the primitive's lease key on every node, as an operator would.
  void force_delete(std::string_view name) {
    const auto k = detail::redis_primitive_keys(prefix_, name);
    const std::string& key = std::is_same_v<Ops, detail::LeaderOps> ? k.leader : k.rw_writer;
    for (std::size_t i = 0; i < 5; ++i)
      (void)RedisBackend(RedisServers<5>::options(i, prefix_)).node().command({"DEL", key});
  }

 private:
  static Backend view(RedlockBackend b) { return primitive_view<Ops, What>(b); }
  RedlockFixture<5> redlock_;
  std::string prefix_;
};

using RedlockRwWriter = RedlockPrimitiveFixture<detail::ExclusiveOps, writer>;
using RedlockLeader = RedlockPrimitiveFixture<detail::LeaderOps, leader>;

INSTANTIATE_TYPED_TEST_SUITE_P(RedlockRwWriter, Conformance, RedlockRwWriter);
INSTANTIATE_TYPED_TEST_SUITE_P(RedlockLeader, Conformance, RedlockLeader);

}  // namespace dlock::conformance
