// The wait-record encoding of RedisBackend (detail/redis_waits.hpp): exact
// bytes of the documented format, round trips with awkward names, and
// rejection of malformed values.
#include <dlock/detail/redis_waits.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using dlock::HeldLockRef;
using dlock::WaitRecord;
using dlock::detail::decode_wait_record;
using dlock::detail::encode_wait_record;
using dlock::detail::WaitInfo;

WaitInfo round_trip(std::string_view agent, std::string_view waiter, std::string_view lock,
                    const std::vector<HeldLockRef>& holds) {
  const WaitRecord r{agent, waiter, lock, holds, std::chrono::milliseconds(5000)};
  const auto decoded = decode_wait_record(encode_wait_record(r));
  EXPECT_TRUE(decoded.has_value());
  return decoded.value_or(WaitInfo{});
}

TEST(RedisWaits, KeyIsPrefixWaitingWaiter) {
  EXPECT_EQ(dlock::detail::redis_waiting_key("dlock:", "0190-ab"), "dlock:waiting:0190-ab");
  EXPECT_EQ(dlock::detail::redis_waiting_key("", "w"), "waiting:w");
}

TEST(RedisWaits, EncodesTheDocumentedFormat) {
  const std::vector<HeldLockRef> holds{{"a", "o1"}, {"orders:42", "owner-2"}};
  const WaitRecord r{"host:12:7f", "w-1", "b", holds, std::chrono::milliseconds(5000)};
  EXPECT_EQ(
      encode_wait_record(r),
      "v1 agent=10:host:12:7f waiter=3:w-1 lock=1:b holds=2 name=1:a owner=2:o1 name=9:orders:42 owner=7:owner-2");
  const WaitRecord none{"h:1:2", "w", "x", {}, std::chrono::milliseconds(1)};
  EXPECT_EQ(encode_wait_record(none), "v1 agent=5:h:1:2 waiter=1:w lock=1:x holds=0");
}

TEST(RedisWaits, RoundTripsAwkwardNames) {
  const std::string nul("a\0b", 3);
  const std::vector<std::string> names{
      "",
      "plain",
      "with \"quotes\" and 'single'",
      "new\nline\r\n",
      "colons:a:b: holds=3 name=1:x",
      "{braces}}{",
      "caf\xc3\xa9 \xc3\xbc"
      "ber",
      "\xff\xfe invalid utf-8 \x80",
      nul,
      " v1 agent=5:",
      std::string(1000, 'x'),
  };
  for (const auto& n : names) {
    const std::string owner = "owner:" + n;
    const std::vector<HeldLockRef> holds{{n, owner}, {"other", n}};
    const WaitInfo w = round_trip("host:1:" + n, "waiter " + n, n, holds);
    EXPECT_EQ(w.agent, "host:1:" + n);
    EXPECT_EQ(w.waiter, "waiter " + n);
    EXPECT_EQ(w.lock, n);
    ASSERT_EQ(w.holds.size(), 2u);
    EXPECT_EQ(w.holds[0], (WaitInfo::Held{n, "owner:" + n}));
    EXPECT_EQ(w.holds[1], (WaitInfo::Held{"other", n}));
  }
}

TEST(RedisWaits, RoundTripsManyHolds) {
  std::vector<std::string> names, owners;
  for (int i = 0; i < 50; ++i) {
    names.push_back("lock-" + std::to_string(i));
    owners.push_back(names.back() + "-owner");
  }
  std::vector<HeldLockRef> holds;
  for (std::size_t i = 0; i < names.size(); ++i) holds.push_back({names[i], owners[i]});
  const WaitInfo w = round_trip("a", "b", "c", holds);
  ASSERT_EQ(w.holds.size(), 50u);
  EXPECT_EQ(w.holds[49].name, "lock-49");
  EXPECT_EQ(w.holds[49].owner, "lock-49-owner");
}

TEST(RedisWaits, RejectsMalformedValues) {
  const std::string good = "v1 agent=1:a waiter=1:w lock=1:l holds=1 name=1:n owner=1:o";
  ASSERT_TRUE(decode_wait_record(good).has_value());
  const std::vector<std::string> bad{
      "",
      "v2 agent=1:a waiter=1:w lock=1:l holds=0",
      "v1 agent=1:a waiter=1:w lock=1:l",                    // no holds
      "v1 agent=1:a waiter=1:w lock=1:l holds=1",            // missing held lock
      "v1 agent=1:a waiter=1:w lock=1:l holds=1 name=1:n",   // missing owner
      "v1 agent=2:a waiter=1:w lock=1:l holds=0",            // length too long
      "v1 agent=01:a waiter=1:w lock=1:l holds=0",           // leading zero
      "v1 agent=1:a waiter=1:w lock=1:l holds=0 ",           // trailing bytes
      "v1 agent=1:a waiter=1:w lock=1:l holds=00",           // leading zero count
      "v1 agent=1:a lock=1:l waiter=1:w holds=0",            // wrong order
      "v1 agent=:a waiter=1:w lock=1:l holds=0",             // no length
      "v1 agent=99999999999:a waiter=1:w lock=1:l holds=0",  // absurd length
      "v1 agent=1:a waiter=1:w lock=1:l holds=999999999",    // absurd count
      "v1  agent=1:a waiter=1:w lock=1:l holds=0",           // double space
      "SET NX value",
  };
  for (const auto& b : bad) EXPECT_FALSE(decode_wait_record(b).has_value()) << b;
  for (std::size_t cut = 0; cut < good.size(); ++cut)
    EXPECT_FALSE(decode_wait_record(good.substr(0, cut)).has_value()) << "truncated at " << cut;
}

}  // namespace
