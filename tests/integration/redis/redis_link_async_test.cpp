// The transport's asynchronous fast path (RedisLink::send_here,
// detail/redis_transport.hpp) on a real server: a caller that writes on its
// own thread and reads the reply with its own io_context never mixes its
// replies with requests pipelined by the I/O thread on the same link; a
// request it wrote that got no answer is in doubt (never resent); a link the
// server closed while idle is not written on; and a caller whose io_context
// stops or is destroyed mid-request does not strand other callers' requests.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "redis_link_test_support.hpp"
#include "redis_test_support.hpp"

using namespace std::chrono_literals;
using dlock::RedisOptions;
using dlock::detail::RedisCall;
using dlock::detail::RedisGather;
using dlock::detail::RedisLink;
using dlock::detail::RedisOutcome;
using dlock::test::caller_io;
using dlock::test::command;
using dlock::test::RedisServer;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;
namespace asio = boost::asio;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

using RedisLinkAsyncTest = RedisTest;

// send_here() if the link is idle (true), else nothing (false); the outcome
// goes to `out` when `io` runs.
bool try_here(RedisLink& link, asio::io_context& io, RedisCall& call, std::optional<RedisOutcome>& out) {
  RedisLink::Done done = [&out](RedisOutcome o) { out = std::move(o); };
  return link.send_here(call, io.get_executor(), done);
}

// Waits (bounded) until `link` is idle, then one PING through send_here.
bool wait_idle(RedisLink& link, asio::io_context& io) {
  for (int i = 0; i < 2000; ++i) {
    RedisCall ping = command({"PING"});
    std::optional<RedisOutcome> out;
    if (try_here(link, io, ping, out)) {
      io.restart();
      io.run();
      return out && !out->error && out->replies.size() == 1 && out->replies[0].str == "PONG";
    }
    std::this_thread::sleep_for(1ms);  // polling for the I/O thread to finish; no ordering depends on it
  }
  return false;
}

// A link to a server of its own, idle (wait_idle through `io`), then the
// server paused (SIGSTOP): a request written now gets no answer.
struct PausedLink : dlock::test::OwnServerLink {
  explicit PausedLink(std::chrono::milliseconds command_timeout)
      : OwnServerLink(command_timeout), io(std::make_unique<asio::io_context>()) {
    idle = wait_idle(link, *io);
    server.pause();
  }
  std::unique_ptr<asio::io_context> io;
  bool idle = false;
};

template <class E>
std::string error_of(const RedisOutcome& o) {
  try {
    std::rethrow_exception(o.error);
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong type: ") + e.what();
  }
}

TEST_F(RedisLinkAsyncTest, AsyncExchangesNeverMixRepliesWithRequestsPipelinedOnTheSameLink) {
  RedisLink link = RedisLink::open(options(), caller_io);
  (void)link.exec(command({"PING"}));
  asio::io_context io;
  ASSERT_TRUE(wait_idle(link, io)) << "an idle caller_io link must let an asynchronous caller do its own exchange";

  constexpr int senders = 2, rounds = 8, direct = 400;
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < senders; ++t) {
    threads.emplace_back([&, t] { dlock::test::send_pipelined_bursts(link, t, rounds, 20, mismatches, errors); });
  }
  // And a thread's own exchanges (begin_here) on the same link: the socket
  // leaves the I/O thread's reactor while idle and comes back for its sends.
  std::atomic<int> on_thread{0};
  threads.emplace_back([&] { dlock::test::echo_here_or_sent(link, "t-", 300, on_thread, mismatches, errors); });
  // One io_context thread: each request through send_here when the link is
  // idle, else through send(); the next one starts from the completion.
  int here = 0;
  std::atomic<int> next{0};
  std::function<void()> one = [&] {
    if (next == direct) return;
    const std::string mine = "d-" + std::to_string(next.fetch_add(1));
    auto check = [&, mine](RedisOutcome o) {
      if (o.error) {
        ++errors;
      } else if (o.replies.size() != 1 || o.replies[0].str != mine) {
        ++mismatches;
      }
    };
    RedisCall c = command({"ECHO", mine});
    RedisLink::Done done = [&, check](RedisOutcome o) {
      check(std::move(o));
      one();
    };
    if (link.send_here(c, io.get_executor(), done)) {
      ++here;
      return;
    }
    link.send(std::move(c), [&, check](RedisOutcome o) {
      check(std::move(o));
      asio::post(io, one);
    });
  };
  auto work = asio::make_work_guard(io);
  io.restart();
  asio::post(io, one);
  std::thread runner([&] { io.run(); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 5000 && next < direct; ++i) std::this_thread::sleep_for(1ms);  // bounded: 400 round trips
  work.reset();
  runner.join();
  EXPECT_EQ(next, direct);
  EXPECT_EQ(mismatches.load(), 0) << "a reply reached the wrong request";
  EXPECT_EQ(errors.load(), 0);
  EXPECT_FALSE(link.broken());
  EXPECT_GT(here, 0) << "the fast path was never taken: the test proves nothing";
  EXPECT_GT(on_thread.load(), 0) << "no thread's own exchange: the test proves less";
}

