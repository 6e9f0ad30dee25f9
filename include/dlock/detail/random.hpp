// Internal: the per-thread random generator behind owner ids and retry jitter.
#pragma once

#include <array>
#include <cstdint>
#include <random>

#include <sys/types.h>
#include <unistd.h>

namespace dlock::detail {

/// A 64-bit generator per thread, seeded from std::random_device (the OS
/// entropy source) with enough words to fill its state, and with the process
/// id mixed in, so no two threads share a sequence. fork() copies the calling
/// thread's generator into the child; the generator remembers the process it
/// was seeded in and re-seeds when it finds itself in another one, so a parent
/// and its child never draw the same owner ids. Never use it across threads.
[[nodiscard]] inline std::mt19937_64& thread_rng() {
  struct Seeded {
    pid_t pid = 0;  // no process has id 0: the first call seeds
    std::mt19937_64 rng;
  };
  thread_local Seeded seeded;
  const pid_t pid = ::getpid();
  if (seeded.pid != pid) {
    std::random_device device;
    std::array<std::uint32_t, 9> words{};
    for (auto& w : words) w = device();
    words.back() ^= static_cast<std::uint32_t>(pid);
    std::seed_seq seq(words.begin(), words.end());
    seeded.rng.seed(seq);
    seeded.pid = pid;
  }
  return seeded.rng;
}

}  // namespace dlock::detail
