// Internal: which lock and which part of it a Redis key is (pure, no I/O),
// for the administration API (dlock/redis_admin.hpp). The key layouts
// themselves are redis_keys() and redis_primitive_keys(); this file derives
// everything from them and spells no key suffix of its own.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "redis_primitive_scripts.hpp"

namespace dlock::detail {

/// Every key of one name, in the order of key_roles below.
enum class RedisKeyRole : unsigned {
  lock,       ///< P{N}
  fence,      ///< P{N}:fence
  rw_writer,  ///< RedisPrimitiveKeys::rw_writer, and so on
  rw_readers,
  rw_waiting,
  sem_permits,
  sem_count,
  fair_queue,
  fair_deadlines,
  leader,
  leader_info,
  rw_tokens,   ///< RedisPrimitiveKeys::rw_tokens: reader owner id -> its lease's token
  sem_tokens,  ///< RedisPrimitiveKeys::sem_tokens: permit owner id -> its lease's token
};
inline constexpr std::size_t redis_key_role_count = 13;

/// The key of `role` for lock `name` under `prefix`.
[[nodiscard]] inline std::string redis_role_key(std::string_view prefix, std::string_view name, RedisKeyRole role) {
  if (role == RedisKeyRole::lock) return redis_keys(prefix, name).lock;
  const RedisPrimitiveKeys k = redis_primitive_keys(prefix, name);
  switch (role) {
    case RedisKeyRole::lock:
      break;
    case RedisKeyRole::fence:
      return k.fence;
    case RedisKeyRole::rw_writer:
      return k.rw_writer;
    case RedisKeyRole::rw_readers:
      return k.rw_readers;
    case RedisKeyRole::rw_waiting:
      return k.rw_waiting;
    case RedisKeyRole::sem_permits:
      return k.sem_permits;
    case RedisKeyRole::sem_count:
      return k.sem_count;
    case RedisKeyRole::fair_queue:
      return k.fair_queue;
    case RedisKeyRole::fair_deadlines:
      return k.fair_deadlines;
    case RedisKeyRole::leader:
      return k.leader;
    case RedisKeyRole::leader_info:
      return k.leader_info;
    case RedisKeyRole::rw_tokens:
      return k.rw_tokens;
    case RedisKeyRole::sem_tokens:
      return k.sem_tokens;
  }
  return redis_keys(prefix, name).lock;
}

struct RedisKeyOf {
  std::string name;
  RedisKeyRole role = RedisKeyRole::lock;
  friend bool operator==(const RedisKeyOf&, const RedisKeyOf&) = default;
};

/// Which name and role `key` is under `prefix`, or nullopt for any other key
/// (wait records, foreign keys). Every key of name N is P{N} followed by a
/// suffix that does not depend on N; a name may itself contain '}', so the
/// candidate names are tried from the longest: "P{a}:fence}" is the lock of
/// the name "a}:fence", "P{a}:fence" the fencing counter of "a".
[[nodiscard]] inline std::optional<RedisKeyOf> classify_redis_key(std::string_view prefix, std::string_view key) {
  if (key.size() < prefix.size() + 2 || key.substr(0, prefix.size()) != prefix || key[prefix.size()] != '{')
    return std::nullopt;
  // The suffix of each role, from the layout functions (for the empty name, P{} + suffix).
  std::array<std::string, redis_key_role_count> suffixes;
  const std::string base = redis_keys(prefix, "").lock;
  for (std::size_t r = 0; r < redis_key_role_count; ++r) {
    const std::string k = redis_role_key(prefix, "", static_cast<RedisKeyRole>(r));
    suffixes[r] = k.substr(0, base.size()) == base ? k.substr(base.size()) : std::string("\n?");
  }
  const std::size_t first = prefix.size() + 1;  // the name's first byte; names are not empty
  for (std::size_t close = key.rfind('}'); close != std::string_view::npos && close > first;
       close = close == 0 ? std::string_view::npos : key.rfind('}', close - 1)) {
    const std::string_view suffix = key.substr(close + 1);
    for (std::size_t r = 0; r < redis_key_role_count; ++r)
      if (suffix == suffixes[r])
        return RedisKeyOf{std::string(key.substr(first, close - first)), static_cast<RedisKeyRole>(r)};
  }
  return std::nullopt;
}

/// `s` with Redis glob metacharacters (* ? [ ] \) escaped for SCAN MATCH.
[[nodiscard]] inline std::string redis_glob_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace dlock::detail
