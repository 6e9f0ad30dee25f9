// Test support: a throw-away redis-server for integration tests.
//
// RedisServer fork/execs `redis-server --port P --bind 127.0.0.1 --save ''
// --appendonly no --dir <mkdtemp dir>` on a free loopback port (plus a unix
// socket in the same directory), waits until it answers PING, and can stop,
// SIGKILL, SIGSTOP/SIGCONT and restart it on the same port. The child gets
// PR_SET_PDEATHSIG so a crashed test never leaves a server behind.
//
// TLS: RedisServer(args, TlsMode::on / mutual) makes a throw-away CA, a
// server certificate (localhost, 127.0.0.1) and a client certificate with the
// openssl CLI in its temp dir (test_certificates()), and serves TLS only
// (--port 0 --tls-port P; --tls-auth-clients yes for mutual); its unix socket
// stays plain, for the harness' own PING.
//
// DLOCK_TEST_REDIS=host:port (or a redis:// URI) makes the shared test
// server an external one: then nothing is started, and tests that need to
// kill, pause or reconfigure their own server are skipped.
#pragma once

#include "ports.hpp"

#include <dlock/redis.hpp>

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace dlock::test {

/// True if a Redis server answers PING at the endpoint within `timeout`.
inline bool redis_ping(const RedisOptions& o, std::chrono::milliseconds timeout = std::chrono::milliseconds(200)) {
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  redisContext* c = o.unix_socket.empty() ? redisConnectWithTimeout(o.host.c_str(), o.port, tv)
                                          : redisConnectUnixWithTimeout(o.unix_socket.c_str(), tv);
  if (c == nullptr) return false;
  bool ok = false;
  if (c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
    // NOAUTH also proves the server is up and answering.
    ok = r != nullptr && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR);
    if (r != nullptr) freeReplyObject(r);
  }
  redisFree(c);
  return ok;
}

/// Throw-away certificates, PEM files made by the openssl CLI.
struct TestCertificates {
  std::string ca;           ///< the CA that signed the two below
  std::string server_cert;  ///< CN localhost, SAN DNS:localhost, IP:127.0.0.1
  std::string server_key;
  std::string client_cert;  ///< CN dlock-test-client (for mutual TLS)
  std::string client_key;
  std::string other_ca;  ///< an unrelated CA (for "wrong CA" tests)
};

/// Makes TestCertificates in `dir` (EC P-256 keys, valid for 2 days). Throws
/// std::runtime_error when openssl fails.
inline TestCertificates make_test_certificates(const std::string& dir) {
  const auto run = [](const std::string& command) {
    if (std::system((command + " >/dev/null 2>&1").c_str()) != 0)
      throw std::runtime_error("make_test_certificates: failed: " + command);
  };
  const auto write = [](const std::string& path, const std::string& text) {
    FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) throw std::runtime_error("make_test_certificates: cannot write " + path);
    std::fputs(text.c_str(), f);
    std::fclose(f);
  };
  const std::string d = dir + "/";
  const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  run("openssl req -x509 " + key + " -keyout " + d + "ca.key -out " + d + "ca.crt -days 2 -subj /CN=dlock-test-ca");
  run("openssl req -x509 " + key + " -keyout " + d + "other-ca.key -out " + d +
      "other-ca.crt -days 2 -subj /CN=dlock-other-ca");
  write(d + "server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  write(d + "client.ext", "extendedKeyUsage=clientAuth\n");
  for (const std::string who : {"server", "client"}) {
    run("openssl req " + key + " -keyout " + d + who + ".key -out " + d + who +
        ".csr -subj /CN=" + (who == "server" ? std::string("localhost") : std::string("dlock-test-client")));
    run("openssl x509 -req -in " + d + who + ".csr -CA " + d + "ca.crt -CAkey " + d + "ca.key -CAcreateserial -out " +
        d + who + ".crt -days 2 -extfile " + d + who + ".ext");
  }
  return TestCertificates{d + "ca.crt",     d + "server.crt", d + "server.key",
                          d + "client.crt", d + "client.key", d + "other-ca.crt"};
}

