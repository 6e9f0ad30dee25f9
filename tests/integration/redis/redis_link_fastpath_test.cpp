// The transport's fast path (detail/redis_transport.hpp, "The caller's own
// exchange") on a real server: a caller that writes and reads on its own
// thread never mixes its replies with requests pipelined by the I/O thread on
// the same link, a request it wrote that got no answer is in doubt (never
// resent), and a link the server closed while idle is dropped at checkout.
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "redis_link_test_support.hpp"
#include "redis_test_support.hpp"
#include "unit/fork_support.hpp"

using namespace std::chrono_literals;
using dlock::RedisOptions;
using dlock::detail::RedisCall;
using dlock::detail::RedisGather;
using dlock::detail::RedisLink;
using dlock::detail::RedisOutcome;
using dlock::test::caller_io;
using dlock::test::command;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

using RedisLinkFastPathTest = RedisTest;

// Waits (bounded) until `link` is idle: begin_here() takes it; a PING then.
bool wait_idle(RedisLink& link) {
  for (int i = 0; i < 2000; ++i) {
    RedisCall ping = command({"PING"});
    if (link.begin_here(ping)) {
      const RedisOutcome o = link.end_here();
      return !o.error && o.replies.size() == 1 && o.replies[0].str == "PONG";
    }
    std::this_thread::sleep_for(1ms);  // polling for the I/O thread to finish; no ordering depends on it
  }
  return false;
}

TEST_F(RedisLinkFastPathTest, CallersOwnExchangesNeverMixRepliesWithRequestsPipelinedOnTheSameLink) {
  RedisLink link = RedisLink::open(options(), caller_io);
  (void)link.exec(command({"PING"}));  // connected (through the I/O thread)
  ASSERT_TRUE(wait_idle(link)) << "an idle caller_io link must let the caller do its own exchange";

  constexpr int senders = 3, per_sender = 300, direct_rounds = 600;
  std::atomic<int> mismatches{0}, errors{0}, here{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < senders; ++t) {
    threads.emplace_back([&, t] {  // bursts of 30 pipelined requests
      dlock::test::send_pipelined_bursts(link, t, per_sender / 30, 30, mismatches, errors);
    });
  }
  threads.emplace_back([&] {  // the caller's own exchanges, whenever the link is idle
    dlock::test::echo_here_or_sent(link, "d-", direct_rounds, here, mismatches, errors);
  });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0) << "a reply reached the wrong request";
  EXPECT_EQ(errors.load(), 0);
  EXPECT_FALSE(link.broken());
  EXPECT_GT(here.load(), 0) << "the fast path was never taken: the test proves nothing";
}

// The I/O thread's context switches so far ("dlock-io" in /proc/self/task);
// -1 if it is not found.
long io_thread_switches() {
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (!std::getline(comm, name) || name != "dlock-io") continue;
    std::ifstream status(task.path() / "status");
    long total = 0;
    for (std::string line; std::getline(status, line);) {
      std::istringstream in(line);
      std::string key;
      long n = 0;
      if (in >> key >> n && (key == "voluntary_ctxt_switches:" || key == "nonvoluntary_ctxt_switches:")) total += n;
    }
    return total;
  }
  return -1;
}

// An idle link's socket is out of the I/O thread's reactor: the replies a
// caller reads itself do not wake that thread (before: once per request).
TEST_F(RedisLinkFastPathTest, TheIoThreadSleepsThroughTheCallersOwnExchanges) {
  RedisLink link = RedisLink::open(options(), caller_io);
  (void)link.exec(command({"PING"}));  // connected (through the I/O thread)
  ASSERT_TRUE(wait_idle(link));
  const long before = io_thread_switches();
  ASSERT_GE(before, 0) << "no thread named dlock-io";
  constexpr int exchanges = 300;
  for (int i = 0; i < exchanges; ++i) {
    RedisCall c = command({"PING"});
    ASSERT_TRUE(link.begin_here(c)) << "the idle link was not the caller's at exchange " << i;
    const RedisOutcome o = link.end_here();
    ASSERT_FALSE(o.error);
  }
  const long woken = io_thread_switches() - before;
  EXPECT_LT(woken, exchanges / 10) << "the I/O thread woke for replies it does not read";
  // The link still works through the I/O thread afterwards (back in its reactor).
  RedisGather g(1);
  link.send(command({"PING"}), g.slot(0));
  const RedisOutcome o = std::move(g.wait()[0]);
  ASSERT_FALSE(o.error);
  EXPECT_EQ(o.replies.at(0).str, "PONG");
  EXPECT_TRUE(wait_idle(link)) << "idle again, and the caller's again";
}

