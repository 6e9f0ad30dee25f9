// A worker process for the Redlock cross-process test (redlock_process_test):
//   redlock_worker PORTS KEY_PREFIX LOCK_NAME CYCLES
// PORTS is a comma-separated list of redis-server ports on 127.0.0.1. Each
// cycle takes the lock and releases it at once (a handoff).
// Exit status 0 on success; a message on stderr if not.
#include <dlock/dlock.hpp>
#include <dlock/redlock.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc != 5) {
    std::fprintf(stderr, "usage: redlock_worker PORTS KEY_PREFIX LOCK_NAME CYCLES\n");
    return 2;
  }
  try {
    dlock::RedlockOptions o{.key_prefix = argv[2]};
    std::stringstream ports(argv[1]);
    for (std::string p; std::getline(ports, p, ',');) o.nodes.push_back({.host = "127.0.0.1", .port = std::stoi(p)});
    dlock::RedlockBackend rl(o);
    dlock::Lock<dlock::RedlockBackend> lock(rl, argv[3],
                                            {.ttl = 10s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}});
    const int cycles = std::atoi(argv[4]);
    for (int i = 0; i < cycles; ++i) std::scoped_lock hold(lock);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redlock_worker: %s\n", e.what());
    return 1;
  }
}