TEST_F(RedisLinkAsyncTest, ARequestWrittenByAnAsyncCallerThatGetsNoAnswerIsInDoubtAndNeverResent) {
  DLOCK_REQUIRE_OWN_REDIS();
  dlock::test::OwnServerLink own(300ms, prefix_);
  RedisLink& link = own.link;
  asio::io_context io;
  ASSERT_TRUE(wait_idle(link, io));
  const std::string counter = prefix_ + "counter";

  own.server.pause();  // SIGSTOP: the request reaches the kernel's buffer, no answer comes
  RedisCall incr = command({"INCR", counter}, "an increment of the test's counter");
  std::optional<RedisOutcome> out;
  ASSERT_TRUE(try_here(link, io, incr, out));
  EXPECT_FALSE(out) << "never completed inside the call";
  const auto t0 = std::chrono::steady_clock::now();
  io.restart();
  io.run();  // returns once the exchange completed: it was the context's only work
  const auto waited = std::chrono::steady_clock::now() - t0;
  own.server.resume();
  ASSERT_TRUE(out && out->error);
  const std::string m = error_of<dlock::TimeoutError>(*out);
  EXPECT_NE(m.find("the request was sent; its outcome is unknown"), std::string::npos) << m;
  EXPECT_NE(m.find("command_timeout 300ms"), std::string::npos) << m;
  EXPECT_NE(m.find("an increment of the test's counter"), std::string::npos) << m;
  EXPECT_GE(waited, 290ms);
  EXPECT_LT(waited, 3s);
  EXPECT_TRUE(link.broken()) << "a link with a request in doubt is never reused";
  RedisCall again = command({"INCR", counter});
  std::optional<RedisOutcome> never;
  EXPECT_FALSE(try_here(link, io, again, never));
  // The server ran the first increment once, after its pause; nothing was resent.
  EXPECT_EQ(dlock::test::take_value(own.options, counter), "1");
}

TEST_F(RedisLinkAsyncTest, AConnectionKilledDuringAnAsyncExchangeIsInDoubt) {
  RedisLink link = RedisLink::open(options(), caller_io);
  const auto id = link.exec(command({"CLIENT", "ID"})).at(0).integer;
  asio::io_context io;
  ASSERT_TRUE(wait_idle(link, io));
  RedisCall pop = command({"BLPOP", prefix_ + "never", "5"}, "a blocking pop");
  std::optional<RedisOutcome> out;
  ASSERT_TRUE(try_here(link, io, pop, out));
  std::thread killer([&] { dlock::test::kill_once_blocked_in_blpop(options(), id); });
  io.restart();
  io.run();
  killer.join();
  ASSERT_TRUE(out && out->error);
  const std::string m = error_of<dlock::ConnectionError>(*out);
  EXPECT_EQ(m.find("wrong type"), std::string::npos) << "a closed connection is not a timeout: " << m;
  EXPECT_NE(m.find("closed the connection during a blocking pop"), std::string::npos) << m;
  EXPECT_NE(m.find("its outcome is unknown"), std::string::npos) << m;
  EXPECT_TRUE(link.broken());
}