TEST_F(RedisLinkFastPathTest, ARequestWrittenByTheCallerThatGetsNoAnswerIsInDoubtAndNeverResent) {
  DLOCK_REQUIRE_OWN_REDIS();
  dlock::test::OwnServerLink own(300ms, prefix_);
  RedisLink& link = own.link;
  ASSERT_TRUE(wait_idle(link));
  const std::string counter = prefix_ + "counter";

  own.server.pause();  // SIGSTOP: the request reaches the kernel's buffer, no answer comes
  RedisCall incr = command({"INCR", counter}, "an increment of the test's counter");
  ASSERT_TRUE(link.begin_here(incr));
  const auto t0 = std::chrono::steady_clock::now();
  const RedisOutcome out = link.end_here();
  const auto waited = std::chrono::steady_clock::now() - t0;
  own.server.resume();
  ASSERT_TRUE(out.error);
  try {
    std::rethrow_exception(out.error);
  } catch (const dlock::TimeoutError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("the request was sent; its outcome is unknown"), std::string::npos) << m;
    EXPECT_NE(m.find("command_timeout 300ms"), std::string::npos) << m;
    EXPECT_NE(m.find("an increment of the test's counter"), std::string::npos) << m;
  } catch (const std::exception& e) {
    FAIL() << "not a TimeoutError: " << e.what();
  }
  EXPECT_GE(waited, 290ms);
  EXPECT_LT(waited, 3s);
  EXPECT_TRUE(link.broken()) << "a link with a request in doubt is never reused";
  RedisCall again = command({"INCR", counter});
  EXPECT_FALSE(link.begin_here(again));
  RedisGather g(1);
  link.send(std::move(again), g.slot(0));
  const RedisOutcome later = std::move(g.wait()[0]);
  ASSERT_TRUE(later.error);
  try {
    std::rethrow_exception(later.error);
  } catch (const dlock::ConnectionError& e) {
    EXPECT_NE(std::string(e.what()).find("nothing was asked"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    FAIL() << "not a ConnectionError: " << e.what();
  }
  // The server ran the first increment once, after its pause; nothing was resent.
  EXPECT_EQ(dlock::test::take_value(own.options, counter), "1");
}

TEST_F(RedisLinkFastPathTest, AConnectionClosedDuringTheCallersExchangeIsInDoubt) {
  RedisLink link = RedisLink::open(options(), caller_io);
  const auto id = link.exec(command({"CLIENT", "ID"})).at(0).integer;
  ASSERT_TRUE(wait_idle(link));
  RedisCall pop = command({"BLPOP", prefix_ + "never", "5"}, "a blocking pop");
  ASSERT_TRUE(link.begin_here(pop));
  std::thread killer([&] { dlock::test::kill_once_blocked_in_blpop(options(), id); });
  const RedisOutcome out = link.end_here();
  killer.join();
  ASSERT_TRUE(out.error);
  try {
    std::rethrow_exception(out.error);
  } catch (const dlock::TimeoutError& e) {
    FAIL() << "a closed connection is not a timeout: " << e.what();
  } catch (const dlock::ConnectionError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("closed the connection during a blocking pop"), std::string::npos) << m;
    EXPECT_NE(m.find("its outcome is unknown"), std::string::npos) << m;
  }
  EXPECT_TRUE(link.broken());
}

