// The PostgreSQL advisory key of a lock name: SipHash-2-4 checked against the
// reference vectors, and dlock's keys pinned with golden vectors so that every
// process, version and language computes the same key. No server needed.
#include <dlock/detail/pg_key.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

namespace {

using dlock::detail::pg_explicit_key_name;
using dlock::detail::pg_hash_key;
using dlock::detail::pg_parse_explicit_key;
using dlock::detail::SipHash24;

// Aumasson & Bernstein's reference vectors: key 00..0f, message 00..(n-1).
TEST(SipHash24, ReferenceVectors) {
  std::uint64_t k0 = 0, k1 = 0;
  for (int i = 7; i >= 0; --i) {
    k0 = (k0 << 8) | static_cast<std::uint64_t>(i);
    k1 = (k1 << 8) | static_cast<std::uint64_t>(i + 8);
  }
  const auto hash = [&](int n) {
    std::string msg;
    for (int i = 0; i < n; ++i) msg.push_back(static_cast<char>(i));
    return SipHash24(k0, k1).update(msg).finish();
  };
  EXPECT_EQ(hash(0), 0x726fdb47dd0e0e31ULL);
  EXPECT_EQ(hash(1), 0x74f839c593dc67fdULL);
  EXPECT_EQ(hash(7), 0xab0200f58b01d137ULL);
  EXPECT_EQ(hash(8), 0x93f5f5799a932462ULL);
  EXPECT_EQ(hash(15), 0xa129ca6149be45e5ULL);
  EXPECT_EQ(hash(63), 0x958a324ceb064572ULL);
}

TEST(SipHash24, StreamingEqualsOneShot) {
  const std::string msg = "a message longer than one 8-byte word, fed in odd pieces";
  for (std::size_t cut = 0; cut <= msg.size(); ++cut) {
    SipHash24 a(1, 2), b(1, 2);
    a.update(msg);
    b.update(std::string_view(msg).substr(0, cut)).update(std::string_view(msg).substr(cut));
    EXPECT_EQ(a.finish(), b.finish()) << "cut at " << cut;
  }
}

// Golden vectors: computed by the independent Python implementation in
// docs/postgres-lock-ids.md. Changing any of these breaks every deployment
// that mixes dlock versions or languages.
TEST(PgAdvisoryKey, GoldenVectors) {
  EXPECT_EQ(pg_hash_key("", "orders:42"), 397916365248039175LL);
  EXPECT_EQ(pg_hash_key("billing", "orders:42"), 6356323626887764178LL);
  EXPECT_EQ(pg_hash_key("", "a"), -365423403647183899LL);
  EXPECT_EQ(pg_hash_key("app", std::string(100, 'x')), -5603571719541940899LL);
  EXPECT_EQ(pg_hash_key("ns",
                        "caf\xc3\xa9 \xc3\xbc"
                        "ber"),
            9021964816962707359LL);  // UTF-8 bytes
  EXPECT_EQ(pg_hash_key("", ""), 4172390027588428867LL);
  // The separator keeps ("orders", "42") and ("orders:", "42") apart.
  EXPECT_EQ(pg_hash_key("orders", "42"), -4429847607427714793LL);
  EXPECT_EQ(pg_hash_key("orders:", "42"), -1633259823098521366LL);
}

TEST(PgAdvisoryKey, IsAConstantExpression) {
  static_assert(pg_hash_key("", "orders:42") == 397916365248039175LL);
  SUCCEED();
}

TEST(PgAdvisoryKey, NamespaceAndSeparatorMatter) {
  EXPECT_NE(pg_hash_key("a", "bc"), pg_hash_key("ab", "c"));
  EXPECT_NE(pg_hash_key("", "x"), pg_hash_key("x", ""));
  EXPECT_NE(pg_hash_key("prod", "job"), pg_hash_key("staging", "job"));
}

TEST(PgExplicitKey, ParsesCanonicalDecimals) {
  bool bad = true;
  EXPECT_EQ(pg_parse_explicit_key("pg_advisory:0", bad), 0);
  EXPECT_FALSE(bad);
  EXPECT_EQ(pg_parse_explicit_key("pg_advisory:12345", bad), 12345);
  EXPECT_EQ(pg_parse_explicit_key("pg_advisory:-7", bad), -7);
  EXPECT_EQ(pg_parse_explicit_key("pg_advisory:9223372036854775807", bad), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(pg_parse_explicit_key("pg_advisory:-9223372036854775808", bad), std::numeric_limits<std::int64_t>::min());
  EXPECT_FALSE(bad);
}

TEST(PgExplicitKey, RejectsNonCanonical) {
  for (const char* name : {"pg_advisory:", "pg_advisory:-", "pg_advisory:+1", "pg_advisory:01", "pg_advisory:-0",
                           "pg_advisory:1x", "pg_advisory: 1", "pg_advisory:9223372036854775808",
                           "pg_advisory:-9223372036854775809", "pg_advisory:99999999999999999999"}) {
    bool bad = false;
    EXPECT_FALSE(pg_parse_explicit_key(name, bad).has_value()) << name;
    EXPECT_TRUE(bad) << name;
  }
}

TEST(PgExplicitKey, OtherNamesAreHashed) {
  for (const char* name : {"orders:42", "pg_advisory", "PG_ADVISORY:1", "x:pg_advisory:1", "12345"}) {
    bool bad = true;
    EXPECT_FALSE(pg_parse_explicit_key(name, bad).has_value()) << name;
    EXPECT_FALSE(bad) << name;
  }
}

TEST(PgExplicitKey, NameRoundTrips) {
  for (const std::int64_t k : {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1}, std::int64_t{424242},
                               std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()}) {
    bool bad = true;
    EXPECT_EQ(pg_parse_explicit_key(pg_explicit_key_name(k), bad), k);
    EXPECT_FALSE(bad);
  }
  EXPECT_EQ(pg_explicit_key_name(-42), "pg_advisory:-42");
}

}  // namespace
