// Uses the installed dlock package: one lock, one acquisition, one token.
#include <dlock/dlock.hpp>

#include <chrono>
#include <cstdio>
#include <mutex>

int main() {
  using namespace std::chrono_literals;
  dlock::MemoryBackend mem;
  dlock::Lock<dlock::MemoryBackend> lock(mem, "consumer:check", dlock::LockOptions{.ttl = 5s});
  std::uint64_t token = 0;
  {
    std::scoped_lock hold(lock);
    token = lock.fencing_token();
  }
  if (token == 0 || lock.owns_lock()) return 1;
  std::printf("consumer: dlock %d.%d.%d works, token %llu\n", dlock::version_major, dlock::version_minor,
              dlock::version_patch, static_cast<unsigned long long>(token));
  return 0;
}