/// How a RedisServer serves clients.
enum class TlsMode {
  off,     ///< plain TCP
  on,      ///< TLS only (no plain port); clients need no certificate
  mutual,  ///< TLS only, and clients must present a certificate signed by the CA
};

class RedisServer {
 public:
  /// Starts a server; `extra_args` are appended to its command line
  /// (e.g. {"--requirepass", "pw"}).
  explicit RedisServer(std::vector<std::string> extra_args = {}, TlsMode tls = TlsMode::off)
      : extra_args_(std::move(extra_args)), tls_(tls) {
    char tmpl[] = "/tmp/dlock-redis-test.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("RedisServer: mkdtemp failed");
    dir_ = tmpl;
    if (tls_ != TlsMode::off) certs_ = make_test_certificates(dir_);
    const bool cluster = std::find(extra_args_.begin(), extra_args_.end(), "--cluster-enabled") != extra_args_.end();
    for (int attempt = 0;; ++attempt) {
      port_ = cluster ? free_cluster_port() : free_loopback_port();
      if (try_start()) return;
      if (attempt == 4) {
        std::filesystem::remove_all(dir_);
        throw std::runtime_error("RedisServer: redis-server did not start; see its log above");
      }
    }
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;
  ~RedisServer() {
    stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  [[nodiscard]] int port() const noexcept { return port_; }
  [[nodiscard]] std::string unix_socket() const { return dir_ + "/redis.sock"; }
  [[nodiscard]] const std::string& dir() const noexcept { return dir_; }
  [[nodiscard]] bool running() const noexcept { return pid_ > 0; }
  /// Options for this server with short timeouts (for a TLS server: TLS
  /// verified against the test CA, and the client certificate if mutual).
  [[nodiscard]] RedisOptions options() const {
    RedisOptions o{.host = "127.0.0.1",
                   .port = port_,
                   .connect_timeout = std::chrono::milliseconds(1000),
                   .command_timeout = std::chrono::milliseconds(1000)};
    if (tls_ != TlsMode::off) o.tls = TlsOptions{.ca_file = certs_.ca};
    if (tls_ == TlsMode::mutual) {
      o.tls->cert_file = certs_.client_cert;
      o.tls->key_file = certs_.client_key;
    }
    return o;
  }
  /// The certificates of a TLS server (empty paths for a plain one).
  [[nodiscard]] const TestCertificates& certificates() const noexcept { return certs_; }

  /// SIGTERM (after SIGCONT if paused) and wait; SIGKILL if it lingers.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGTERM);
    if (!wait_exit(std::chrono::seconds(5))) {
      ::kill(pid_, SIGKILL);
      wait_exit(std::chrono::seconds(5));
    }
    pid_ = -1;
  }
  /// SIGKILL: the server dies at once, as in a crash.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    wait_exit(std::chrono::seconds(5));
    pid_ = -1;
  }
  /// SIGSTOP: the server keeps its connections but answers nothing.
  void pause() {
    if (pid_ > 0) ::kill(pid_, SIGSTOP);
  }
  void resume() {
    if (pid_ > 0) ::kill(pid_, SIGCONT);
  }
  /// Starts the server again on the same port (empty: no persistence).
  void restart() {
    stop();
    for (int attempt = 0; attempt < 20; ++attempt) {
      if (try_start()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    throw std::runtime_error("RedisServer: restart failed");
  }

 private:
  bool try_start() {
    const std::string port = std::to_string(port_);
    const std::string log = dir_ + "/redis.log";
    std::vector<std::string> args{
        "redis-server", "--port",    port, "--bind",       "127.0.0.1",   "--save",           "",    "--appendonly",
        "no",           "--dir",     dir_, "--unixsocket", unix_socket(), "--unixsocketperm", "700", "--daemonize",
        "no",           "--logfile", log};
    if (tls_ != TlsMode::off) {
      const std::vector<std::string> tls{"--port",
                                         "0",
                                         "--tls-port",
                                         port,
                                         "--tls-cert-file",
                                         certs_.server_cert,
                                         "--tls-key-file",
                                         certs_.server_key,
                                         "--tls-ca-cert-file",
                                         certs_.ca,
                                         "--tls-auth-clients",
                                         tls_ == TlsMode::mutual ? "yes" : "no"};
      args.insert(args.end(), tls.begin(), tls.end());
    }
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("RedisServer: fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
      const int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
      }
      ::execvp("redis-server", argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    RedisOptions o{.host = "127.0.0.1", .port = port_};
    if (tls_ != TlsMode::off) o.unix_socket = unix_socket();  // the plain way in, for PING
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {  // e.g. the port was taken meanwhile
        pid_ = -1;
        std::fprintf(stderr, "RedisServer: redis-server on port %d exited; log %s\n", port_, log.c_str());
        return false;
      }
      if (redis_ping(o)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill();
    return false;
  }

  bool wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || r < 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  std::vector<std::string> extra_args_;
  TlsMode tls_ = TlsMode::off;
  TestCertificates certs_;
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// True when DLOCK_TEST_REDIS names an external server.
inline bool redis_is_external() {
  const char* ext = std::getenv("DLOCK_TEST_REDIS");
  return ext != nullptr && *ext != '\0';
}

/// The server shared by a test executable: started once by the Environment
/// below (or taken from DLOCK_TEST_REDIS) and stopped at the end, also when
/// tests failed.
class SharedRedis : public ::testing::Environment {
 public:
  static SharedRedis*& instance() {
    static SharedRedis* env = nullptr;
    return env;
  }
  SharedRedis() { instance() = this; }

  void SetUp() override {
    if (redis_is_external()) {
      const std::string e(std::getenv("DLOCK_TEST_REDIS"));
      options_ = e.find("://") != std::string::npos ? parse_redis_uri(e) : parse_redis_uri("redis://" + e);
      options_.connect_timeout = std::chrono::milliseconds(1000);
      options_.command_timeout = std::chrono::milliseconds(1000);
      external_ = true;
      ASSERT_TRUE(redis_ping(options_, std::chrono::milliseconds(1000)))
          << "DLOCK_TEST_REDIS=" << e << " does not answer PING";
      return;
    }
    server_ = std::make_unique<RedisServer>();
    options_ = server_->options();
  }
  void TearDown() override { server_.reset(); }

  [[nodiscard]] bool external() const noexcept { return external_; }
  [[nodiscard]] const RedisOptions& options() const noexcept { return options_; }
  [[nodiscard]] RedisServer* server() noexcept { return server_.get(); }

 private:
  std::unique_ptr<RedisServer> server_;
  RedisOptions options_;
  bool external_ = false;
};

/// Skips the current test when the servers are external (DLOCK_TEST_REDIS).
#define DLOCK_REQUIRE_OWN_REDIS()                                                                    \
  do {                                                                                               \
    if (::dlock::test::redis_is_external())                                                          \
      GTEST_SKIP() << "DLOCK_TEST_REDIS is set: this test needs a redis-server it can start, kill, " \
                      "pause or reconfigure itself";                                                 \
  } while (0)

/// A key prefix unique to the running test, e.g. "dlock-test:Suite.Name:1a2b3c:".
inline std::string test_key_prefix() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::random_device rd;
  char rnd[16];
  std::snprintf(rnd, sizeof rnd, "%06x", rd() & 0xffffffu);
  return std::string("dlock-test:") + (info ? info->test_suite_name() : "?") + "." + (info ? info->name() : "?") + ":" +
         rnd + ":";
}

/// Deletes every key under a prefix (SCAN + DEL) through a node.
inline void delete_keys(detail::RedisClient& node, const std::string& prefix) {
  std::string cursor = "0";
  const std::string pattern = prefix + "*";
  do {
    const auto r = node.command({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
    if (r.type != detail::RedisValue::Type::array || r.elements.size() != 2) return;
    cursor = r.elements[0].str;
    for (const auto& k : r.elements[1].elements) (void)node.command({"DEL", k.str});
  } while (cursor != "0");
}

}  // namespace dlock::test
