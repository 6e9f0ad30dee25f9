// Uses the dlock package the way an application does, one call into each
// target it links, with no server: the core (dlock::dlock: a lock, an
// acquisition, a token on MemoryBackend) and, when the package has them,
// dlock::redis (URI parsing), dlock::redlock (quorum of a 3-node set) and
// dlock::postgres (conninfo parsing and the advisory key of a name), dlock::etcd
// (endpoints, with a TLS context for the https one). The
// backends only validate their options: none of these calls connects.
#include <dlock/dlock.hpp>
#ifdef DLOCK_CONSUMER_REDIS
#include <dlock/redis.hpp>
#include <dlock/redlock.hpp>
#endif
#ifdef DLOCK_CONSUMER_POSTGRES
#include <dlock/postgres.hpp>
#endif
#ifdef DLOCK_CONSUMER_ETCD
#include <dlock/etcd.hpp>
#endif

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string_view>

namespace {

int fail(const char* what) {
  std::fprintf(stderr, "consumer: %s\n", what);
  return 1;
}

}  // namespace

int main() {
  using namespace std::chrono_literals;
  dlock::MemoryBackend mem;
  dlock::Lock<dlock::MemoryBackend> lock(mem, "consumer:check", dlock::LockOptions{.ttl = 5s});
  std::uint64_t token = 0;
  {
    std::scoped_lock hold(lock);
    token = lock.fencing_token();
  }
  if (token == 0 || lock.owns_lock()) return fail("MemoryBackend lock did not work");

#ifdef DLOCK_CONSUMER_REDIS
  const dlock::RedisBackend redis("redis://127.0.0.1:6390/2");
  if (redis.endpoint() != "127.0.0.1:6390" || redis.options().database != 2)
    return fail("RedisBackend did not parse its URI");
  const dlock::RedlockBackend redlock(dlock::RedlockOptions{
      .nodes = {{.port = 7001}, {.port = 7002}, {.port = 7003}},
  });
  if (redlock.node_count() != 3 || redlock.quorum() != 2) return fail("RedlockBackend has the wrong quorum");
#endif
#ifdef DLOCK_CONSUMER_POSTGRES
  const dlock::PostgresBackend pg({.conninfo = "host=127.0.0.1 port=5439 dbname=app"});
  if (pg.endpoint().find("5439") == std::string_view::npos) return fail("PostgresBackend did not parse its conninfo");
  if (pg.advisory_key("pg_advisory:42") != 42) return fail("PostgresBackend has the wrong advisory key");
#endif
#ifdef DLOCK_CONSUMER_ETCD
  const dlock::EtcdBackend etcd(dlock::EtcdOptions{.endpoints = {"http://127.0.0.1:2391", "https://127.0.0.1:2392"}});
  if (etcd.endpoint() != "http://127.0.0.1:2391,https://127.0.0.1:2392" || etcd.key("a") != "dlock/a")
    return fail("EtcdBackend did not take its endpoints");
#endif

  std::printf("consumer: dlock %d.%d.%d works, token %llu\n", dlock::version_major, dlock::version_minor,
              dlock::version_patch, static_cast<unsigned long long>(token));
  return 0;
}
