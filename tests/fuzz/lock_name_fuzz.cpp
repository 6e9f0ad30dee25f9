// libFuzzer target for lock names (issue 15 item 5): what every backend does
// with a name before any I/O. validate_lock_name accepts exactly the names of
// 1..max_lock_name_size bytes; a Redis name that validate_redis_lock_name
// accepts keeps its lock, fence and channel keys in one cluster hash slot;
// an explicit PostgreSQL key name parses exactly when it is canonical and
// prints back to itself; sanitize_utf8 gives valid UTF-8 and leaves valid
// UTF-8 alone. Input: two bytes give a length (0..2099, so both sides of the
// size limit are reached), the rest is repeated to that length.
#include <dlock/detail/pg_key.hpp>
#include <dlock/detail/redis_keys.hpp>
#include <dlock/detail/utf8.hpp>
#include <dlock/error.hpp>
#include <dlock/options.hpp>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_input.hpp"

namespace {

using dlock_fuzz::require;

void check_size_rule(std::string_view name) {
  bool accepted = true;
  try {
    dlock::detail::validate_lock_name(name);
  } catch (const dlock::InvalidArgument&) {
    accepted = false;
  }
  require(accepted == (!name.empty() && name.size() <= dlock::max_lock_name_size),
          "validate_lock_name accepts other than 1..max_lock_name_size bytes", name.substr(0, 64));
}

void check_redis(std::string_view name) {
  if (name.empty()) return;  // validate_lock_name refuses it first
  bool accepted = true;
  try {
    dlock::detail::validate_redis_lock_name(name);
  } catch (const dlock::InvalidArgument&) {
    accepted = false;
  }
  require(accepted == (name.front() != '}'), "validate_redis_lock_name refuses other than a leading '}'", name);
  if (!accepted) return;
  const auto keys = dlock::detail::redis_keys("dlock:", name);
  const std::string_view tag = dlock::detail::redis_hash_tag(keys.lock);
  require(tag == name.substr(0, name.find('}')), "the lock key's hash tag is not the name", keys.lock);
  require(dlock::detail::redis_hash_tag(keys.fence) == tag && dlock::detail::redis_hash_tag(keys.channel) == tag,
          "a lock's keys in different hash slots", keys.lock);
}

void check_pg(std::string_view name) {
  bool malformed = true;
  const auto key = dlock::detail::pg_parse_explicit_key(name, malformed);
  const std::string_view prefix = dlock::detail::pg_explicit_key_prefix;
  const bool explicit_form = name.substr(0, prefix.size()) == prefix;
  require(explicit_form == (key.has_value() || malformed), "explicit key form misread", name);
  require(!(key && malformed), "a key and malformed", name);
  if (key) require(dlock::detail::pg_explicit_key_name(*key) == name, "an explicit key that is not canonical", name);
  if (!explicit_form) return;
  // Canonical means: what to_string prints for some int64.
  const std::string_view digits = name.substr(prefix.size());
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  const bool canonical = ec == std::errc{} && end == digits.data() + digits.size() && std::to_string(v) == digits;
  require(canonical == key.has_value(), "a canonical explicit key refused", name);
}

void check_utf8(std::string_view name) {
  const std::string s = dlock::detail::sanitize_utf8(name);
  for (std::string_view rest = s; !rest.empty();) {
    const std::size_t n = dlock::detail::utf8_sequence_length(rest);
    require(n > 0, "sanitize_utf8 left invalid UTF-8", s);
    rest.remove_prefix(n);
  }
  bool valid = true;
  for (std::string_view rest = name; !rest.empty() && valid;) {
    const std::size_t n = dlock::detail::utf8_sequence_length(rest);
    valid = n > 0;
    rest.remove_prefix(n);
  }
  if (valid) require(s == name, "sanitize_utf8 changed valid UTF-8", name);
  require(dlock::detail::sanitize_utf8(s) == s, "sanitize_utf8 is not idempotent", s);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dlock_fuzz::FuzzInput in(data, size);
  const std::size_t high = in.byte();
  const std::size_t length = (high << 8 | in.byte()) % 2100;
  const std::string_view body = in.rest();
  std::string name;
  if (!body.empty())
    while (name.size() < length) name.append(body.substr(0, length - name.size()));
  check_size_rule(name);
  check_redis(body);
  check_pg(body);
  check_utf8(body);
  return 0;
}
