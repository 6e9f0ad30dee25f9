// Shared by the fuzz targets: reading a fuzz input as a few fields, so that a
// target can build a structured input (a URI, a command line) around a marker
// password and check where the marker ends up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace dlock_fuzz {

/// The password the structured targets plant; they drop 0x7f from every
/// other field, so finding it anywhere else means the password leaked.
inline constexpr std::string_view marker = "\x7fPw\x7f";

inline bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

/// A libpq keyword/value value: quoted, with ' and \ escaped.
inline std::string pg_quoted(std::string_view v) {
  std::string out = "'";
  for (const char c : v) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

/// The input as a byte to choose a mode and then fields separated by NUL
/// bytes (so a seed file is written with printf 'field\0field').
class FuzzInput {
 public:
  FuzzInput(const std::uint8_t* data, std::size_t size) : rest_(reinterpret_cast<const char*>(data), size) {}

  /// The next byte (0 once the input is used up).
  std::uint8_t byte() {
    if (rest_.empty()) return 0;
    const auto b = static_cast<std::uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return b;
  }
  /// The bytes up to the next NUL (or the end), without it.
  std::string_view field() {
    const auto nul = rest_.find('\0');
    const std::string_view f = rest_.substr(0, nul);
    rest_ = nul == std::string_view::npos ? std::string_view{} : rest_.substr(nul + 1);
    return f;
  }
  [[nodiscard]] std::string_view rest() const noexcept { return rest_; }

 private:
  std::string_view rest_;
};

/// Two fields with the marker between them (a password that holds the marker
/// somewhere). The fields are read in order: the operands of a + are not.
inline std::string marked(FuzzInput& in) {
  std::string s(in.field());
  s += marker;
  s += in.field();
  return s;
}

/// `s` without any of the bytes in `drop`.
inline std::string without(std::string_view s, std::string_view drop) {
  std::string out;
  for (const char c : s)
    if (drop.find(c) == std::string_view::npos) out += c;
  return out;
}

/// Every byte percent-encoded ("%41%42"), or only those in `special`.
inline std::string percent_encode(std::string_view s, std::string_view special = {}) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (!special.empty() && special.find(c) == std::string_view::npos && c != '%') {
      out += c;
      continue;
    }
    out += '%';
    out += hex[u >> 4];
    out += hex[u & 15];
  }
  return out;
}

/// A failed property: says which, with the offending text, and aborts (the
/// fuzzer keeps the input).
[[noreturn]] inline void fail(std::string_view property, std::string_view text = {}) {
  std::fprintf(stderr, "fuzz property failed: %.*s\n  text: %.*s\n", static_cast<int>(property.size()), property.data(),
               static_cast<int>(text.size()), text.data());
  std::abort();
}

inline void require(bool ok, std::string_view property, std::string_view text = {}) {
  if (!ok) fail(property, text);
}

}  // namespace dlock_fuzz
