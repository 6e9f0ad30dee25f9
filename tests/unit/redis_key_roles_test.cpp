// Which lock and which part of it a Redis key is (detail/redis_key_roles.hpp),
// for the administration API: every role round-trips through its key, names
// containing '}' resolve to the longest name, foreign keys are refused.
#include <dlock/detail/redis_key_roles.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

using dlock::detail::classify_redis_key;
using dlock::detail::redis_role_key;
using dlock::detail::RedisKeyOf;
using dlock::detail::RedisKeyRole;

TEST(RedisKeyRoles, EveryRoleRoundTripsThroughItsKey) {
  for (const std::string name : {"orders:42", "a}:fence", "x}", "{y}", "caf\xc3\xa9 \n", "q\"uote\\ {brace}"}) {
    for (std::size_t r = 0; r < dlock::detail::redis_key_role_count; ++r) {
      const auto role = static_cast<RedisKeyRole>(r);
      const std::string key = redis_role_key("dlock:", name, role);
      const auto got = classify_redis_key("dlock:", key);
      ASSERT_TRUE(got.has_value()) << key;
      // A name ending in a role's "}<suffix>" reads as that longer name's lock;
      // the layout makes those two keys identical, so only the lock role may differ.
      if (got->name != name) {
        EXPECT_EQ(got->role, RedisKeyRole::lock) << key;
        continue;
      }
      EXPECT_EQ(got->role, role) << key;
    }
  }
}

TEST(RedisKeyRoles, TheLayoutsOwnKeys) {
  EXPECT_EQ(redis_role_key("p:", "n", RedisKeyRole::lock), "p:{n}");
  EXPECT_EQ(redis_role_key("p:", "n", RedisKeyRole::fence), "p:{n}:fence");
  EXPECT_EQ(redis_role_key("p:", "n", RedisKeyRole::rw_readers),
            dlock::detail::redis_primitive_keys("p:", "n").rw_readers);
  EXPECT_EQ(redis_role_key("p:", "n", RedisKeyRole::leader_info),
            dlock::detail::redis_primitive_keys("p:", "n").leader_info);
  EXPECT_EQ(redis_role_key("p:", "n", RedisKeyRole::rw_tokens),
            dlock::detail::redis_primitive_keys("p:", "n").rw_tokens);
  EXPECT_EQ(redis_role_key("p:", "n", RedisKeyRole::sem_tokens),
            dlock::detail::redis_primitive_keys("p:", "n").sem_tokens);
}

TEST(RedisKeyRoles, NamesAndForeignKeys) {
  EXPECT_EQ(classify_redis_key("dlock:", "dlock:{orders:42}"), (RedisKeyOf{"orders:42", RedisKeyRole::lock}));
  EXPECT_EQ(classify_redis_key("dlock:", "dlock:{a}:fence}"), (RedisKeyOf{"a}:fence", RedisKeyRole::lock}));
  EXPECT_EQ(classify_redis_key("dlock:", "dlock:{orders:42}:fence"), (RedisKeyOf{"orders:42", RedisKeyRole::fence}));
  EXPECT_EQ(classify_redis_key("dlock:", "dlock:{job}:sem:permits"), (RedisKeyOf{"job", RedisKeyRole::sem_permits}));
  EXPECT_EQ(classify_redis_key("dlock:", "dlock:{job}:queue:ttl"), (RedisKeyOf{"job", RedisKeyRole::fair_deadlines}));
  EXPECT_FALSE(classify_redis_key("dlock:", "dlock:{job}:released").has_value());  // a channel, never a key
  EXPECT_FALSE(classify_redis_key("dlock:", "dlock:{job}:other").has_value());
  EXPECT_FALSE(classify_redis_key("dlock:", "dlock:waiting:0190").has_value());
  EXPECT_FALSE(classify_redis_key("dlock:", "other:{x}").has_value());
  EXPECT_FALSE(classify_redis_key("dlock:", "dlock:{}").has_value());
  EXPECT_FALSE(classify_redis_key("dlock:", "dlock:").has_value());
  EXPECT_EQ(classify_redis_key("", "{x}"), (RedisKeyOf{"x", RedisKeyRole::lock}));
}

TEST(RedisKeyRoles, GlobEscape) {
  EXPECT_EQ(dlock::detail::redis_glob_escape("dlock:"), "dlock:");
  EXPECT_EQ(dlock::detail::redis_glob_escape("a*b?c[d]e\\"), "a\\*b\\?c\\[d\\]e\\\\");
}

}  // namespace
