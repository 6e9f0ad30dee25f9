// Internal: the per-thread random generator behind owner ids and retry jitter.
#pragma once

#include <array>
#include <cstdint>
#include <random>

namespace dlock::detail {

/// A 64-bit generator per thread, seeded from std::random_device (the OS
/// entropy source) with enough words to fill its state, so no two threads or
/// processes share a sequence. Never use it across threads.
[[nodiscard]] inline std::mt19937_64& thread_rng() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device device;
    std::array<std::uint32_t, 8> words{};
    for (auto& w : words) w = device();
    std::seed_seq seq(words.begin(), words.end());
    return std::mt19937_64(seq);
  }();
  return rng;
}

}  // namespace dlock::detail
