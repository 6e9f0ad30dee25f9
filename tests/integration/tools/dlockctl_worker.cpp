// A worker process for the dlockctl deadlock test:
//   dlockctl_worker URI KEY_PREFIX HOLD WAIT
// Takes lock HOLD (ttl 60 s) and prints "held <owner id>"; then reads one
// line from stdin, prints "waiting" and blocks acquiring WAIT (up to 60 s),
// publishing its wait record meanwhile; prints "acquired" if it gets it.
// The test kills it. Exit 1 with a message on stderr on errors.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc != 5) {
    std::fprintf(stderr, "usage: dlockctl_worker URI KEY_PREFIX HOLD WAIT\n");
    return 2;
  }
  try {
    dlock::RedisBackend redis(argv[1], dlock::RedisOptions{.key_prefix = argv[2]});
    dlock::Lock<dlock::RedisBackend> hold(redis, argv[3], {.ttl = 60s});
    dlock::Lock<dlock::RedisBackend> wait(
        redis, argv[4], {.ttl = 60s, .retry = {.initial_delay = 50ms, .max_delay = 500ms}, .acquire_timeout = 60s});
    hold.lock();
    std::cout << "held " << hold.owner_id() << std::endl;
    std::string line;
    std::getline(std::cin, line);
    std::cout << "waiting" << std::endl;
    wait.lock();
    std::cout << "acquired" << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dlockctl_worker: %s\n", e.what());
    return 1;
  }
}
