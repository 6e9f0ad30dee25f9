// dlockctl: what dlockctl reads and deletes on a Redis server, with plain
// commands through RedisClient::command() (no dependency on the Redlock backend):
// SCAN for lock keys and wait records, one EVAL per batch of locks for owner,
// PTTL and fencing counter, an atomic force release.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <dlock/detail/redis_client.hpp>
#include <dlock/detail/redis_waits.hpp>

namespace dlockctl {

/// `s` with Redis glob metacharacters (* ? [ ] \) escaped for SCAN MATCH.
[[nodiscard]] std::string glob_escape(std::string_view s);

/// The lock name of a key `<prefix>{name}`, or nullopt for any other key
/// (`:fence` counters, wait records, foreign keys).
[[nodiscard]] std::optional<std::string> lock_name_of_key(std::string_view prefix, std::string_view key);

/// Every key matching `pattern`: SCAN with COUNT, cursor loop, de-duplicated, sorted.
[[nodiscard]] std::vector<std::string> scan_keys(dlock::detail::RedisClient& node, const std::string& pattern);

/// Names of all locks under `prefix`, sorted.
[[nodiscard]] std::vector<std::string> scan_lock_names(dlock::detail::RedisClient& node, std::string_view prefix);

struct LockState {
  std::string name;
  std::optional<std::string> owner;  ///< nullopt: not held (e.g. expired since the SCAN)
  long long pttl_ms = -2;            ///< -1: no TTL
  std::optional<std::string> token;  ///< the fencing counter, if present
  std::string wrong_type;            ///< the key holds this type instead of a string
};

/// Owner, PTTL and fencing counter of each lock, one EVAL round trip per
/// batch of up to 500 names. Result in the order of `names`.
[[nodiscard]] std::vector<LockState> lock_states(dlock::detail::RedisClient& node, std::string_view prefix,
                                                 std::span<const std::string> names);

struct WaitRecords {
  std::vector<dlock::detail::WaitInfo> records;
  std::size_t malformed = 0;  ///< keys under `<prefix>waiting:` that did not decode
};
/// Every wait record under `prefix` (SCAN, then MGET in batches).
[[nodiscard]] WaitRecords wait_records(dlock::detail::RedisClient& node, std::string_view prefix);

struct Removed {
  std::string owner;
  long long pttl_ms = -2;
};
/// Atomically: if `<prefix>{name}` holds a string, reads its owner and PTTL,
/// deletes it and publishes the owner on the release channel (waking
/// waiters). nullopt if it was not held. If `owner` is given, only when it
/// is that owner (an owner-checked release).
[[nodiscard]] std::optional<Removed> force_release(dlock::detail::RedisClient& node, std::string_view prefix,
                                                   std::string_view name,
                                                   std::optional<std::string_view> owner = std::nullopt);

}  // namespace dlockctl
