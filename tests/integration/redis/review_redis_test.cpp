// Review findings on this session's Redis changes, as tests (each failed on
// the code before its fix, as its comment says; fixed on branch `fixes`).
//  - The trimmed acquire script (SET NX PX first) under maxmemory: a contended
//    acquire now answers OOM instead of "held" (the first write is denied before
//    the holder is looked at), so try_lock() throws and a blocking acquire ends
//    instead of waiting; an in-doubt retry of the holder is refused the same way.
//  - RedisAdmin::force_release without an owner: when the holder changes between
//    its read and its owner-checked release, the retry releases the NEW holder,
//    although the header says it never deletes a lock that changed hands.
#include <dlock/redis_admin.hpp>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "support/redis_server.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::RedisBackend;
using dlock::test::RedisServer;

std::shared_ptr<dlock::Observer> quiet() { return std::make_shared<dlock::test::QuietObserver>(); }

// ---- acquire script under maxmemory (noeviction) ----

// Before the trim (c9c8afa) the script looked at the holder first and wrote
// nothing on contention, so a full server still answered "held"; now SET NX
// PX is its first call, a write, and Redis refuses a script's first write when
// the server is over maxmemory. Found by review; fails on e142b9b.
TEST(ReviewRedisScript, AContendedAcquireOnAFullServerIsContentionNotAnError) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisBackend redis(server.options());
  Lock<RedisBackend> holder(redis, "full", {.ttl = 30s, .observer = quiet()});
  ASSERT_TRUE(holder.try_lock());
  ASSERT_EQ(redis.node().command({"CONFIG", "SET", "maxmemory", "1"}).str, "OK");
  Lock<RedisBackend> other(redis, "full", {.ttl = 30s, .observer = quiet()});
  bool got = true;
  EXPECT_NO_THROW(got = other.try_lock()) << "a held lock on a full server must read as held";
  EXPECT_FALSE(got);
  // The holder can still release (the release script's first write is DEL, not denied).
  EXPECT_EQ(holder.release(), dlock::ReleaseResult::released);
  ASSERT_EQ(redis.node().command({"CONFIG", "SET", "maxmemory", "0"}).str, "OK");
}

// The holder's in-doubt retry (its grant ran, its reply was lost) on a full
// server: SET NX PX is refused (OOM) before the script sees the key holds this
// owner, so the retry used to fail where the untrimmed script re-granted it.
// A free lock on a full server is still an error (nothing can be written).
TEST(ReviewRedisScript, AnInDoubtRetryOnAFullServerIsStillGranted) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisBackend redis(server.options());
  const dlock::OwnerId owner = dlock::OwnerId::generate();
  const auto request = [&](std::string_view name, const dlock::OwnerId& who) {
    return dlock::AcquireRequest{name, who, 30s, std::chrono::steady_clock::now()};
  };
  const auto first = redis.try_acquire(request("doubt", owner));
  const auto* g1 = std::get_if<dlock::Grant<dlock::NoHandle>>(&first);
  ASSERT_NE(g1, nullptr);
  const auto key = redis.node().keys("doubt").lock;
  ASSERT_EQ(redis.node().command({"PEXPIRE", key, "3000"}).integer, 1);  // as if time passed
  ASSERT_EQ(redis.node().command({"CONFIG", "SET", "maxmemory", "1"}).str, "OK");
  dlock::AcquireResult<dlock::NoHandle> retry = dlock::Contended{};
  EXPECT_NO_THROW(retry = redis.try_acquire(request("doubt", owner))) << "the in-doubt retry was refused";
  const auto* g2 = std::get_if<dlock::Grant<dlock::NoHandle>>(&retry);
  ASSERT_NE(g2, nullptr) << "the in-doubt retry on a full server was not granted";
  EXPECT_EQ(g2->token, g1->token);
  EXPECT_GT(redis.node().command({"PTTL", key}).integer, 20000);  // the TTL is reset
  EXPECT_THROW((void)redis.try_acquire(request("free", owner)), dlock::ServerError);
  ASSERT_EQ(redis.node().command({"CONFIG", "SET", "maxmemory", "0"}).str, "OK");
}

// Checked and sound (passes): the script's effects reach a replica as on the
// primary: a grant (SET NX PX, then the counter) arrives whole, and a grant
// undone by an error (a counter that is not an integer: INCR fails after the
// lock was set, the script DELs it) leaves no lock on the replica either.
TEST(ReviewRedisScript, AGrantAndAnUndoneGrantReachAReplicaAsOnThePrimary) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer primary;
  RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
  RedisBackend on_primary(primary.options());
  RedisBackend on_replica(replica.options());
  auto& p = on_primary.node();
  const auto synced = [&] { return p.command({"WAIT", "1", "200"}).integer == 1; };
  ASSERT_TRUE(dlock::test::eventually(synced, 10s)) << "the replica never caught up";

  Lock<RedisBackend> l(on_primary, "r", {.ttl = 30s, .observer = quiet()});
  ASSERT_TRUE(l.try_lock());
  ASSERT_TRUE(synced());
  const auto k = p.keys("r");
  EXPECT_EQ(on_replica.node().command({"GET", k.lock}).str, l.owner_id());
  EXPECT_EQ(on_replica.node().command({"GET", k.fence}).str, std::to_string(l.fencing_token()));
  EXPECT_GT(on_replica.node().command({"PTTL", k.lock}).integer, 0);

  const auto u = p.keys("u");
  ASSERT_EQ(p.command({"SET", u.fence, "9e18"}).str, "OK");  // above the floor, so INCR: not an integer
  Lock<RedisBackend> m(on_primary, "u", {.ttl = 30s, .observer = quiet()});
  EXPECT_THROW((void)m.try_lock(), dlock::ServerError);
  ASSERT_TRUE(synced());
  EXPECT_EQ(p.command({"EXISTS", u.lock}).integer, 0);
  EXPECT_EQ(on_replica.node().command({"EXISTS", u.lock}).integer, 0);
  EXPECT_EQ(on_replica.node().command({"GET", u.fence}).str, "9e18");
}

