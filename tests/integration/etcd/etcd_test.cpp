// EtcdBackend against real etcd clusters (support/etcd_server.hpp): option
// validation, fork safety, faults of the cluster (leader killed, quorum lost),
// a client paused past its TTL, authentication and TLS. The conformance suite
// (tests/conformance) covers the behaviour every backend shares.
#include <dlock/etcd.hpp>
#include <dlock/lock.hpp>

#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "support/etcd_server.hpp"
#include "support/lock_cycles.hpp"
#include "unit/fork_support.hpp"
#include "unit/test_support.hpp"

namespace dlock {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

struct Quiet : Observer {
  void on_event(const Event&) noexcept override {}
};
LockOptions quiet(LockOptions o) {
  o.observer = std::make_shared<Quiet>();
  return o;
}

template <class E>
std::string thrown_message(auto&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

// ---- options (no server) ----

TEST(EtcdOptions, InvalidFieldsAreNamed) {
  auto msg = [](EtcdOptions o) { return thrown_message<InvalidArgument>([&] { EtcdBackend b(std::move(o)); }); };
  EXPECT_NE(msg({.endpoints = {}}).find("EtcdOptions::endpoints is empty"), std::string::npos);
  EXPECT_NE(msg({.endpoints = {"127.0.0.1:2379"}}).find("EtcdOptions::endpoints = \"127.0.0.1:2379\""),
            std::string::npos);
  const std::string creds = msg({.endpoints = {"http://root:secret@127.0.0.1:2379"}});
  EXPECT_NE(creds.find("credentials belong in username/password"), std::string::npos) << creds;
  EXPECT_NE(msg({.endpoints = {"http://127.0.0.1:2379/v3"}}).find("a path"), std::string::npos);
  EXPECT_NE(msg({.endpoints = {"http://127.0.0.1:99999"}}).find("port"), std::string::npos);
  EXPECT_NE(msg({.key_prefix = ""}).find("EtcdOptions::key_prefix"), std::string::npos);
  EXPECT_NE(msg({.password = "pw"}).find("EtcdOptions::password is set without EtcdOptions::username"),
            std::string::npos);
  EXPECT_NE(msg({.dial_timeout = 0ms}).find("EtcdOptions::dial_timeout = 0 ms"), std::string::npos);
  EXPECT_NE(msg({.request_timeout = -1ms}).find("EtcdOptions::request_timeout"), std::string::npos);
  EXPECT_NE(msg({.tls = TlsOptions{.cert_file = "c.pem"}}).find("EtcdOptions::tls.cert_file"), std::string::npos);
  EXPECT_NO_THROW(EtcdBackend(EtcdOptions{.endpoints = {"http://[::1]:2379", "https://etcd.internal:2379/"}}));
}

TEST(EtcdOptions, NothingListeningIsAConnectionErrorNamingTheEndpoints) {
  test::BlackHole hole;  // accepts TCP but never answers: request_timeout
  const int closed = test::free_loopback_port();
  EtcdBackend b(EtcdOptions{.endpoints = {"http://127.0.0.1:" + std::to_string(closed)},
                            .password = {},
                            .dial_timeout = 200ms,
                            .request_timeout = 300ms});
  Lock<EtcdBackend> lock(b, "x", quiet({.ttl = 2s}));
  const std::string m = thrown_message<ConnectionError>([&] { (void)lock.try_lock(); });
  EXPECT_NE(m.find("127.0.0.1:" + std::to_string(closed)), std::string::npos) << m;
  EXPECT_NE(m.find("nothing was done"), std::string::npos) << m;

  EtcdBackend silent(EtcdOptions{.endpoints = {"http://127.0.0.1:" + std::to_string(hole.port())},
                                 .dial_timeout = 200ms,
                                 .request_timeout = 300ms});
  Lock<EtcdBackend> hung(silent, "x", quiet({.ttl = 2s}));
  const auto t0 = SteadyClock::now();
  const std::string t = thrown_message<TimeoutError>([&] { (void)hung.try_lock(); });
  EXPECT_NE(t.find("outcome is unknown"), std::string::npos) << t;
  EXPECT_LT(SteadyClock::now() - t0, 1500ms);
}

// ---- a cluster losing its leader, then its quorum ----

// Three threads, each with its own client, take one lock in turns and
// increment a counter only the lock protects; the leader member is SIGKILLed
// midway. Then a second member is killed: with one of three left there is no
// quorum, and an acquire fails cleanly and in time.
TEST(EtcdCluster, LeaderKilledMidRunThenQuorumLost) {
  test::EtcdCluster cluster;
  constexpr int threads = 3;
  constexpr int cycles = 60;
  constexpr int total = threads * cycles;
  std::atomic<long> counter{0};
  std::vector<std::atomic<std::uint64_t>> tokens(total + 1);
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      try {
        EtcdBackend b(cluster.options());
        Lock<EtcdBackend> lock(b, "leader-kill",
                               quiet({.ttl = 2s, .retry = {.initial_delay = 1ms, .max_delay = 20ms}}));
        for (int i = 0; i < cycles; ++i) {
          std::scoped_lock hold(lock);
          const long c = counter.load(std::memory_order_relaxed);
          if (c <= total) tokens[static_cast<std::size_t>(c)].store(lock.fencing_token());
          std::this_thread::yield();
          counter.store(c + 1, std::memory_order_relaxed);
        }
      } catch (const std::exception& e) {
        ++errors;
        ADD_FAILURE() << e.what();
      }
    });
  }
  ASSERT_TRUE(test::eventually([&] { return counter.load() >= total / 3; }, 20s));
  const int leader = cluster.leader();
  ASSERT_GE(leader, 0);
  const auto killed_at = SteadyClock::now();
  const long done_at_kill = counter.load();
  cluster.kill(leader);
  for (auto& w : workers) w.join();
  std::printf("leader m%d killed after %ld of %d cycles; the rest took %lld ms\n", leader, done_at_kill, total,
              static_cast<long long>(std::chrono::duration_cast<Ms>(SteadyClock::now() - killed_at).count()));
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(counter.load(), total) << "two holders at once";
  int out_of_order = 0;
  for (int i = 1; i < total; ++i)
    out_of_order += tokens[static_cast<std::size_t>(i)] <= tokens[static_cast<std::size_t>(i - 1)];
  EXPECT_EQ(out_of_order, 0) << "fencing tokens went backwards across the leader change";

  // Two of three members gone: no quorum. Right after the kill the last
  // member may still believe in its dead leader, and its request then hangs
  // until request_timeout (a TimeoutError); once its election timeout has
  // passed it knows it has none and says so at once (Grpc-Metadata-hasleader).
  const int second = (leader + 1) % 3;
  cluster.kill(second);
  EtcdBackend b(cluster.options());
  Lock<EtcdBackend> lock(b, "no-quorum", quiet({.ttl = 2s}));
  auto attempt = [&](const char* when) {
    const auto t0 = SteadyClock::now();
    std::string what = "(no error)";
    try {
      (void)lock.try_lock();
    } catch (const ConnectionError& e) {
      what = e.what();
    } catch (const TimeoutError& e) {
      what = e.what();
    }
    const auto took = SteadyClock::now() - t0;
    std::printf("no quorum, %s: %s after %lld ms\n", when, what.c_str(),
                static_cast<long long>(std::chrono::duration_cast<Ms>(took).count()));
    EXPECT_NE(what, "(no error)");
    EXPECT_FALSE(lock.owns_lock());
    return took;
  };
  const auto& o = b.options();
  EXPECT_LE(attempt("at once"), 3 * (o.dial_timeout + o.request_timeout) + 500ms);
  std::this_thread::sleep_for(1500ms);  // past the last member's election timeout (500 ms): the point of the test
  EXPECT_LT(attempt("after an election timeout"), 500ms)
      << "a member without a leader should say so at once (Grpc-Metadata-hasleader)";
  // Quorum back: nothing was granted during the outage.
  cluster.restart(second);
  EtcdBackend after(cluster.options());
  ASSERT_TRUE(test::eventually(
      [&] {
        try {
          return detail::parse_etcd_range(after.client().call("/v3/kv/range",
                                                              detail::etcd_range_request(after.key("no-quorum"), false),
                                                              "check"))
              .empty();
        } catch (const Error&) {
          return false;
        }
      },
      10s))
      << "the acquire during the outage left a key behind";
}