TEST_F(RedisLinkFastPathTest, ALinkTheServerClosedWhileIdleIsDroppedAtCheckoutNotWrittenOn) {
  dlock::Lock<dlock::RedisBackend> lock(redis(), "idle-closed", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());
  lock.unlock();  // its pooled link is idle now
  RedisLink other = RedisLink::open(options(), caller_io);
  const auto killed = other.exec(command({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"})).at(0).integer;
  ASSERT_GE(killed, 1);
  for (int i = 0; i < 20; ++i) {  // no in-doubt error: each checkout finds the closed link and opens a new one
    ASSERT_NO_THROW({
      ASSERT_TRUE(lock.try_lock());
      lock.unlock();
    });
  }
}

// The pool keeps a link that a call left healthy. Before: the link was
// moved into give_back() by one argument while another asked it whether it
// was broken; compilers that evaluate arguments left to right (clang) asked a
// moved-from link, gave every link back as broken and opened a connection per
// call (80 here, where one is right).
TEST_F(RedisLinkFastPathTest, ALinkACallLeftHealthyIsReusedByTheNextCall) {
  const auto connections_received = [&] {
    RedisLink other = RedisLink::open(options(), caller_io);
    const std::string info = other.exec(command({"INFO", "stats"})).at(0).str;
    const auto at = info.find("total_connections_received:");
    return at == std::string::npos ? -1LL : std::stoll(info.substr(at + 27));
  };
  dlock::Lock<dlock::RedisBackend> lock(redis(), "reused", {.ttl = 10s});
  ASSERT_TRUE(lock.try_lock());  // the pool's first link
  lock.unlock();
  const long long before = connections_received();
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(lock.try_lock());  // a script round (fan_out)
    lock.unlock();
    (void)cmd({"PING"});  // a plain command (a checkout given back by its destructor)
  }
  EXPECT_EQ(connections_received() - before, 1)
      << "connections opened by 80 calls (the one counted is the probe's own)";
  EXPECT_EQ(redis().node().open_connections(), 1u);
}

// ---- idle links out of the I/O thread's reactor (quiet_fd) ----

// The process's open descriptors.
int open_descriptors() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n - 1;  // the iterator's own
}

// Waits (bounded) until the process has `want` open descriptors or fewer:
// links are closed on the I/O thread, after their owner dropped them.
int settle_descriptors(int want) {
  int n = open_descriptors();
  for (int i = 0; i < 2000 && n > want; ++i) {
    std::this_thread::sleep_for(1ms);  // polling for the I/O thread's closes; no ordering depends on it
    n = open_descriptors();
  }
  return n;
}

// Waits (bounded) until the server's close reached `link`'s socket (looked at, not read).
bool closed_by_server(const RedisLink& link) {
  pollfd pfd{link.fd(), POLLIN, 0};
  return ::poll(&pfd, 1, 5000) == 1;
}

// A link dropped while out of the reactor closes its descriptor, whether
// dropped idle, after the server closed it (found at checkout or by the I/O
// thread before a write), or after the I/O thread took it back for a send.
TEST_F(RedisLinkFastPathTest, LinksDroppedOutOfTheReactorLeaveNoDescriptorBehind) {
  RedisLink killer = RedisLink::open(options(), caller_io);
  (void)killer.exec(command({"PING"}));
  ASSERT_TRUE(wait_idle(killer));
  const int before = open_descriptors();
  constexpr int cycles = 40;
  for (int i = 0; i < cycles; ++i) {
    RedisLink link = RedisLink::open(options(), caller_io);
    const auto id = link.exec(command({"CLIENT", "ID"})).at(0).integer;
    ASSERT_TRUE(wait_idle(link)) << "cycle " << i;
    if (i % 4 == 1) {  // back in the reactor for one send, then idle again
      RedisGather g(1);
      link.send(command({"PING"}), g.slot(0));
      ASSERT_FALSE(g.wait()[0].error);
      ASSERT_TRUE(wait_idle(link));
    } else if (i % 4 >= 2) {  // closed by the server while idle
      ASSERT_EQ(killer.exec(command({"CLIENT", "KILL", "ID", std::to_string(id)})).at(0).integer, 1);
      ASSERT_TRUE(closed_by_server(link));
      if (i % 4 == 2) {
        EXPECT_FALSE(link.check_idle());
      } else {
        RedisGather g(1);
        link.send(command({"PING"}), g.slot(0));
        const RedisOutcome o = std::move(g.wait()[0]);
        ASSERT_TRUE(o.error);
        EXPECT_TRUE(o.unsent);
      }
    }
  }
  EXPECT_EQ(settle_descriptors(before), before) << "descriptors leaked by " << cycles << " links";
}

// An idle link the server closed, given a request through the I/O thread
// (not the caller's way): found closed before anything is written.
TEST_F(RedisLinkFastPathTest, AnIdleLinkTheServerClosedIsNotWrittenOnByTheIoThread) {
  RedisLink link = RedisLink::open(options(), caller_io);
  const auto id = link.exec(command({"CLIENT", "ID"})).at(0).integer;
  ASSERT_TRUE(wait_idle(link));
  RedisLink other = RedisLink::open(options(), caller_io);
  ASSERT_EQ(other.exec(command({"CLIENT", "KILL", "ID", std::to_string(id)})).at(0).integer, 1);
  ASSERT_TRUE(closed_by_server(link));
  RedisGather g(1);
  link.send(command({"INCR", prefix_ + "closed"}), g.slot(0));
  const RedisOutcome o = std::move(g.wait()[0]);
  ASSERT_TRUE(o.error);
  EXPECT_TRUE(o.unsent) << "nothing was asked of the server";
  EXPECT_TRUE(link.broken());
  EXPECT_EQ(other.exec(command({"GET", prefix_ + "closed"})).at(0).type, dlock::detail::RedisValue::Type::nil);
}

// Over a Unix socket the idle link leaves the reactor too, and comes back
// for the I/O thread's requests, the caller's and the I/O thread's mixed.
TEST_F(RedisLinkFastPathTest, UnixSocketLinksLeaveTheReactorAndComeBack) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisOptions o = options();
  o.unix_socket = SharedRedis::instance()->server()->unix_socket();
  RedisLink link = RedisLink::open(o, caller_io);
  (void)link.exec(command({"PING"}));
  ASSERT_TRUE(wait_idle(link));
  const long before = io_thread_switches();
  for (int i = 0; i < 100; ++i) ASSERT_EQ(link.exec(command({"ECHO", std::to_string(i)})).at(0).str, std::to_string(i));
  EXPECT_LT(io_thread_switches() - before, 10) << "the I/O thread woke for replies it does not read";
  std::atomic<int> mismatches{0}, errors{0};
  std::thread sender([&] { dlock::test::send_pipelined_bursts(link, 0, 10, 20, mismatches, errors); });
  std::atomic<int> here{0};
  dlock::test::echo_here_or_sent(link, "u", 200, here, mismatches, errors);
  sender.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_TRUE(wait_idle(link));
}

