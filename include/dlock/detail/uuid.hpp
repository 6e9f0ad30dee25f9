// Internal: UUIDv7 layout (RFC 9562, section 5.7) as pure functions.
#pragma once

#include <array>
#include <cstdint>

namespace dlock::detail {

using UuidBytes = std::array<std::uint8_t, 16>;
using UuidText = std::array<char, 36>;

/// unix_ts_ms (48 bits, big-endian) | ver=7 (4) | rand_a (12) | var=0b10 (2) | rand_b (62).
/// rand_a is taken from the low 12 bits of `rand_hi`, rand_b from the low 62 bits of `rand_lo`.
[[nodiscard]] constexpr UuidBytes uuid_v7_bytes(std::uint64_t unix_ms, std::uint64_t rand_hi,
                                                std::uint64_t rand_lo) noexcept {
  UuidBytes b{};
  for (int i = 0; i < 6; ++i) b[i] = static_cast<std::uint8_t>(unix_ms >> (40 - 8 * i));
  b[6] = static_cast<std::uint8_t>(0x70 | ((rand_hi >> 8) & 0x0f));
  b[7] = static_cast<std::uint8_t>(rand_hi);
  b[8] = static_cast<std::uint8_t>(0x80 | ((rand_lo >> 56) & 0x3f));
  for (int i = 9; i < 16; ++i) b[i] = static_cast<std::uint8_t>(rand_lo >> (8 * (15 - i)));
  return b;
}

/// Canonical 8-4-4-4-12 lower-case text.
[[nodiscard]] constexpr UuidText format_uuid(const UuidBytes& b) noexcept {
  constexpr char hex[] = "0123456789abcdef";
  UuidText t{};
  std::size_t pos = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) t[pos++] = '-';
    t[pos++] = hex[b[i] >> 4];
    t[pos++] = hex[b[i] & 0x0f];
  }
  return t;
}

}  // namespace dlock::detail
