// Test helper: whether a message shows a secret, or any piece of it.
#pragma once

#include <cstddef>
#include <string>

namespace dlock::test {

/// The longest piece of `secret` of at least `n` characters that occurs in
/// `text`; empty if none does.
inline std::string leaked_part(const std::string& text, const std::string& secret, std::size_t n = 4) {
  for (std::size_t len = secret.size(); len >= n && len > 0; --len)
    for (std::size_t i = 0; i + len <= secret.size(); ++i)
      if (text.find(secret.substr(i, len)) != std::string::npos) return secret.substr(i, len);
  return {};
}

}  // namespace dlock::test
