// The default log: problems only, rate-limited per lock and event type, and
// lock names made valid UTF-8; detail::sanitize_utf8 itself.
#include <dlock/dlock.hpp>
#include <dlock/detail/utf8.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace std::chrono_literals;
using dlock::Event;
using dlock::EventType;

namespace {

struct Captured {
  std::vector<std::string> lines;
  std::chrono::steady_clock::time_point now{std::chrono::seconds(1000)};
  dlock::LogObserver observer() {
    return dlock::LogObserver(dlock::LogOptions{
        .interval = 5s, .sink = [this](std::string_view l) { lines.emplace_back(l); }, .now = [this] { return now; }});
  }
};

Event event(EventType type, std::string_view lock) {
  Event e;
  e.type = type;
  e.backend = "redis";
  e.endpoint = "127.0.0.1:6379";
  e.lock = lock;
  e.message = "connection refused";
  return e;
}

}  // namespace

TEST(LogObserver, ContentionAndRoutineEventsAreNotLogged) {
  Captured c;
  auto log = c.observer();
  for (auto t : {EventType::attempt, EventType::acquired, EventType::contended, EventType::acquire_timed_out,
                 EventType::released, EventType::extended})
    log.on_event(event(t, "orders:1"));
  EXPECT_TRUE(c.lines.empty());
  log.on_event(event(EventType::attempt_failed, "orders:1"));
  log.on_event(event(EventType::acquire_failed, "orders:1"));
  EXPECT_EQ(c.lines.size(), 2u);
}

// A waiter retrying through an outage writes one line per interval, not one
// per attempt, and the next line says how many were left out.
TEST(LogObserver, RepeatedProblemsAreRateLimitedPerLockAndType) {
  Captured c;
  auto log = c.observer();
  for (int i = 0; i < 50; ++i) {  // 50 failed attempts in 4.9 s
    log.on_event(event(EventType::attempt_failed, "orders:1"));
    c.now += 100ms;
  }
  ASSERT_EQ(c.lines.size(), 1u);
  log.on_event(event(EventType::attempt_failed, "orders:2"));  // another lock: its own budget
  log.on_event(event(EventType::lost, "orders:1"));            // another type: its own budget
  EXPECT_EQ(c.lines.size(), 3u);
  c.now += 200ms;  // 5.1 s after the first line
  log.on_event(event(EventType::attempt_failed, "orders:1"));
  ASSERT_EQ(c.lines.size(), 4u);
  EXPECT_NE(c.lines.back().find("(49 similar lines left out in the last 5000 ms)"), std::string::npos)
      << c.lines.back();
  EXPECT_NE(c.lines.back().find("lock='orders:1'"), std::string::npos);
}

TEST(LogObserver, LockNamesAreLoggedAsValidUtf8) {
  Captured c;
  auto log = c.observer();
  log.on_event(event(EventType::lost, std::string_view("bad\xff\xfe:1", 7)));
  ASSERT_EQ(c.lines.size(), 1u);
  EXPECT_NE(c.lines[0].find("lock='bad\xEF\xBF\xBD\xEF\xBF\xBD:1'"), std::string::npos) << c.lines[0];
}

TEST(RateLimit, TableIsBounded) {
  dlock::detail::RateLimit limit(1s, 8);
  const std::chrono::steady_clock::time_point t{};
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(limit.admit("k" + std::to_string(i), t).has_value());
}

TEST(Utf8, ValidTextIsUnchanged) {
  for (std::string_view s : {"", "orders:42", "caf\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x94\x92", "\xF4\x8F\xBF\xBF"})
    EXPECT_EQ(dlock::detail::sanitize_utf8(s), s);
}

TEST(Utf8, InvalidBytesBecomeReplacementCharacters) {
  using dlock::detail::sanitize_utf8;
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(sanitize_utf8("\xFF"), r);
  EXPECT_EQ(sanitize_utf8("a\x80z"), "a" + r + "z");
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), r + r);                  // overlong '/'
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), r + r + r);          // a surrogate
  EXPECT_EQ(sanitize_utf8("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(sanitize_utf8("\xE2\x82"), r + r);                  // truncated
  EXPECT_EQ(sanitize_utf8(std::string_view("a\0b", 3)), std::string("a\0b", 3));
}
