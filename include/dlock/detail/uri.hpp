// Internal: the pieces of URI parsing that every connection-string parser
// shares (percent-decoding, bounded decimal numbers). Pure; they report a
// failure as nullopt so that each parser words its own message (and never
// quotes the URI).
#pragma once

#include <charconv>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace dlock::detail {

/// `s` with every %XX replaced by its byte; nullopt when a '%' is not
/// followed by two hex digits.
[[nodiscard]] inline std::optional<std::string> percent_decoded(std::string_view s) {
  const auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 2 < s.size() ? hex(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? hex(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

/// `s` as a decimal number in [min, max] (digits only, the whole of `s`); nullopt otherwise.
[[nodiscard]] inline std::optional<int> decimal_in(std::string_view s, int min, int max) noexcept {
  int v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || v < min || v > max) return std::nullopt;
  return v;
}

}  // namespace dlock::detail