// ---- a member that stops answering (SIGSTOP): the call moves on ----

// The first endpoint is paused: a request sent to it is never answered, so
// after request_timeout the client tries the next member (the acquire may be
// repeated safely), and later calls start at the member that answered.
TEST(EtcdCluster, PausedMemberIsLeftAfterRequestTimeout) {
  test::EtcdCluster cluster;
  EtcdOptions o = cluster.options();
  o.request_timeout = 500ms;
  EtcdBackend b(o);
  Lock<EtcdBackend> warm(b, "paused-member", quiet({.ttl = 5s}));
  ASSERT_TRUE(warm.try_lock());  // connections to the first endpoint now exist
  warm.unlock();
  cluster.pause(0);
  Lock<EtcdBackend> lock(b, "paused-member", quiet({.ttl = 5s, .retry = {.initial_delay = 20ms, .max_delay = 200ms}}));
  const auto t0 = SteadyClock::now();
  const bool got = lock.try_lock_for(15s);
  const auto took = std::chrono::duration_cast<Ms>(SteadyClock::now() - t0);
  std::printf("acquired with the first member paused after %lld ms\n", static_cast<long long>(took.count()));
  ASSERT_TRUE(got) << "no failover away from a paused member";
  EXPECT_GE(took, o.request_timeout) << "the paused member answered?";
  const auto t1 = SteadyClock::now();
  EXPECT_EQ(lock.release(), ReleaseResult::released);
  EXPECT_LT(SteadyClock::now() - t1, o.request_timeout) << "the next call went to the paused member again";
  cluster.resume(0);
  EtcdBackend other(cluster.options());
  Lock<EtcdBackend> again(other, "paused-member", quiet({.ttl = 5s}));
  EXPECT_TRUE(again.try_lock_for(5s)) << "a lock was left behind";
}

