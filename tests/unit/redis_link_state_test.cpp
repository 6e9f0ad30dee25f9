// The transport's link ownership decisions (detail/redis_transport.hpp,
// link_state): who may touch an idle-capable link's socket, and what the I/O
// thread does once a caller's own exchange gives the link back.
#include <dlock/detail/redis_transport.hpp>

#include <gtest/gtest.h>

#include <chrono>

namespace {

using namespace dlock::detail::link_state;

TEST(RedisLinkState, OnlyAnIdleLinkCanBeTakenByACaller) {
  State s;  // a new link: the I/O thread's (connecting)
  EXPECT_FALSE(caller_claim(s));
  EXPECT_EQ(s.owner, Owner::io);
  s.owner = Owner::idle;
  EXPECT_TRUE(caller_claim(s));
  EXPECT_EQ(s.owner, Owner::caller);
  EXPECT_FALSE(caller_claim(s)) << "two callers on one socket";
}

TEST(RedisLinkState, TheIoThreadTakesAnIdleLinkAndWaitsForACallersExchange) {
  State s;
  s.owner = Owner::idle;
  EXPECT_TRUE(io_claim(s, false));
  EXPECT_EQ(s.owner, Owner::io);
  EXPECT_FALSE(caller_claim(s)) << "a caller must not write while the I/O thread has requests on the link";

  s.owner = Owner::caller;
  EXPECT_FALSE(io_claim(s, false));
  EXPECT_TRUE(s.io_wanted);
  EXPECT_EQ(s.owner, Owner::caller) << "the I/O thread must not touch the socket during a caller's exchange";
  EXPECT_EQ(caller_release(s, false), AfterCaller::resume);
  EXPECT_EQ(s.owner, Owner::io);
  EXPECT_FALSE(s.io_wanted);
}

TEST(RedisLinkState, ACloseDuringACallersExchangeRunsAfterItAndWinsOverQueuedWork) {
  State s;
  s.owner = Owner::caller;
  EXPECT_FALSE(io_claim(s, false));
  EXPECT_FALSE(io_claim(s, true));
  EXPECT_TRUE(s.close_wanted);
  EXPECT_EQ(caller_release(s, false), AfterCaller::close);
  EXPECT_EQ(s.owner, Owner::io);
  EXPECT_FALSE(s.close_wanted);
  EXPECT_FALSE(s.io_wanted);
}

TEST(RedisLinkState, ABrokenExchangeFailsTheLinkWhateverCameMeanwhile) {
  for (const bool queued : {false, true}) {
    State s;
    s.owner = Owner::caller;
    if (queued) (void)io_claim(s, false);
    EXPECT_EQ(caller_release(s, true), AfterCaller::fail);
    EXPECT_EQ(s.owner, Owner::io) << "a broken link is never idle again";
    EXPECT_FALSE(caller_claim(s));
  }
}

TEST(RedisLinkState, AQuietExchangeLeavesTheLinkIdleForTheNextCaller) {
  State s;
  s.owner = Owner::idle;
  ASSERT_TRUE(caller_claim(s));
  EXPECT_EQ(caller_release(s, false), AfterCaller::nothing);
  EXPECT_EQ(s.owner, Owner::idle);
  EXPECT_TRUE(caller_claim(s));
}

TEST(RedisLinkState, OnlyAReadyPlainLinkWithNothingOwedGoesIdle) {
  const IdleInputs quiet{.caller_io = true, .ready = true};
  EXPECT_TRUE(may_idle(quiet));
  auto with = [&](auto change) {
    IdleInputs in = quiet;
    change(in);
    return may_idle(in);
  };
  EXPECT_FALSE(with([](IdleInputs& in) { in.caller_io = false; })) << "links without a caller's exchange keep reading";
  EXPECT_FALSE(with([](IdleInputs& in) { in.tls = true; })) << "TLS stays on the I/O thread";
  EXPECT_FALSE(with([](IdleInputs& in) { in.subscriber = true; })) << "a subscriber reads pushes";
  EXPECT_FALSE(with([](IdleInputs& in) { in.ready = false; })) << "still in its handshake";
  EXPECT_FALSE(with([](IdleInputs& in) { in.queued = 1; }));
  EXPECT_FALSE(with([](IdleInputs& in) { in.inflight = 1; })) << "a reply is owed: the read stays armed";
  EXPECT_FALSE(with([](IdleInputs& in) { in.unparsed = 3; })) << "bytes nobody asked for";
  EXPECT_FALSE(with([](IdleInputs& in) { in.writing = true; }));
}

// The asynchronous caller's exchange (RedisLink::send_here): the same claim
// as a thread's, but the I/O thread may seize it once it is overdue, since an
// executor, unlike a thread in poll(), may stop running.
using std::chrono::milliseconds;
using std::chrono::seconds;
using TimePoint = std::chrono::steady_clock::time_point;

TEST(RedisLinkState, AnAsynchronousCallerClaimsOnlyAnIdleLinkAndHoldsOffTheIoThread) {
  const TimePoint due = TimePoint() + seconds(100);
  State s;
  EXPECT_FALSE(caller_claim_async(s, due)) << "connecting or busy: the I/O thread's";
  s.owner = Owner::idle;
  ASSERT_TRUE(caller_claim_async(s, due));
  EXPECT_EQ(s.owner, Owner::caller_async);
  EXPECT_FALSE(caller_claim(s)) << "a thread must not write during an asynchronous caller's exchange";
  EXPECT_FALSE(caller_claim_async(s, due)) << "two asynchronous callers on one socket";
  EXPECT_FALSE(io_claim(s, false)) << "requests sent meanwhile wait (reply order)";
  EXPECT_TRUE(s.io_wanted);
  EXPECT_FALSE(io_claim(s, true));
  EXPECT_EQ(caller_release(s, false), AfterCaller::close);
  EXPECT_EQ(s.owner, Owner::io);

  s.owner = Owner::idle;
  ASSERT_TRUE(caller_claim_async(s, due));
  EXPECT_EQ(caller_release(s, false), AfterCaller::nothing);
  EXPECT_EQ(s.owner, Owner::idle);
  ASSERT_TRUE(caller_claim_async(s, due));
  EXPECT_EQ(caller_release(s, true), AfterCaller::fail) << "a request in doubt: the link is never reused";
  EXPECT_EQ(s.owner, Owner::io);
}

TEST(RedisLinkState, TheIoThreadSeizesOnlyAnOverdueAsynchronousExchange) {
  const TimePoint due = TimePoint() + seconds(100);
  const auto grace = std::chrono::steady_clock::duration(seconds(1));
  State s;
  s.owner = Owner::idle;
  ASSERT_TRUE(caller_claim_async(s, due));
  EXPECT_FALSE(io_seize(s, due, grace)) << "at its deadline the caller's own timer reports it";
  EXPECT_FALSE(io_seize(s, due + grace - milliseconds(1), grace));
  EXPECT_EQ(s.owner, Owner::caller_async);
  ASSERT_TRUE(io_seize(s, due + grace, grace)) << "its executor stopped: the link must not strand others' requests";
  EXPECT_EQ(s.owner, Owner::io);
  EXPECT_FALSE(caller_claim(s));
  EXPECT_FALSE(caller_claim_async(s, due));
  EXPECT_FALSE(io_seize(s, due + seconds(10), grace)) << "seized once";
  // The caller's late completion touches nothing: the I/O thread failed the link.
  EXPECT_EQ(caller_release(s, false), AfterCaller::seized);
  EXPECT_EQ(s.owner, Owner::io) << "a seized link is never idle again";
  EXPECT_FALSE(s.seized);
}

TEST(RedisLinkState, AThreadsExchangeIsNeverSeized) {
  State s;
  s.owner = Owner::idle;
  ASSERT_TRUE(caller_claim(s));
  EXPECT_FALSE(io_seize(s, TimePoint::max() - seconds(10), seconds(1)))
      << "a thread in poll() is bounded by its own deadline and may be using the descriptor";
  EXPECT_EQ(s.owner, Owner::caller);
  s.owner = Owner::idle;
  EXPECT_FALSE(io_seize(s, TimePoint::max() - seconds(10), seconds(1)));
  EXPECT_EQ(s.owner, Owner::idle);
}

}  // namespace
