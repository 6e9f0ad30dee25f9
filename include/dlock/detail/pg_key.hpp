// Internal: how a lock name becomes a PostgreSQL advisory-lock key.
//
// Pure functions, no libpq, no I/O. The algorithm is part of dlock's wire
// contract (every process, version and language must compute the same key);
// docs/postgres-lock-ids.md specifies it and tests/unit/pg_key_test.cpp pins
// it with golden vectors. Do not change it.
//
//   key = (int64) SipHash-2-4(k, lock_namespace || 0x00 || name)
//   k   = the 16 ASCII bytes "dlockadvisorykey" (k0, k1 little-endian)
//
// Names of the form "pg_advisory:<int64>" are explicit keys instead: the
// decimal number is the key itself, with no hashing and no namespace, for
// interop with code that already calls pg_advisory_lock(bigint).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dlock::detail {

/// SipHash-2-4 (Aumasson and Bernstein, 2012) over a byte stream, 64-bit output.
class SipHash24 {
 public:
  constexpr SipHash24(std::uint64_t k0, std::uint64_t k1) noexcept
      : v0_(k0 ^ 0x736f6d6570736575ULL),
        v1_(k1 ^ 0x646f72616e646f6dULL),
        v2_(k0 ^ 0x6c7967656e657261ULL),
        v3_(k1 ^ 0x7465646279746573ULL) {}

  constexpr SipHash24& update(std::string_view bytes) noexcept {
    for (const char c : bytes) {
      word_ |= static_cast<std::uint64_t>(static_cast<unsigned char>(c)) << (8 * (len_ % 8));
      if (++len_ % 8 == 0) {
        compress(word_);
        word_ = 0;
      }
    }
    return *this;
  }

  [[nodiscard]] constexpr std::uint64_t finish() noexcept {
    const std::uint64_t b = word_ | (static_cast<std::uint64_t>(len_ & 0xff) << 56);
    compress(b);
    v2_ ^= 0xff;
    for (int i = 0; i < 4; ++i) round();
    return v0_ ^ v1_ ^ v2_ ^ v3_;
  }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int b) noexcept { return (x << b) | (x >> (64 - b)); }
  constexpr void round() noexcept {
    v0_ += v1_;
    v1_ = rotl(v1_, 13);
    v1_ ^= v0_;
    v0_ = rotl(v0_, 32);
    v2_ += v3_;
    v3_ = rotl(v3_, 16);
    v3_ ^= v2_;
    v0_ += v3_;
    v3_ = rotl(v3_, 21);
    v3_ ^= v0_;
    v2_ += v1_;
    v1_ = rotl(v1_, 17);
    v1_ ^= v2_;
    v2_ = rotl(v2_, 32);
  }
  constexpr void compress(std::uint64_t m) noexcept {
    v3_ ^= m;
    round();
    round();
    v0_ ^= m;
  }

  std::uint64_t v0_, v1_, v2_, v3_;
  std::uint64_t word_ = 0;  // the pending partial little-endian word
  std::uint64_t len_ = 0;   // bytes fed so far
};

/// The fixed SipHash key: ASCII "dlockadvisorykey" read as two little-endian words.
inline constexpr std::uint64_t pg_key_k0 = 0x7664616b636f6c64ULL;  // "dlockadv"
inline constexpr std::uint64_t pg_key_k1 = 0x79656b79726f7369ULL;  // "isorykey"

/// Separates lock_namespace from the name in the hashed bytes; a namespace must not contain it.
inline constexpr char pg_key_separator = '\0';

/// The prefix of names that are explicit numeric keys ("pg_advisory:-42").
inline constexpr std::string_view pg_explicit_key_prefix = "pg_advisory:";

/// The 64-bit advisory key of a hashed name: SipHash-2-4 of namespace, 0x00, name,
/// reinterpreted as a two's-complement int64 (PostgreSQL's bigint).
[[nodiscard]] constexpr std::int64_t pg_hash_key(std::string_view lock_namespace, std::string_view name) noexcept {
  SipHash24 h(pg_key_k0, pg_key_k1);
  h.update(lock_namespace).update(std::string_view(&pg_key_separator, 1)).update(name);
  return static_cast<std::int64_t>(h.finish());  // modular conversion (C++20)
}

