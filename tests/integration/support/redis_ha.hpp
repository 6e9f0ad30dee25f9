// Test support: Redis deployments of several servers on loopback (issue 14).
//
//   - RespConn: a blocking loopback TCP connection that sends protocol-layer
//     Requests and reads Replies with the protocol layer's ReplyParser, so
//     tests parse real servers' answers exactly as a transport would;
//   - SentinelProcess: `redis-server <generated sentinel.conf> --sentinel`;
//   - SentinelSetup: one primary, two replicas (RedisServer from
//     redis_server.hpp) and three sentinels with down-after-milliseconds 500
//     and failover-timeout 2000;
//   - ClusterSetup: six `--cluster-enabled yes` servers joined by
//     `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`
//     (3 primaries, 3 replicas), cluster-node-timeout 1000;
//   - FencedResource and LockTraffic: threads locking through a backend
//     while a test fails its servers over, every fencing token checked.
// Every child gets PR_SET_PDEATHSIG (via RedisServer or below), so a crashed
// test leaves no server behind. Start-up takes about a second (sentinel) and
// two (cluster).
#pragma once

#include "redis_server.hpp"

#include <dlock/detail/redis_cluster.hpp>
#include <dlock/detail/redis_protocol.hpp>
#include <dlock/dlock.hpp>
#include <dlock/redis.hpp>

#include <netinet/tcp.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

namespace dlock::test {

using detail::redis_proto::Reply;
using detail::redis_proto::Request;

/// Polls `done` every 20 ms until it returns true or `timeout` passes
/// (waiting for a real server's state change, never a fixed sleep).
inline bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

/// One blocking connection to 127.0.0.1:port speaking through the protocol layer.
class RespConn {
 public:
  explicit RespConn(int port, std::chrono::milliseconds timeout = std::chrono::milliseconds(2000))
      : port_(port), timeout_(timeout) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      if (fd_ >= 0) ::close(fd_);
      throw std::runtime_error("RespConn: cannot connect to 127.0.0.1:" + std::to_string(port));
    }
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  RespConn(const RespConn&) = delete;
  RespConn& operator=(const RespConn&) = delete;
  ~RespConn() { ::close(fd_); }

  [[nodiscard]] int port() const noexcept { return port_; }

  void send(const Request& r) {
    std::string_view p = r.payload();
    while (!p.empty()) {
      const ssize_t n = ::send(fd_, p.data(), p.size(), MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("RespConn: send failed on port " + std::to_string(port_));
      p.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  /// The next reply; nullopt when `timeout` passed first (pub/sub waits).
  std::optional<Reply> read(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto r = parser_.next()) return r;
      if (parser_.error()) throw std::runtime_error("RespConn: protocol error: " + parser_.error()->message);
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[16384];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) throw std::runtime_error("RespConn: connection closed by port " + std::to_string(port_));
      parser_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    }
  }
  /// Sends `r` and reads its replies (one per command).
  std::vector<Reply> call(const Request& r) {
    send(r);
    std::vector<Reply> out;
    for (std::size_t i = 0; i < r.commands(); ++i) {
      auto reply = read(timeout_);
      if (!reply) throw std::runtime_error("RespConn: no reply within the timeout from port " + std::to_string(port_));
      out.push_back(std::move(*reply));
    }
    return out;
  }
  Reply command(std::initializer_list<std::string_view> args) {
    Request r;
    r.push(args);
    return std::move(call(r).front());
  }

 private:
  int port_;
  std::chrono::milliseconds timeout_;
  int fd_ = -1;
  detail::redis_proto::ReplyParser parser_;
};

/// The acquire script as RedisBackend sends it (as EVAL: no SHA1s loaded
/// here), ttl 10 s.
inline Request acquire_request(const detail::RedisKeys& keys, std::string_view owner) {
  Request r;
  (void)detail::redis_proto::push_script_call(
      r, detail::redis_proto::acquire_call(keys, owner, std::chrono::seconds(10), std::chrono::seconds(10)),
      detail::redis_proto::ScriptShas{}, detail::redis_proto::ScriptForm::eval);
  return r;
}

