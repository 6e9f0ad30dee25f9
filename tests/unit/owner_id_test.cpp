#include <dlock/owner_id.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <thread>

#include "fork_support.hpp"

// RFC 9562, Appendix A.6: unix_ts_ms 0x017F22E279B0, rand_a 0xCC3, rand_b 0x18C4DC0C0C07398F.
TEST(Uuid, RfcTestVector) {
  const auto bytes = dlock::detail::uuid_v7_bytes(0x017F22E279B0, 0xCC3, 0x18C4DC0C0C07398F);
  const auto text = dlock::detail::format_uuid(bytes);
  EXPECT_EQ(std::string(text.begin(), text.end()), "017f22e2-79b0-7cc3-98c4-dc0c0c07398f");
}

TEST(Uuid, VersionAndVariantBitsWhateverTheRandomBits) {
  for (std::uint64_t r : {std::uint64_t{0}, ~std::uint64_t{0}, std::uint64_t{0x5555555555555555}}) {
    const auto b = dlock::detail::uuid_v7_bytes(0xFFFFFFFFFFFF, r, r);
    EXPECT_EQ(b[6] >> 4, 0x7);
    EXPECT_EQ(b[8] >> 6, 0b10);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(b[i], 0xFF);
  }
}

TEST(OwnerId, CanonicalTextWithTimestampAndBits) {
  const auto before =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  const auto id = dlock::OwnerId::generate();
  const auto after =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  const std::string s(id.str());
  ASSERT_EQ(s.size(), 36u);
  for (std::size_t i : {8u, 13u, 18u, 23u}) EXPECT_EQ(s[i], '-');
  EXPECT_EQ(s[14], '7');
  EXPECT_NE(std::string("89ab").find(s[19]), std::string::npos);
  for (char c : s) EXPECT_TRUE(c == '-' || (std::isxdigit(static_cast<unsigned char>(c)) && !std::isupper(c)));
  const long long ms = std::stoll(s.substr(0, 8) + s.substr(9, 4), nullptr, 16);
  EXPECT_GE(ms, before);
  EXPECT_LE(ms, after);
}

TEST(OwnerId, LaterIdsSortLater) {
  auto prev = dlock::OwnerId::generate();
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the next millisecond of the ids' timestamp
    auto next = dlock::OwnerId::generate();
    EXPECT_LT(prev.str(), next.str());
    EXPECT_LT(prev, next);
    prev = next;
  }
}

TEST(OwnerId, UniqueAcrossThreads) {
  std::set<std::string> ids;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      std::vector<std::string> local;
      for (int i = 0; i < 5000; ++i) local.emplace_back(dlock::OwnerId::generate().str());
      std::lock_guard lk(mu);
      ids.insert(local.begin(), local.end());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ids.size(), 20000u);
}

// A forked child inherits the parent's generator state; its ids must still differ.
TEST(OwnerId, ParentAndForkedChildDrawDifferentIds) {
  (void)dlock::OwnerId::generate();  // the generator exists before the fork, so the child inherits it
  const auto child_id = dlock::test::in_child([] { return std::string(dlock::OwnerId::generate().str()); });
  const std::string parent_id(dlock::OwnerId::generate().str());
  ASSERT_TRUE(child_id.has_value());
  ASSERT_EQ(child_id->size(), 36u);
  // The first 14 characters are the millisecond timestamp (and may match); the random bits must not.
  EXPECT_NE(child_id->substr(14), parent_id.substr(14)) << *child_id << " vs " << parent_id;
}