/// If `name` is an explicit key name ("pg_advisory:" followed by a canonical
/// decimal int64: optional '-', no '+', no leading zeros, "-0" not allowed),
/// the key; nullopt if it does not start with the prefix. Sets `malformed` when
/// it starts with the prefix but the number is not canonical or out of range.
[[nodiscard]] constexpr std::optional<std::int64_t> pg_parse_explicit_key(std::string_view name,
                                                                          bool& malformed) noexcept {
  malformed = false;
  if (name.substr(0, pg_explicit_key_prefix.size()) != pg_explicit_key_prefix) return std::nullopt;
  std::string_view digits = name.substr(pg_explicit_key_prefix.size());
  const bool negative = !digits.empty() && digits.front() == '-';
  if (negative) digits.remove_prefix(1);
  const bool canonical = !digits.empty() && digits.size() <= 19 && (digits.front() != '0' || digits.size() == 1) &&
                         !(negative && digits == "0");
  std::uint64_t magnitude = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9') {
      malformed = true;
      return std::nullopt;
    }
    magnitude = magnitude * 10 + static_cast<std::uint64_t>(c - '0');
  }
  const std::uint64_t limit = negative ? (std::uint64_t{1} << 63) : (std::uint64_t{1} << 63) - 1;
  if (!canonical || magnitude > limit) {
    malformed = true;
    return std::nullopt;
  }
  return negative ? static_cast<std::int64_t>(~magnitude + 1) : static_cast<std::int64_t>(magnitude);
}

/// The explicit key name for `key`: "pg_advisory:" and its decimal value.
[[nodiscard]] inline std::string pg_explicit_key_name(std::int64_t key) {
  return std::string(pg_explicit_key_prefix) + std::to_string(key);
}

/// What a primitive's advisory lock is (pg_primitive_key's tag byte).
enum class PgPrimitive : char {
  rw = 'w',      ///< RwLock: readers take it shared, the writer exclusive
  permit = 'p',  ///< Semaphore: the base of its permit slots
  leader = 'l',  ///< Election
};

/// The key of a primitive's advisory lock: SipHash-2-4 of lock_namespace,
/// 0x00, the name, 0x00 and the tag byte. PostgresBackend takes it in the
/// two-int4 advisory key space (pg_advisory_lock(int4, int4): key1 = the high
/// 32 bits, key2 = the low 32 bits; pg_locks.objsubid = 2), which is disjoint
/// from the bigint key space of mutexes (objsubid = 1): a primitive's lock
/// never conflicts with a mutex's, whatever the keys; the tag keeps the
/// primitives of one name apart. Permit slot s of a semaphore is
/// (key1, key2 + s) with key2 + s wrapping in 32 bits (pg_permit_slot_key).
[[nodiscard]] constexpr std::int64_t pg_primitive_key(std::string_view lock_namespace, PgPrimitive tag,
                                                      std::string_view name) noexcept {
  SipHash24 h(pg_key_k0, pg_key_k1);
  const char t[2] = {pg_key_separator, static_cast<char>(tag)};
  h.update(lock_namespace).update(std::string_view(&pg_key_separator, 1)).update(name).update(std::string_view(t, 2));
  return static_cast<std::int64_t>(h.finish());
}

/// Permit slot `slot` of the semaphore whose base key is `base`: the high 32
/// bits of base, and its low 32 bits plus slot modulo 2^32 (as the SQL computes it).
[[nodiscard]] constexpr std::int64_t pg_permit_slot_key(std::int64_t base, std::uint32_t slot) noexcept {
  const auto u = static_cast<std::uint64_t>(base);
  const std::uint64_t low = (u + slot) & 0xffffffffULL;
  return static_cast<std::int64_t>((u & 0xffffffff00000000ULL) | low);
}

}  // namespace dlock::detail