/// One-shot command on a fresh connection; an empty reply if the server is unreachable.
inline Reply redis_command(int port, std::initializer_list<std::string_view> args) {
  try {
    RespConn c(port);
    return c.command(args);
  } catch (const std::runtime_error&) {
    return Reply{};
  }
}

/// A "name:value" line of an INFO or CLUSTER INFO text ("" if absent).
inline std::string info_line(std::string_view text, std::string_view name) {
  const std::string key = std::string(name) + ":";
  for (std::size_t at = text.find(key); at != std::string_view::npos; at = text.find(key, at + 1)) {
    if (at != 0 && text[at - 1] != '\n') continue;
    const auto end = text.find_first_of("\r\n", at);
    return std::string(text.substr(at + key.size(), end - at - key.size()));
  }
  return {};
}
inline std::string info_field(int port, std::string_view section, std::string_view name) {
  return info_line(redis_command(port, {"INFO", section}).str, name);
}

/// The rule a fencing counter had before issue 11: seeded from the server
/// clock only when the key is missing, then INCR. A stale counter (a promoted
/// replica that lagged) is not lifted: the failover-fencing tests run it next
/// to the real acquire to show their check fails against it.
constexpr std::string_view seeded_when_missing = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
return redis.call('INCR', KEYS[1])
)lua";

/// The next token of the seeded-when-missing counter "old:{f}:fence" on `c`'s server.
inline std::uint64_t old_rule_token(RespConn& c) {
  const auto r = c.command({"EVAL", seeded_when_missing, "1", "old:{f}:fence"});
  if (r.type != Reply::Type::integer) throw std::runtime_error("old rule: " + r.str);
  return static_cast<std::uint64_t>(r.integer);
}

/// Issues `n` tokens through `lock` (try_lock + unlock on a free lock) and
/// `n` of the seeded-when-missing counter on `c`, raising `highest` and
/// `old_highest` to the largest of each.
inline void issue_tokens(Lock<RedisBackend>& lock, RespConn& c, int n, std::uint64_t& highest,
                         std::uint64_t& old_highest) {
  for (int i = 0; i < n; ++i) {
    if (!lock.try_lock()) throw std::runtime_error("issue_tokens: try_lock failed on a free lock");
    highest = std::max(highest, lock.fencing_token());
    lock.unlock();
    old_highest = std::max(old_highest, old_rule_token(c));
  }
}

/// `redis-server <conf> --sentinel` on a free loopback port, in a temporary directory.
class SentinelProcess {
 public:
  SentinelProcess(std::string_view master_name, int primary_port) {
    char tmpl[] = "/tmp/dlock-sentinel-test.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("SentinelProcess: mkdtemp failed");
    dir_ = tmpl;
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = free_loopback_port();
      const std::string conf = dir_ + "/sentinel.conf";
      std::ofstream(conf) << "port " << port_ << "\nbind 127.0.0.1\ndir " << dir_ << "\nlogfile " << dir_
                          << "/sentinel.log\nsentinel monitor " << master_name << " 127.0.0.1 " << primary_port
                          << " 2\nsentinel down-after-milliseconds " << master_name
                          << " 500\nsentinel failover-timeout " << master_name << " 2000\n";
      if (start(conf)) return;
    }
    std::filesystem::remove_all(dir_);
    throw std::runtime_error("SentinelProcess: redis-server --sentinel did not start");
  }
  SentinelProcess(const SentinelProcess&) = delete;
  SentinelProcess& operator=(const SentinelProcess&) = delete;
  ~SentinelProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  [[nodiscard]] int port() const noexcept { return port_; }

 private:
  bool start(const std::string& conf) {
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("SentinelProcess: fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
      }
      ::execlp("redis-server", "redis-server", conf.c_str(), "--sentinel", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    pid_ = pid;
    const RedisOptions o{.host = "127.0.0.1", .port = port_};
    const bool up = eventually(
        [&] {
          int status = 0;
          if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            return true;
          }
          return redis_ping(o);
        },
        std::chrono::seconds(10));
    return up && pid_ > 0;
  }
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// Replicas the primary on `port` lists as online (INFO replication). A
/// replica reports its link up once it loaded the primary's data, but the
/// primary puts it online only at its first REPLCONF ACK, up to a second
/// later: until then ROLE and WAIT do not count it (waiting only for the
/// replica's side made the tests that read ROLE flaky on a loaded machine).
inline int replicas_online(int port) {
  const std::string text = redis_command(port, {"INFO", "replication"}).str;
  int n = 0;
  for (std::size_t at = text.find("state=online"); at != std::string::npos; at = text.find("state=online", at + 1)) ++n;
  return n;
}