// ---- a client paused past its TTL (waiting for the server's lease expiry is the point) ----

TEST(EtcdCluster, ClientPausedPastItsTtlLosesTheLeaseAndIsToldOnResume) {
  test::EtcdCluster cluster({.members = 1});
  struct Shared {
    std::atomic<pid_t> pid{0};
    std::atomic<std::uint64_t> token{0};
  };
  void* mem = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* shared = new (mem) Shared{};
  const auto options = cluster.options();
  EtcdBackend parent(options);
  std::uint64_t next_token = 0;
  const auto out = test::in_child_while(
      [&]() -> std::string {
        try {
          EtcdBackend b(options);
          Lock<EtcdBackend> lock(b, "paused", quiet({.ttl = 1s, .auto_extend = true}));
          if (!lock.try_lock()) return "child: not acquired";
          std::atomic<bool> stopped{false};
          std::stop_callback cb(lock.stop_token(), [&] { stopped = true; });
          shared->token = lock.fencing_token();
          shared->pid = ::getpid();
          std::raise(SIGSTOP);  // the whole process, heartbeat included, as in a long GC pause
          if (!test::eventually([&] { return stopped.load(); }, 5s)) return "child: stop_token never fired";
          return "told";
        } catch (const std::exception& e) {
          return std::string("child: ") + e.what();
        }
      },
      [&] {
        ASSERT_TRUE(test::eventually([&] { return shared->pid.load() != 0; }, 10s));
        // wait until the child is stopped, then for its lease to expire on the server
        Lock<EtcdBackend> next(parent, "paused",
                               quiet({.ttl = 5s, .retry = {.initial_delay = 20ms, .max_delay = 100ms}}));
        const bool got = next.try_lock_for(10s);
        if (got) next_token = next.fencing_token();
        ::kill(shared->pid.load(), SIGCONT);
        EXPECT_TRUE(got) << "the paused client's lease never expired";
        if (got) (void)next.release();
      },
      30s);
  ASSERT_TRUE(out.has_value()) << "the child failed";
  EXPECT_EQ(*out, "told");
  EXPECT_GT(next_token, shared->token.load()) << "the next holder's token is not higher";
  ::munmap(mem, sizeof(Shared));
}