// ---- force_release and a change of hands between its read and its release ----

// A loopback TCP proxy that runs `hook` once, before forwarding the first
// chunk a client sends that contains `marker`.
class HookProxy {
 public:
  HookProxy(int target_port, std::string marker, std::function<void()> hook)
      : target_(target_port), marker_(std::move(marker)), hook_(std::move(hook)) {
    listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = addr(0);
    socklen_t len = sizeof a;
    if (listen_ < 0 || ::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_, 16) != 0 ||
        ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      throw std::runtime_error("HookProxy: cannot listen");
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  HookProxy(const HookProxy&) = delete;
  HookProxy& operator=(const HookProxy&) = delete;
  ~HookProxy() {
    stop_ = true;
    ::shutdown(listen_, SHUT_RDWR);
    acceptor_.join();
    {
      std::lock_guard lk(mu_);
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : pumps_) t.join();
    for (int fd : fds_) ::close(fd);
    ::close(listen_);
  }
  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] bool fired() const noexcept { return fired_; }

 private:
  static sockaddr_in addr(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
  }
  void accept_loop() {
    while (!stop_) {
      const int c = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      const sockaddr_in a = addr(target_);
      if (s < 0 || ::connect(s, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
        ::close(c);
        if (s >= 0) ::close(s);
        continue;
      }
      std::lock_guard lk(mu_);
      fds_.push_back(c);
      fds_.push_back(s);
      pumps_.emplace_back([this, c, s] { pump(c, s); });
    }
  }
  void pump(int c, int s) {
    char buf[64 * 1024];
    for (;;) {
      pollfd p[2] = {{c, POLLIN, 0}, {s, POLLIN, 0}};
      if (::poll(p, 2, 200) < 0) return;
      if (stop_) return;
      for (int i = 0; i < 2; ++i) {
        if (p[i].revents == 0) continue;
        const ssize_t n = ::recv(p[i].fd, buf, sizeof buf, 0);
        if (n <= 0) {
          ::shutdown(c, SHUT_RDWR);
          ::shutdown(s, SHUT_RDWR);
          return;
        }
        if (i == 0 && !fired_ &&
            std::string_view(buf, static_cast<std::size_t>(n)).find(marker_) != std::string_view::npos) {
          fired_ = true;
          hook_();
        }
        const int to = i == 0 ? s : c;
        for (ssize_t off = 0; off < n;) {
          const ssize_t w = ::send(to, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
          if (w <= 0) return;
          off += w;
        }
      }
    }
  }

  int target_;
  std::string marker_;
  std::function<void()> hook_;
  int listen_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> fired_{false};
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> pumps_;
  std::thread acceptor_;
};

// The stuck holder A is read; before the release script for A reaches the
// server, A lets go and a healthy B acquires. The owner-checked release of A
// deletes nothing (right), but force_release then reads again and releases B,
// a holder that appeared after the call began and that the operator never saw:
// B keeps working while the next acquirer gets in. Fails on 93f4b7f:
// force_release returns {owner "owner-B"} and the key is gone.
TEST(ReviewRedisAdmin, AForceReleaseDoesNotReleaseAHolderThatCameAfterItsRead) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  RedisBackend direct(server.options());
  const std::string key = direct.node().keys("job").lock;
  ASSERT_EQ(direct.node().command({"SET", key, "owner-A", "PX", "60000"}).str, "OK");
  // The release is the first EVALSHA the admin sends (its reads are MULTI/EXEC).
  HookProxy proxy(server.port(), "EVALSHA", [&] {
    (void)direct.node().command({"DEL", key});                                  // A releases
    (void)direct.node().command({"SET", key, "owner-B", "NX", "PX", "60000"});  // B acquires
  });
  dlock::RedisOptions o = server.options();
  o.port = proxy.port();
  dlock::RedisAdmin admin(o);
  const auto removed = admin.force_release("job");
  ASSERT_TRUE(proxy.fired()) << "the hook did not run: the test no longer interleaves";
  EXPECT_FALSE(removed.has_value() && removed->owner == "owner-B")
      << "force_release released owner-B, which acquired after the holder it read (owner-A)";
  EXPECT_EQ(direct.node().command({"GET", key}).str, "owner-B");
}

// A write queued in MULTI on a replica answers READONLY: the admin's link must
// be dropped as the client drops one (the server is not the primary; with
// Sentinel the next link goes to the new one), not given back to the pool.
TEST(ReviewRedisAdmin, AReadOnlyReplyInsideMultiDropsTheConnection) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer primary;
  RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
  RedisBackend inspect(replica.options());
  const auto clients = [&] {
    const std::string info = inspect.node().command({"INFO", "clients"}).str;
    const auto at = info.find("connected_clients:");
    return at == std::string::npos ? -1 : std::stoi(info.substr(at + 18));
  };
  ASSERT_EQ(inspect.node().command({"PING"}).str, "PONG");
  const int before = clients();
  dlock::RedisAdmin admin(replica.options());
  (void)admin.inspect("sem");  // a pooled link (reads are fine on a replica)
  ASSERT_EQ(clients(), before + 1);
  EXPECT_ANY_THROW((void)admin.set_permit_count("sem", 3));  // SET inside MULTI: READONLY
  EXPECT_TRUE(dlock::test::eventually([&] { return clients() == before; }, 5s))
      << "the link that got READONLY went back to the pool (" << clients() << " clients, " << before << " before)";
}

}  // namespace