/// A primary's extra arguments: start a replica's full sync at once (Redis 7
/// waits repl-diskless-sync-delay, 5 s, for more replicas by default).
inline std::vector<std::string> primary_args() { return {"--repl-diskless-sync-delay", "0"}; }

/// A primary and one synchronised replica.
struct ReplicatedPair {
  RedisServer primary{primary_args()};
  RedisServer replica{{"--replicaof", "127.0.0.1", std::to_string(primary.port())}};
  ReplicatedPair() {
    if (!eventually(
            [&] {
              return info_field(replica.port(), "replication", "master_link_status") == "up" &&
                     replicas_online(primary.port()) == 1;
            },
            std::chrono::seconds(10)))
      throw std::runtime_error("ReplicatedPair: the replica did not sync");
  }
  ReplicatedPair(const ReplicatedPair&) = delete;
  ReplicatedPair& operator=(const ReplicatedPair&) = delete;
  ~ReplicatedPair() {
    replica.kill();
    primary.kill();
  }
};

/// One primary, two replicas, three sentinels monitoring it as "mymaster".
class SentinelSetup {
 public:
  static constexpr std::string_view master_name = "mymaster";

  SentinelSetup() : primary_(std::make_unique<RedisServer>(primary_args())) {
    for (int i = 0; i < 2; ++i)
      replicas_.push_back(std::make_unique<RedisServer>(
          std::vector<std::string>{"--replicaof", "127.0.0.1", std::to_string(primary_->port())}));
    // Sentinels learn the replicas from the primary's INFO when they connect.
    for (const auto& r : replicas_)
      if (!eventually([&] { return info_field(r->port(), "replication", "master_link_status") == "up"; },
                      std::chrono::seconds(10)))
        throw std::runtime_error("SentinelSetup: a replica did not sync");
    if (!eventually([&] { return replicas_online(primary_->port()) == 2; }, std::chrono::seconds(10)))
      throw std::runtime_error("SentinelSetup: the primary does not list both replicas online");
    for (int i = 0; i < 3; ++i) sentinels_.push_back(std::make_unique<SentinelProcess>(master_name, primary_->port()));
  }

  SentinelSetup(const SentinelSetup&) = delete;
  SentinelSetup& operator=(const SentinelSetup&) = delete;
  /// SIGKILL everything: nothing is persisted, and SIGTERM takes a redis-server seconds.
  ~SentinelSetup() {
    sentinels_.clear();
    for (auto& r : replicas_) r->kill();
    primary_->kill();
  }

  [[nodiscard]] RedisServer& primary() { return *primary_; }
  [[nodiscard]] RedisServer& replica(std::size_t i) { return *replicas_.at(i); }
  [[nodiscard]] SentinelProcess& sentinel(std::size_t i) { return *sentinels_.at(i); }
  [[nodiscard]] std::size_t sentinels() const noexcept { return sentinels_.size(); }

 private:
  std::unique_ptr<RedisServer> primary_;
  std::vector<std::unique_ptr<RedisServer>> replicas_;
  std::vector<std::unique_ptr<SentinelProcess>> sentinels_;
};

/// The redis+sentinel:// URI naming `setup`'s three sentinels and its master.
inline std::string sentinel_uri(SentinelSetup& setup) {
  std::string uri = "redis+sentinel://";
  for (std::size_t i = 0; i < setup.sentinels(); ++i)
    uri += (i == 0 ? "" : ",") + std::string("127.0.0.1:") + std::to_string(setup.sentinel(i).port());
  return uri + "/" + std::string(SentinelSetup::master_name);
}