// ---- fork ----

TEST(EtcdCluster, AChildUsesAnInheritedBackendWithItsOwnConnections) {
  test::EtcdCluster cluster({.members = 1});
  EtcdBackend b(cluster.options());
  ASSERT_EQ(test::lock_cycles(b, "parent", 8), "");  // idle pooled connections now exist
  const auto child = test::in_child([&] { return test::lock_cycles(b, "child", 16); });
  ASSERT_TRUE(child.has_value());
  EXPECT_EQ(*child, "");
  EXPECT_EQ(test::lock_cycles(b, "parent", 16), "") << "the child disturbed the parent's connections";
}

// ---- authentication ----

TEST(EtcdCluster, AuthWithTokenRefreshAndWrongPassword) {
  // Tokens live 1 s, so the second hold outlives the first token.
  test::EtcdCluster cluster({.members = 1, .extra_args = {"--auth-token-ttl=1"}});
  ASSERT_TRUE(cluster.etcdctl({"user", "add", "root:s3cret-pw"}));
  ASSERT_TRUE(cluster.etcdctl({"auth", "enable"}));

  EtcdOptions o = cluster.options();
  o.username = "root";
  o.password = "s3cret-pw";
  EtcdBackend ok(o);
  Lock<EtcdBackend> lock(ok, "auth", quiet({.ttl = 5s}));
  ASSERT_TRUE(lock.try_lock());
  std::this_thread::sleep_for(2500ms);  // the token expires (the server's token TTL is the point)
  EXPECT_EQ(lock.release(), ReleaseResult::released) << "the token was not refreshed";

  o.password = "wrong-pw";
  EtcdBackend wrong(o);
  Lock<EtcdBackend> denied(wrong, "auth", quiet({.ttl = 5s}));
  try {
    (void)denied.try_lock();
    ADD_FAILURE() << "a wrong password was accepted";
  } catch (const ServerError& e) {
    EXPECT_EQ(e.code(), errc::auth) << e.what();
    EXPECT_EQ(std::string(e.what()).find("wrong-pw"), std::string::npos) << "the password is in the message";
    EXPECT_NE(std::string(e.what()).find("root"), std::string::npos) << e.what();
  }

  EtcdOptions none = cluster.options();  // no credentials at all
  EtcdBackend anonymous(none);
  Lock<EtcdBackend> anon(anonymous, "auth", quiet({.ttl = 5s}));
  EXPECT_THROW((void)anon.try_lock(), ServerError);
}

// ---- TLS with a throw-away CA ----

TEST(EtcdCluster, TlsWithClientCertificates) {
  test::EtcdCluster cluster({.members = 1, .tls = true});
  EtcdBackend b(cluster.options());
  ASSERT_EQ(test::lock_cycles(b, "tls", 8), "");

  EtcdOptions untrusted = cluster.options();
  untrusted.tls = TlsOptions{};  // the system's CAs do not know the throw-away CA
  EtcdBackend u(untrusted);
  Lock<EtcdBackend> lock(u, "tls", quiet({.ttl = 2s}));
  const std::string m = thrown_message<ConnectionError>([&] { (void)lock.try_lock(); });
  EXPECT_NE(m.find("certificate verify failed"), std::string::npos) << m;

  EtcdOptions plain = cluster.options();
  plain.endpoints = {"http://127.0.0.1:" + std::to_string(cluster.client_port(0))};
  EtcdBackend p(plain);
  Lock<EtcdBackend> plain_lock(p, "tls", quiet({.ttl = 2s}));
  EXPECT_THROW((void)plain_lock.try_lock(), Error) << "plain HTTP to a TLS port";
}

}  // namespace
}  // namespace dlock