TEST_F(RedisLinkAsyncTest, ALinkTheServerClosedWhileIdleIsNotWrittenOn) {
  RedisLink link = RedisLink::open(options(), caller_io);
  const auto id = link.exec(command({"CLIENT", "ID"})).at(0).integer;
  asio::io_context io;
  ASSERT_TRUE(wait_idle(link, io));
  RedisLink other = RedisLink::open(options(), caller_io);
  ASSERT_EQ(other.exec(command({"CLIENT", "KILL", "ID", std::to_string(id)})).at(0).integer, 1);
  // Until the server's close reached the link's socket (looked at, not read).
  pollfd pfd{link.fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
  RedisCall incr = command({"INCR", prefix_ + "closed"});
  std::optional<RedisOutcome> out;
  EXPECT_FALSE(try_here(link, io, incr, out)) << "send_here looks before it writes";
  EXPECT_TRUE(link.broken());
  EXPECT_EQ(other.exec(command({"GET", prefix_ + "closed"})).at(0).type, dlock::detail::RedisValue::Type::nil)
      << "nothing was written on the closed link";
}

TEST_F(RedisLinkAsyncTest, AStoppedIoContextDoesNotStrandOtherRequestsOnItsLink) {
  DLOCK_REQUIRE_OWN_REDIS();
  PausedLink p(200ms);
  ASSERT_TRUE(p.idle);
  RedisServer& server = p.server;
  RedisLink& link = p.link;
  auto& io = p.io;
  RedisCall ping = command({"PING"}, "the stopped context's request");
  std::optional<RedisOutcome> mine;
  ASSERT_TRUE(try_here(link, *io, ping, mine));
  // Its io_context never runs again: another caller's request queued behind
  // it fails within command_timeout and the grace period, not never.
  RedisGather g(1);
  const auto t0 = std::chrono::steady_clock::now();
  link.send(command({"PING"}, "a request behind it"), g.slot(0));
  const RedisOutcome other = std::move(g.wait()[0]);
  const auto waited = std::chrono::steady_clock::now() - t0;
  server.resume();
  ASSERT_TRUE(other.error);
  const std::string m = error_of<dlock::ConnectionError>(other);
  EXPECT_NE(m.find("nothing was asked"), std::string::npos) << m;
  EXPECT_LT(waited, 5s);
  EXPECT_TRUE(link.broken());
  // Run late, the stopped context reports its own request in doubt.
  io->restart();
  io->run();
  ASSERT_TRUE(mine && mine->error);
  const std::string late = error_of<dlock::TimeoutError>(*mine);
  EXPECT_NE(late.find("did not answer within command_timeout 200ms"), std::string::npos) << late;
}

TEST_F(RedisLinkAsyncTest, AnIoContextDestroyedDuringItsExchangeDropsTheLink) {
  DLOCK_REQUIRE_OWN_REDIS();
  PausedLink p(5s);
  ASSERT_TRUE(p.idle);
  RedisServer& server = p.server;
  RedisLink& link = p.link;
  auto& io = p.io;
  RedisCall ping = command({"PING"});
  bool called = false;
  RedisLink::Done done = [&called](RedisOutcome) { called = true; };
  ASSERT_TRUE(link.send_here(ping, io->get_executor(), done));
  RedisGather g(1);
  link.send(command({"PING"}, "a request behind it"), g.slot(0));
  io.reset();                                         // the exchange's handlers are destroyed uncalled
  const RedisOutcome other = std::move(g.wait()[0]);  // at once, not after command_timeout
  server.resume();
  EXPECT_FALSE(called);
  ASSERT_TRUE(other.error);
  const std::string m = error_of<dlock::ConnectionError>(other);
  EXPECT_NE(m.find("nothing was asked"), std::string::npos) << m;
  EXPECT_TRUE(link.broken());
}

// The same for an asynchronous caller's exchange: a request queued behind it
// whose deadline passes fails alone; the exchange completes (no seizure
// before its own deadline and the grace period).
TEST_F(RedisLinkAsyncTest, AQueuedRequestsDeadlineDoesNotBreakAnAsyncExchange) {
  RedisOptions o = options();
  o.command_timeout = 5s;
  RedisLink link = RedisLink::open(o, caller_io);
  (void)link.exec(command({"PING"}));
  asio::io_context io;
  ASSERT_TRUE(wait_idle(link, io));
  RedisCall pop = command({"BLPOP", prefix_ + "empty", "0.3"}, "a blocking pop");  // nil after 300 ms
  std::optional<RedisOutcome> mine;
  ASSERT_TRUE(try_here(link, io, pop, mine));
  RedisGather g(1);
  RedisCall late = command({"INCR", prefix_ + "late"}, "a late increment");
  late.deadline = std::chrono::steady_clock::now() + 30ms;
  late.deadline_name = "the test's deadline 30ms";
  link.send(std::move(late), g.slot(0));
  const RedisOutcome behind = std::move(g.wait()[0]);
  io.restart();
  io.run();
  ASSERT_TRUE(mine.has_value());
  EXPECT_FALSE(mine->error) << "the asynchronous exchange was broken by another request's deadline";
  ASSERT_TRUE(behind.error);
  EXPECT_TRUE(behind.unsent);
  EXPECT_FALSE(link.broken());
}

}  // namespace