// fork(): a child that drops an inherited idle link (out of the reactor)
// closes its copy of the descriptor; the parent's link keeps working both ways.
TEST_F(RedisLinkFastPathTest, AChildDroppingAnInheritedIdleLinkClosesItsCopyOnly) {
  RedisLink link = RedisLink::open(options(), caller_io);
  (void)link.exec(command({"PING"}));
  ASSERT_TRUE(wait_idle(link));
  const int fd = link.fd();
  ASSERT_GE(fd, 0);
  const auto child = dlock::test::in_child([&]() -> std::string {
    if (!link.inherited()) return "not inherited";
    if (::fcntl(fd, F_GETFD) < 0) return "no descriptor inherited";
    { RedisLink dropped = std::move(link); }
    return ::fcntl(fd, F_GETFD) < 0 ? "ok" : "the inherited descriptor is still open";
  });
  ASSERT_TRUE(child.has_value());
  EXPECT_EQ(*child, "ok");
  EXPECT_EQ(link.exec(command({"ECHO", "mine"})).at(0).str, "mine");  // the caller's way
  RedisGather g(1);
  link.send(command({"ECHO", "io"}), g.slot(0));  // the I/O thread's
  const RedisOutcome out = std::move(g.wait()[0]);
  ASSERT_FALSE(out.error);
  EXPECT_EQ(out.replies.at(0).str, "io");
  EXPECT_FALSE(link.broken());
}

