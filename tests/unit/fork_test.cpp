// fork(): a lease inherited by a child process belongs to the parent. In the
// child it is lost (queries say so) and releasing or extending it never
// reaches the server, where the parent still holds it under the same owner id.
#include <dlock/detail/redis_subscriber.hpp>
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fork_support.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::MemoryBackend;

namespace {

/// A MemoryBackend that counts the calls that would reach a server.
class CountingBackend {
 public:
  using Handle = dlock::NoHandle;
  std::atomic<int> releases{0};
  std::atomic<int> extends{0};

  [[nodiscard]] std::string_view kind() const noexcept { return "counting"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:4"; }
  dlock::AcquireResult<Handle> try_acquire(const dlock::AcquireRequest& r) { return mem_.try_acquire(r); }
  dlock::ReleaseResult release(std::string_view name, dlock::Lease<Handle>& lease) {
    ++releases;
    return mem_.release(name, lease);
  }
  std::optional<dlock::TimePoint> extend(std::string_view name, dlock::Lease<Handle>& lease,
                                         std::chrono::milliseconds ttl, dlock::TimePoint started) {
    ++extends;
    return mem_.extend(name, lease, ttl, started);
  }

 private:
  MemoryBackend mem_;
};

/// What the child saw, sent back through a pipe.
struct ChildReport {
  bool owns_lock = true;
  bool guard_owns_lock = true;
  bool token_lost = false;
  bool guard_token_lost = false;
  bool extend_lost = false;
  bool stop_requested = false;
  bool release_not_held = false;
  bool guard_release_not_held = false;
  bool valid_until_cleared = false;
  int server_calls = -1;  // releases + extends that reached the backend in the child
};

template <class F>
bool throws_lock_lost(F f) {
  try {
    f();
  } catch (const dlock::LockLostError&) {
    return true;
  } catch (...) {
  }
  return false;
}

}  // namespace

TEST(Fork, ALeaseInheritedByAChildIsLostThereAndTheParentKeepsIt) {
  CountingBackend backend;
  Lock<CountingBackend> lock(backend, "job", {.ttl = 30s});
  Lock<CountingBackend> other(backend, "other", {.ttl = 30s});
  lock.lock();
  auto guard = other.acquire();
  const auto token = lock.fencing_token();

  const auto report = dlock::test::in_child([&] {
    const int before = backend.releases + backend.extends;
    ChildReport r;
    r.owns_lock = lock.owns_lock();
    r.guard_owns_lock = guard.owns_lock();
    r.token_lost = throws_lock_lost([&] { (void)lock.fencing_token(); });
    r.guard_token_lost = throws_lock_lost([&] { (void)guard.fencing_token(); });
    r.extend_lost = throws_lock_lost([&] { lock.extend(); });
    r.valid_until_cleared = lock.valid_until() == dlock::TimePoint{};
    r.stop_requested = lock.stop_token().stop_requested();
    r.release_not_held = lock.release() == dlock::ReleaseResult::not_held;
    r.guard_release_not_held = guard.release() == dlock::ReleaseResult::not_held;
    r.server_calls = backend.releases + backend.extends - before;
    return std::string(reinterpret_cast<const char*>(&r), sizeof r);
  });
  ASSERT_TRUE(report.has_value());
  ASSERT_EQ(report->size(), sizeof(ChildReport));
  ChildReport r;
  std::memcpy(&r, report->data(), sizeof r);

  EXPECT_FALSE(r.owns_lock);
  EXPECT_FALSE(r.guard_owns_lock);
  EXPECT_TRUE(r.token_lost);
  EXPECT_TRUE(r.guard_token_lost);
  EXPECT_TRUE(r.extend_lost);
  EXPECT_TRUE(r.valid_until_cleared);
  EXPECT_TRUE(r.stop_requested);
  EXPECT_TRUE(r.release_not_held);
  EXPECT_TRUE(r.guard_release_not_held);
  EXPECT_EQ(r.server_calls, 0);  // the child never released or extended the parent's lease

  // The parent still holds both, under the same owner ids.
  EXPECT_TRUE(lock.owns_lock());
  EXPECT_EQ(lock.fencing_token(), token);
  EXPECT_TRUE(guard.owns_lock());
  lock.extend();
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
  EXPECT_EQ(guard.release(), dlock::ReleaseResult::released);
}

// A child forked while another parent thread is inside relocate() (Sentinel:
// a +switch-master heard during the fork) destroys its inherited subscriber.
// Its core's mutex is never taken in the child (Core::inherited()), but
// ~RedisSubscriber takes the Anchor's mutex first, which the parent's thread
// held at the fork. The parent's locate() is held open here to make the
// window deterministic; in production it is the time relocate() runs.
// Before: the child hung (3 s limit); found by review.
TEST(Fork, AChildDestroysItsSubscriberWhileTheParentRelocates) {
  std::atomic<bool> block{false};
  std::atomic<bool> in_locate{false};
  dlock::RedisOptions o;
  o.host = "127.0.0.1";
  o.port = 1;
  std::vector<dlock::detail::RedisSubscriber::Server> servers{
      {o, "127.0.0.1:1", [&]() -> std::optional<dlock::RedisOptions> {
         if (block) {
           in_locate = true;
           while (block) std::this_thread::sleep_for(std::chrono::milliseconds(1));
         }
         return std::nullopt;  // none located yet: the attempt counts as failed
       }}};
  auto sub = std::make_unique<dlock::detail::RedisSubscriber>(std::move(servers));
  std::optional<dlock::detail::RedisSubscription> subscription;
  subscription.emplace(sub->subscribe("review:ch", false));
  block = true;
  std::thread relocating([f = sub->relocator()] { f(); });
  while (!in_locate) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto got = dlock::test::in_child_while(
      [&] {
        subscription.reset();
        sub.reset();
        return std::string("destroyed");
      },
      [] {}, std::chrono::seconds(3));
  block = false;
  relocating.join();
  EXPECT_EQ(got, std::optional<std::string>("destroyed")) << "the child hung in ~RedisSubscriber";
}