/// Options for a backend through the sentinels: `prefix`, connect_timeout
/// 300 ms, command_timeout 1 s (a failover's dead primary costs little).
inline RedisOptions sentinel_test_options(std::string prefix) {
  RedisOptions base;
  base.key_prefix = std::move(prefix);
  base.connect_timeout = std::chrono::milliseconds(300);
  base.command_timeout = std::chrono::seconds(1);
  return base;
}

/// The sentinels know each other and both replicas (a failover can be
/// agreed), within `timeout`: they discover each other by hello messages
/// every 2 s.
inline bool sentinels_ready(SentinelSetup& setup, std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
  return eventually(
      [&] {
        for (std::size_t i = 0; i < setup.sentinels(); ++i) {
          RespConn s(setup.sentinel(i).port());
          const auto others = s.command({"SENTINEL", "SENTINELS", SentinelSetup::master_name});
          const auto replicas = s.command({"SENTINEL", "REPLICAS", SentinelSetup::master_name});
          if (others.elements.size() != 2 || replicas.elements.size() != 2) return false;
        }
        return true;
      },
      timeout);
}

/// The port sentinel `i` of `setup` names as the primary (0 if it cannot say).
inline int sentinel_primary_port(SentinelSetup& setup, std::size_t i = 0) {
  try {
    const auto r =
        RespConn(setup.sentinel(i).port()).command({"SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelSetup::master_name});
    if (r.elements.size() == 2) return std::stoi(r.elements[1].str);
  } catch (const std::exception&) {
  }
  return 0;
}

/// A client whose first sentinel lags (the blocking and asynchronous
/// AClientWhoseFirstSentinelLags... tests): `setup`'s primary is failed over
/// (fail_over()), a holder takes a name through the up-to-date sentinels on
/// the new primary, then the old primary resumes (it says master until the
/// sentinels demote it) and a fourth sentinel starts with the old
/// configuration (start_stale_sentinel(): it names the old primary at epoch 0
/// until a hello message, every 2 s, tells it the new one). A client that
/// lists that sentinel first (lagging_first_uri()) must find the name held.
class StaleSentinelScenario {
 public:
  explicit StaleSentinelScenario(SentinelSetup& setup) : setup_(setup) {}

  /// Pauses the primary and waits up to 30 s for sentinel 0 to name another;
  /// if it does not, resumes the primary and returns false.
  [[nodiscard]] bool fail_over() {
    old_primary_ = setup_.primary().port();
    setup_.primary().pause();
    const bool failed_over = eventually(
        [&] {
          new_primary_ = sentinel_primary_port(setup_);
          return new_primary_ != 0 && new_primary_ != old_primary_;
        },
        std::chrono::seconds(30));
    if (!failed_over) setup_.primary().resume();
    return failed_over;
  }
  [[nodiscard]] int old_primary() const noexcept { return old_primary_; }
  [[nodiscard]] int new_primary() const noexcept { return new_primary_; }
  /// The three up-to-date sentinels (sentinel_uri()).
  [[nodiscard]] std::string up_to_date_uri() const { return sentinel_uri(setup_); }

  /// attempt() (an acquire); a `Refused` thrown is not granted.
  template <class Refused>
  [[nodiscard]] static bool granted(const std::function<bool()>& attempt) {
    try {
      return attempt();
    } catch (const Refused&) {
      return false;
    }
  }
  /// granted() retried for up to 10 s: the holder's acquire on the new
  /// primary, refused until a majority of the sentinels know it.
  template <class Refused>
  [[nodiscard]] static bool eventually_granted(const std::function<bool()>& attempt) {
    return eventually([&] { return granted<Refused>(attempt); }, std::chrono::seconds(10));
  }

  /// Resumes the old primary and starts the stale sentinel; true once it
  /// answers PING (within 5 s).
  [[nodiscard]] bool start_stale_sentinel() {
    setup_.primary().resume();
    stale_ = std::make_unique<SentinelProcess>(SentinelSetup::master_name, old_primary_);
    return eventually(
        [&] {
          try {
            return RespConn(stale_->port()).command({"PING"}).str == "PONG";
          } catch (const std::exception&) {
            return false;
          }
        },
        std::chrono::seconds(5));
  }
  /// The window the scenario is about: the old primary still says master.
  [[nodiscard]] bool old_still_master() const { return info_field(old_primary_, "replication", "role") == "master"; }
  /// The stale sentinel first, then the three up-to-date ones.
  [[nodiscard]] std::string lagging_first_uri() const {
    const std::string rest = up_to_date_uri().substr(std::string_view("redis+sentinel://").size());
    return "redis+sentinel://127.0.0.1:" + std::to_string(stale_->port()) + "," + rest;
  }

 private:
  SentinelSetup& setup_;
  int old_primary_ = 0;
  int new_primary_ = 0;
  std::unique_ptr<SentinelProcess> stale_;
};

/// Three primaries and three replicas joined into one cluster.
class ClusterSetup {
 public:
  ClusterSetup() {
    for (int i = 0; i < 6; ++i)
      nodes_.push_back(std::make_unique<RedisServer>(
          std::vector<std::string>{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                   "--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"}));
    std::string cmd = "redis-cli --cluster create";
    for (const auto& n : nodes_) cmd += " 127.0.0.1:" + std::to_string(n->port());
    cmd += " --cluster-replicas 1 --cluster-yes >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) throw std::runtime_error("ClusterSetup: redis-cli --cluster create failed");
    const bool ok = eventually(
        [&] {
          for (const auto& n : nodes_)
            if (cluster_state(n->port()) != "ok") return false;
          return true;
        },
        std::chrono::seconds(20));
    if (!ok) throw std::runtime_error("ClusterSetup: cluster_state did not become ok");
  }

  ClusterSetup(const ClusterSetup&) = delete;
  ClusterSetup& operator=(const ClusterSetup&) = delete;
  ~ClusterSetup() {
    for (auto& n : nodes_) n->kill();
  }

  [[nodiscard]] std::size_t size() const noexcept { return nodes_.size(); }
  [[nodiscard]] RedisServer& node(std::size_t i) { return *nodes_.at(i); }
  /// The node listening on `port`, or nullptr.
  [[nodiscard]] RedisServer* by_port(int port) {
    for (auto& n : nodes_)
      if (n->port() == port) return n.get();
    return nullptr;
  }

  /// cluster_state from CLUSTER INFO ("ok", "fail", or "" if unreachable).
  static std::string cluster_state(int port) {
    return info_line(redis_command(port, {"CLUSTER", "INFO"}).str, "cluster_state");
  }

 private:
  std::vector<std::unique_ptr<RedisServer>> nodes_;
};

/// A fixture whose suite shares one ClusterSetup, started before its first
/// test (none with DLOCK_TEST_REDIS: the tests skip).
class ClusterSuite : public ::testing::Test {
 public:
  /// The slot map from CLUSTER SLOTS of the node at `port`.
  static detail::redis_proto::SlotMap slot_map(int port) {
    RespConn c(port);
    auto parsed = detail::redis_proto::SlotMap::from_cluster_slots(c.command({"CLUSTER", "SLOTS"}), "127.0.0.1");
    if (auto* why = std::get_if<std::string>(&parsed)) throw std::runtime_error(*why);
    return std::get<detail::redis_proto::SlotMap>(std::move(parsed));
  }

 protected:
  static void SetUpTestSuite() {
    if (!redis_is_external()) cluster_ = std::make_unique<ClusterSetup>();
  }
  static void TearDownTestSuite() { cluster_.reset(); }
  void SetUp() override { DLOCK_REQUIRE_OWN_REDIS(); }

  static inline std::unique_ptr<ClusterSetup> cluster_;
};

/// An observer that records nothing.
struct Quiet : Observer {
  void on_event(const Event&) noexcept override {}
};

/// A resource that accepts a write only with a token above the last it accepted, per name.
class FencedResource {
 public:
  void write(const std::string& name, std::uint64_t token) {
    std::lock_guard lk(mu_);
    std::uint64_t& last = last_[name];
    if (token <= last) ++violations_;
    last = std::max(last, token);
  }
  [[nodiscard]] int violations() const {
    std::lock_guard lk(mu_);
    return violations_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> last_;
  int violations_ = 0;
};

/// Lock traffic through `redis` for failover tests: 4 threads locking the
/// names s0..s2 (ttl 2 s, acquire_timeout 20 s), every token checked by a
/// FencedResource. A release's ConnectionError or TimeoutError (a failover
/// broke it: the lock expires by its TTL) is tolerated; any other error
/// stops the thread and is kept (error()).
class LockTraffic {
 public:
  explicit LockTraffic(RedisBackend& redis) {
    for (int t = 0; t < 4; ++t)
      workers_.emplace_back([this, &redis, t] {
        for (int i = 0; !stop_; ++i) {
          const std::string name = "s" + std::to_string((t + i) % 3);
          try {
            // ttl 2 s: a lock whose release met the failover frees soon.
            Lock<RedisBackend> lock(
                redis, name,
                {.ttl = std::chrono::seconds(2),
                 .retry = {.initial_delay = std::chrono::milliseconds(5), .max_delay = std::chrono::milliseconds(100)},
                 .acquire_timeout = std::chrono::seconds(20),
                 .observer = quiet_});
            lock.lock();
            resource_.write(name, lock.fencing_token());
            try {
              (void)lock.release();
            } catch (const dlock::ConnectionError&) {
              // the failover broke the connection under the release: the lock expires by its TTL
            } catch (const dlock::TimeoutError&) {
              // ... or the paused primary never answered it
            }
            ++done_;
          } catch (const std::exception& e) {
            std::lock_guard lk(error_mu_);
            if (first_error_.empty()) first_error_ = e.what();
            return;
          }
        }
      });
  }
  LockTraffic(const LockTraffic&) = delete;
  LockTraffic& operator=(const LockTraffic&) = delete;
  ~LockTraffic() { stop(); }

  /// `by` more lock cycles completed within `within` (false also after an error).
  bool progressed(int by, std::chrono::seconds within) {
    const int from = done_;
    return eventually([&] { return done_ >= from + by || !error().empty(); }, within) && error().empty();
  }
  void stop() {
    stop_ = true;
    for (auto& w : workers_)
      if (w.joinable()) w.join();
  }
  std::string error() {
    std::lock_guard lk(error_mu_);
    return first_error_;
  }
  [[nodiscard]] int violations() const { return resource_.violations(); }

 private:
  const std::shared_ptr<Quiet> quiet_ = std::make_shared<Quiet>();
  FencedResource resource_;
  std::atomic<bool> stop_{false};
  std::atomic<int> done_{0};
  std::mutex error_mu_;
  std::string first_error_;
  std::vector<std::thread> workers_;
};

/// The first half of `redis-cli --cluster reshard` for one slot: `slot`
/// IMPORTING at `to`, MIGRATING at `from`, and `keys` moved there (MIGRATE):
/// the source now answers ASK for them. Throws when a step is refused.
inline void migrate_slot_keys(const detail::redis_proto::ClusterNode& from, const detail::redis_proto::ClusterNode& to,
                              std::uint16_t slot, std::initializer_list<std::string_view> keys) {
  RespConn source(from.port);
  RespConn target(to.port);
  const std::string s = std::to_string(slot);
  const auto ok = [](const Reply& r, const char* step) {
    if (r.str != "OK") throw std::runtime_error(std::string(step) + ": " + r.str);
  };
  ok(target.command({"CLUSTER", "SETSLOT", s, "IMPORTING", from.id}), "SETSLOT IMPORTING");
  ok(source.command({"CLUSTER", "SETSLOT", s, "MIGRATING", to.id}), "SETSLOT MIGRATING");
  Request migrate;
  std::vector<std::string_view> args{"MIGRATE", "127.0.0.1"};
  const std::string port = std::to_string(to.port);
  args.insert(args.end(), {port, "", "0", "5000", "KEYS"});
  args.insert(args.end(), keys.begin(), keys.end());
  migrate.push(args);
  ok(source.call(migrate).at(0), "MIGRATE");
}

}  // namespace dlock::test
