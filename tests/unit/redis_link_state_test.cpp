// The transport's link ownership decisions (detail/redis_transport.hpp,
// link_state): who may touch an idle-capable link's socket, and what the I/O
// thread does once a caller's own exchange gives the link back.
#include <dlock/detail/redis_transport.hpp>

#include <gtest/gtest.h>

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
  EXPECT_FALSE(with([](IdleInputs& in) { in.caller_io = false; })) << "shared (asynchronous) links keep reading";
  EXPECT_FALSE(with([](IdleInputs& in) { in.tls = true; })) << "TLS stays on the I/O thread";
  EXPECT_FALSE(with([](IdleInputs& in) { in.subscriber = true; })) << "a subscriber reads pushes";
  EXPECT_FALSE(with([](IdleInputs& in) { in.ready = false; })) << "still in its handshake";
  EXPECT_FALSE(with([](IdleInputs& in) { in.queued = 1; }));
  EXPECT_FALSE(with([](IdleInputs& in) { in.inflight = 1; })) << "a reply is owed: the read stays armed";
  EXPECT_FALSE(with([](IdleInputs& in) { in.unparsed = 3; })) << "bytes nobody asked for";
  EXPECT_FALSE(with([](IdleInputs& in) { in.writing = true; }));
}

}  // namespace