// fork(): the I/O thread is parked between handlers at the instant of a
// fork, so a child never inherits a lock it held mid-handler (the allocator's
// under AddressSanitizer, OpenSSL's, a pool's). Here a handler is 200 ms into
// its run when another thread forks: the child's copy of memory shows the
// handler finished. Before: the child saw it mid-run (and a CI run's child of
// the conformance suite's TLS fork test hung until its alarm in the clang
// ASan build, most likely so).
TEST_F(RedisLinkFastPathTest, AForkWaitsForTheIoThreadToFinishTheHandlerItRuns) {
  std::atomic<bool> entered{false}, inside{false};
  dlock::detail::redis_io_after(0ms, [&] {
    inside = true;
    entered = true;
    std::this_thread::sleep_for(200ms);  // a long handler: the fork comes in the middle of it
    inside = false;
  });
  while (!entered) std::this_thread::yield();
  const auto child = dlock::test::in_child([&]() -> std::string { return inside ? "mid-handler" : "ok"; });
  ASSERT_TRUE(child.has_value());
  EXPECT_EQ(*child, "ok");
  // The I/O thread was released after the fork: it serves requests again.
  RedisLink link = RedisLink::open(options());
  EXPECT_EQ(link.exec(command({"ECHO", "after"})).at(0).str, "after");
}

// The message of `o`'s error ("" if none).
std::string message_of(const RedisOutcome& o) {
  try {
    if (o.error) std::rethrow_exception(o.error);
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// A request queued behind the caller's exchange whose own deadline passes
// fails alone (never written): the I/O thread never fails the link, nor
// shuts or closes its socket, under the caller reading on it.
TEST_F(RedisLinkFastPathTest, AQueuedRequestsDeadlineNeverClosesTheSocketUnderTheCallersExchange) {
  RedisOptions o = options();
  o.command_timeout = 5s;
  RedisLink link = RedisLink::open(o, caller_io);
  (void)link.exec(command({"PING"}));
  ASSERT_TRUE(wait_idle(link));
  RedisCall pop = command({"BLPOP", prefix_ + "empty", "0.3"}, "a blocking pop");  // nil after 300 ms
  ASSERT_TRUE(link.begin_here(pop));
  RedisGather g(1);
  RedisCall late = command({"INCR", prefix_ + "late"}, "a late increment");
  late.deadline = std::chrono::steady_clock::now() + 30ms;
  late.deadline_name = "the test's deadline 30ms";
  link.send(std::move(late), g.slot(0));  // queued: the caller has the link
  const RedisOutcome behind = std::move(g.wait()[0]);
  const RedisOutcome mine = link.end_here();
  EXPECT_FALSE(mine.error) << "the caller's exchange was broken by another request's deadline: " << message_of(mine);
  ASSERT_TRUE(behind.error);
  EXPECT_TRUE(behind.unsent) << "nothing was asked of the server for it: " << message_of(behind);
  try {
    std::rethrow_exception(behind.error);
  } catch (const dlock::ConnectionError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("the test's deadline 30ms"), std::string::npos) << m;
    EXPECT_NE(m.find("a late increment"), std::string::npos) << m;
    EXPECT_NE(m.find("nothing was asked"), std::string::npos) << m;
  } catch (const std::exception& e) {
    FAIL() << "not a ConnectionError: " << e.what();
  }
  EXPECT_FALSE(link.broken());
  EXPECT_TRUE(wait_idle(link));
  EXPECT_EQ(link.exec(command({"GET", prefix_ + "late"})).at(0).type, dlock::detail::RedisValue::Type::nil);
}

}  // namespace
