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

#ifdef DLOCK_PG_KEY_TEST_BACKEND
// ---- what a PostgresBackend shows of its conninfo: never any part of a password ----
// (Constructing a backend does not connect, so these need no server.)

#include <dlock/postgres.hpp>

#include <climits>
#include <vector>

#include "leak_check.hpp"

namespace {

using dlock::test::leaked_part;

// The endpoint, or the constructor's message if it rejects the conninfo.
std::string shown_for(const std::string& conninfo, bool& rejected) {
  rejected = false;
  try {
    const dlock::PostgresBackend pg(dlock::PostgresOptions{.conninfo = conninfo});
    return std::string(pg.endpoint());
  } catch (const dlock::InvalidArgument& e) {
    rejected = true;
    return e.what();
  }
}

std::string replace_all(std::string s, std::string_view from, const std::string& to) {
  for (auto p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

// Passwords as careless users write them into connection strings: unencoded
// URI delimiters, the characters libpq's parsers treat specially, a space.
const std::vector<std::string> hostile_passwords = {
    "Zq9@xK7wLm",  "Zq9/xK7wLm",  "Zq9?xK7wLm",   "Zq9#xK7wLm",   "Zq9:xK7wLm",   "Zq9,xK7wLm",
    "Zq9%xK7wLm",  "Zq9[xK7wLm",  "Zq9]xK7wLm",   "Zq9 xK7wLm",   "Zq9=xK7wLm",   "Zq9&xK7wLm",
    "Zq@9x@K7wLm", "p@ss/w0rdXy", "Zq9/x@K7?wLm", "Zq9?x@K7/wLm", "Zq9:x@K:7wLm", "Zq9\"xK7wLm",
    "@Zq9xK7wLm",  "Zq9xK7wLm@",  "/Zq9xK7wLm",   "Zq9xK7wLm/",   "Zq9/xK?7=wLm", "Zq9'xK7wLm",
};

const std::vector<std::string> templates = {
    "postgresql://app:{pw}@db.example.com:5432/appdb",
    "postgres://app:{pw}@127.0.0.1:5432/appdb?sslmode=disable&connect_timeout=3",
    "postgresql://app:{pw}@[::1]:5432/appdb",
    "postgresql://app:{pw}@h1.example.com:5432,h2.example.com:5433/appdb",
    "postgresql://app:{pw}@db.example.com",
    "postgresql://db.example.com/appdb?user=app&password={pw}",
    "host=db.example.com port=5432 dbname=appdb user=app password={pw}",
    "host=db.example.com port=5432 dbname=appdb user=app password='{pw}'",
    "password={pw} host=db.example.com dbname=appdb",
};

TEST(PgConninfoSecrets, NoEndpointOrMessageShowsAnyPartOfThePassword) {
  int rejected_count = 0, accepted_count = 0;
  for (const auto& t : templates) {
    for (const auto& pw : hostile_passwords) {
      const std::string conninfo = replace_all(t, "{pw}", pw);
      bool rejected = false;
      const std::string shown = shown_for(conninfo, rejected);
      (rejected ? rejected_count : accepted_count)++;
      EXPECT_EQ(leaked_part(shown, pw), "") << "conninfo: " << conninfo << "\nshown: " << shown;
      if (rejected) {
        EXPECT_NE(shown.find("PostgresOptions.conninfo"), std::string::npos) << shown;
      }
    }
  }
  EXPECT_GT(rejected_count, 0);
  EXPECT_GT(accepted_count, 0);
}

TEST(PgConninfoSecrets, AnUnencodedAtOrSlashInAUriPasswordIsRejectedNotMisread) {
  // libpq would read these as host "x@K7wLm@db.example.com" / database "xK7wLm@db.example.com".
  for (const char* uri :
       {"postgresql://app:Zq9@x@K7wLm@db.example.com/appdb", "postgresql://app:Zq9/xK7wLm@db.example.com/appdb",
        "postgresql://app:Zq9/x?user=K7@db.example.com:5432/appdb",
        // A '/' after digits and a '?key=' later in the password: libpq reads host "app", port "12", database
        // "Zq9" and the query "application_name=x@db..." (a fuzzer's find; the endpoint showed "app:12/Zq9").
        "postgresql://app:12/Zq9?application_name=x@db.example.com:5432/appdb",
        "postgresql://app:12/Zq9?host=x@db.example.com/appdb", "postgresql://:12/Zq9?sslmode=x@db.example.com",
        // The same after an '@' in the password: user "app", password "12", database or host "Zq9".
        "postgresql://app:12@/Zq9?application_name=x@db.example.com:5432/appdb",
        "postgresql://app:12@Zq9?application_name=x@db.example.com",
        // A '/' in the user name: host "a", database ":12/Zq9".
        "postgresql://a/b:12/Zq9?application_name=x@db.example.com"}) {
    bool rejected = false;
    const std::string shown = shown_for(uri, rejected);
    EXPECT_TRUE(rejected) << uri << " -> " << shown;
    EXPECT_NE(shown.find("percent-encode"), std::string::npos) << shown;
  }
}

TEST(PgConninfoSecrets, EndpointIsHostPortDatabase) {
  bool rejected = false;
  EXPECT_EQ(shown_for("postgresql://app:Zq9%40xK7w@db.example.com:6432/appdb", rejected), "db.example.com:6432/appdb");
  EXPECT_EQ(shown_for("postgresql://app:Zq9?xK7w@db.example.com:6432/appdb", rejected), "db.example.com:6432/appdb");
  EXPECT_EQ(shown_for("postgresql://app:Zq9#x:K7w@db.example.com/appdb", rejected), "db.example.com:5432/appdb");
  EXPECT_EQ(shown_for("host=db.example.com port=6432 dbname=appdb user=app password=Zq9@x/K7w?", rejected),
            "db.example.com:6432/appdb");
  // An '@' in the query string is the query's (an e-mail-like user name), not the end of a user info,
  // when nothing before the first '/' could be user:password; else it must be written %40.
  EXPECT_EQ(shown_for("postgresql://db.example.com/appdb?user=me@example.com", rejected), "db.example.com:5432/appdb");
  EXPECT_FALSE(rejected);
  EXPECT_EQ(shown_for("postgresql://db.example.com:6432/appdb?user=me%40example.com", rejected),
            "db.example.com:6432/appdb");
  EXPECT_FALSE(rejected);
  (void)shown_for("postgresql://db.example.com:6432/appdb?user=me@example.com", rejected);
  EXPECT_TRUE(rejected);
  (void)shown_for("postgresql://app:pw@db.example.com/appdb?application_name=me@example.com", rejected);
  EXPECT_TRUE(rejected);
  EXPECT_EQ(shown_for("postgresql://app:pw@db.example.com/appdb?application_name=me%40example.com", rejected),
            "db.example.com:5432/appdb");
  EXPECT_FALSE(rejected);
  // A non-numeric port is refused without quoting it.
  const std::string port = shown_for("host=db.example.com port=Zq9xK7w dbname=appdb", rejected);
  EXPECT_TRUE(rejected);
  EXPECT_EQ(port.find("Zq9x"), std::string::npos) << port;
}

TEST(PgRedact, DropsQuotedFragmentsAndJoinsLines) {
  EXPECT_EQ(dlock::detail::pg_redact("could not translate host name \"x@K7wLm@db\" to address: Name or service "
                                     "not known\n"),
            "could not translate host name \"...\" to address: Name or service not known");
  EXPECT_EQ(dlock::detail::pg_redact("connection to server at \"h\", port 1 failed: Connection refused\n\tIs the "
                                     "server running?\n"),
            "connection to server at \"...\", port 1 failed: Connection refused Is the server running?");
  EXPECT_EQ(dlock::detail::pg_redact("unterminated \"Zq9xK7w"), "unterminated \"...\"");
}

// libpq's conninfo parser quotes parts of the user's string, which may hold a '"': quotes do not pair up
// there, so everything from the first to the last '"' goes (pg_conninfo_fuzz found the password after a '"').
TEST(PgRedact, ConninfoErrorsLoseEverythingBetweenTheFirstAndLastQuote) {
  EXPECT_EQ(dlock::detail::pg_redact_conninfo_error(
                "missing key/value separator \"=\" in URI query parameter: \"a\"Zq9xK7w@h:?\"\n"),
            "missing key/value separator \"...\"");
  EXPECT_EQ(dlock::detail::pg_redact_conninfo_error("missing \"=\" after \"pass\"Zq9xK7w\" in connection info string"),
            "missing \"...\" in connection info string");
  EXPECT_EQ(dlock::detail::pg_redact_conninfo_error("unterminated \"Zq9xK7w"), "unterminated \"...\"");
  EXPECT_EQ(dlock::detail::pg_redact_conninfo_error("unterminated quoted string in connection info string\n"),
            "unterminated quoted string in connection info string");
  for (const char* conninfo : {"postgres://h/d?tlt\"Zq9xK7w@:?", "host=h pass\"Zq9xK7w", "password=Zq9 x\"K7w\"Lm"}) {
    bool rejected = false;
    const std::string shown = shown_for(conninfo, rejected);
    EXPECT_TRUE(rejected) << conninfo;
    EXPECT_EQ(shown.find("K7w"), std::string::npos) << shown;
  }
}

TEST(PgTtlSettings, FollowTheTtlAndClampToWhatTheServerAndKernelAccept) {
  using std::chrono::milliseconds;
  auto s = dlock::detail::pg_ttl_settings(std::chrono::seconds(30));
  EXPECT_EQ(s.idle_timeout_ms, 30'000);
  EXPECT_EQ(s.keepalives_idle_s, 15);
  EXPECT_EQ(s.keepalives_interval_s, 5);
  EXPECT_EQ(s.user_timeout_ms, 30'000);
  s = dlock::detail::pg_ttl_settings(milliseconds(1));
  EXPECT_EQ(s.idle_timeout_ms, 1);
  EXPECT_EQ(s.keepalives_idle_s, 1);
  EXPECT_EQ(s.keepalives_interval_s, 1);
  EXPECT_EQ(s.user_timeout_ms, 1);
  EXPECT_EQ(dlock::detail::pg_ttl_settings(milliseconds(INT_MAX)).idle_timeout_ms, INT_MAX);
  for (const milliseconds ttl :
       {milliseconds(std::int64_t{INT_MAX} + 1), milliseconds(std::chrono::hours(24 * 365)), milliseconds::max()}) {
    s = dlock::detail::pg_ttl_settings(ttl);
    EXPECT_EQ(s.idle_timeout_ms, 0) << ttl.count();  // off: never shorter than the ttl
    EXPECT_EQ(s.keepalives_idle_s, dlock::detail::pg_max_keepalive_seconds);
    EXPECT_EQ(s.keepalives_interval_s, dlock::detail::pg_max_keepalive_seconds);
    EXPECT_EQ(s.user_timeout_ms, INT_MAX);
  }
}

// A primitive's key: SipHash of namespace, 0x00, name, 0x00, tag (docs/postgres.md); pinned.
TEST(PgPrimitiveKey, GoldenVectorsAndLayout) {
  using dlock::detail::pg_primitive_key;
  using dlock::detail::PgPrimitive;
  static_assert(pg_primitive_key("", PgPrimitive::rw, "orders") == -2878413391772622213LL);
  EXPECT_EQ(pg_primitive_key("", PgPrimitive::permit, "orders"), 593904536199579939LL);
  EXPECT_EQ(pg_primitive_key("app", PgPrimitive::leader, "orders"), 8948648331453062134LL);
  for (const PgPrimitive t : {PgPrimitive::rw, PgPrimitive::permit, PgPrimitive::leader}) {
    const std::string tail = std::string(1, '\0') + static_cast<char>(t);
    EXPECT_EQ(pg_primitive_key("ns", t, "a:b"), pg_hash_key("ns", "a:b" + tail));
    EXPECT_NE(pg_primitive_key("ns", t, "a:b"), pg_hash_key("ns", "a:b"));
  }
  EXPECT_NE(pg_primitive_key("", PgPrimitive::rw, "x"), pg_primitive_key("", PgPrimitive::permit, "x"));
  EXPECT_NE(pg_primitive_key("", PgPrimitive::permit, "x"), pg_primitive_key("", PgPrimitive::leader, "x"));
}

// Slot s keeps the high 32 bits and adds s to the low 32 bits modulo 2^32, as the SQL does.
TEST(PgPrimitiveKey, PermitSlotsWrapInTheLowWord) {
  using dlock::detail::pg_permit_slot_key;
  static_assert(pg_permit_slot_key(0x12345678'00000005LL, 0) == 0x12345678'00000005LL);
  EXPECT_EQ(pg_permit_slot_key(0x12345678'00000005LL, 3), 0x12345678'00000008LL);
  EXPECT_EQ(pg_permit_slot_key(0x12345678'FFFFFFFFLL, 1), 0x12345678'00000000LL);
  EXPECT_EQ(pg_permit_slot_key(-1, 1), static_cast<std::int64_t>(0xFFFFFFFF'00000000ULL));
}

}  // namespace
#endif  // DLOCK_PG_KEY_TEST_BACKEND
