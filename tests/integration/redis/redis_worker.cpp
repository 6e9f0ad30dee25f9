// A worker process for the cross-process tests (spawned by redis_process_test):
//   redis_worker URI KEY_PREFIX LOCK_NAME CYCLES [TLS_CA_FILE]
// Each cycle takes the lock, increments <prefix>counter with a non-atomic
// GET then SET, and RPUSHes its fencing token to <prefix>tokens, all inside
// the critical section. Exit status 0 on success; a message on stderr if not.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: redis_worker URI KEY_PREFIX LOCK_NAME CYCLES [TLS_CA_FILE]\n");
    return 2;
  }
  try {
    const std::string prefix = argv[2];
    dlock::RedisOptions base{.key_prefix = prefix};
    if (argc == 6) base.tls = dlock::TlsOptions{.ca_file = argv[5]};  // with a rediss:// URI
    dlock::RedisBackend redis(argv[1], base);
    dlock::Lock<dlock::RedisBackend> lock(redis, argv[3],
                                          {.ttl = 10s, .retry = {.initial_delay = 2ms, .max_delay = 100ms}});
    const std::string counter = prefix + "counter", tokens = prefix + "tokens";
    const int cycles = std::atoi(argv[4]);
    for (int i = 0; i < cycles; ++i) {
      std::scoped_lock hold(lock);
      const auto v = redis.node().command({"GET", counter});
      const long long n = v.type == dlock::detail::RedisValue::Type::string ? std::stoll(v.str) : 0;
      const std::string token = std::to_string(lock.fencing_token());
      (void)redis.node().command({"SET", counter, std::to_string(n + 1)});
      (void)redis.node().command({"RPUSH", tokens, token});
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_worker: %s\n", e.what());
    return 1;
  }
}
