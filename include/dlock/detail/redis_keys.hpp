// Internal: how lock names map to Redis keys and channels (pure, no I/O).
//
// Lock N with prefix P uses, all with the hash tag {N} so that Redis Cluster
// puts them in one slot:
//   P{N}           the lock: a string holding the owner id, with a TTL
//   P{N}:fence     the fencing counter
//   P{N}:released  the pub/sub channel a release publishes on
#pragma once

#include <cstddef>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "../backend.hpp"
#include "../error.hpp"

namespace dlock::detail {

struct RedisKeys {
  std::string lock;
  std::string fence;
  std::string channel;
};

/// Throws InvalidArgument for a name whose keys would not share a hash tag:
/// one starting with '}' (Redis would then hash the whole key, and the lock,
/// fence and channel could land in different cluster slots).
inline void validate_redis_lock_name(std::string_view name) {
  if (!name.empty() && name.front() == '}')
    throw InvalidArgument(
        fmt::format("dlock: lock name for the Redis backend must not start with '}}' (got \"{}\"): it would break the "
                    "{{name}} hash tag that keeps a lock's keys in one cluster slot",
                    name));
}

[[nodiscard]] inline RedisKeys redis_keys(std::string_view prefix, std::string_view name) {
  std::string lock;
  lock.reserve(prefix.size() + name.size() + 2);
  lock.append(prefix).append(1, '{').append(name).append(1, '}');
  return RedisKeys{lock, lock + ":fence", lock + ":released"};
}

/// The part of `key` Redis Cluster hashes: the text between the first '{' and
/// the next '}' when that is non-empty, else the whole key.
[[nodiscard]] inline std::string_view redis_hash_tag(std::string_view key) noexcept {
  const auto open = key.find('{');
  if (open == std::string_view::npos) return key;
  const auto close = key.find('}', open + 1);
  if (close == std::string_view::npos || close == open + 1) return key;
  return key.substr(open + 1, close - open - 1);
}

/// The Redis backends' extend_many preamble: clears every item's outputs and
/// checks its name and owner. Returns the positions of the items to send; the
/// others carry their error.
inline std::vector<std::size_t> checked_extend_items(std::span<ExtendItem> items) {
  std::vector<std::size_t> ok;
  ok.reserve(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    ExtendItem& it = items[i];
    it.valid_until.reset();
    it.error = nullptr;
    try {
      validate_redis_lock_name(it.name);
      if (it.owner == nullptr) throw InvalidArgument("dlock: extend_many item without an owner");
      ok.push_back(i);
    } catch (...) {
      it.error = std::current_exception();
    }
  }
  return ok;
}

}  // namespace dlock::detail
