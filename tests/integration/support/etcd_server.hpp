// Test support: a throw-away etcd cluster for integration tests.
//
// EtcdCluster fork/execs N `etcd` members (default 3) with --name m<i> and
// --initial-cluster naming all of them, client and peer URLs on free loopback
// ports, data in a mkdtemp directory, and short raft timings (heartbeat
// 50 ms, election 500 ms: leases can then be as short as 1 s). It waits until
// every member answers a linearizable read, and can SIGKILL, SIGSTOP/SIGCONT
// and restart single members, and tell which member leads. Each member gets
// PR_SET_PDEATHSIG so a crashed test never leaves etcd behind; the destructor
// kills them and removes the directory.
//
// EtcdCluster::Tls: client URLs are https:// with a throw-away CA made with
// the openssl CLI in the same directory (server certificate for 127.0.0.1,
// a client certificate), etcd run with --client-cert-auth.
#pragma once

#include "ports.hpp"

#include <dlock/etcd.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../../../src/etcd/etcd_client.hpp"

namespace dlock::test {

struct EtcdClusterConfig {
  int members = 3;
  bool tls = false;                       ///< https:// client URLs and client certificates (see above)
  std::vector<std::string> extra_args{};  ///< appended to every member's command line
};

class EtcdCluster {
 public:
  using Config = EtcdClusterConfig;

  explicit EtcdCluster(Config config = {}) : config_(config) {
    char tmpl[] = "/tmp/dlock-etcd-test.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("EtcdCluster: mkdtemp failed");
    dir_ = tmpl;
    if (config_.tls) make_certificates();
    for (int attempt = 0;; ++attempt) {
      if (try_start()) return;
      stop_all();
      std::filesystem::remove_all(dir_ + "/data");
      if (attempt == 2) {
        const std::string d = dir_;
        throw std::runtime_error("EtcdCluster: etcd did not start; logs in " + d);
      }
    }
  }
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;
  ~EtcdCluster() {
    stop_all();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  [[nodiscard]] int size() const noexcept { return config_.members; }
  [[nodiscard]] const std::string& dir() const noexcept { return dir_; }
  [[nodiscard]] std::string url(int i) const {
    return std::string(config_.tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(members_.at(i).client);
  }
  [[nodiscard]] int client_port(int i) const { return members_.at(i).client; }
  [[nodiscard]] std::vector<std::string> urls() const {
    std::vector<std::string> u;
    for (int i = 0; i < size(); ++i) u.push_back(url(i));
    return u;
  }
  /// TLS settings a client needs (tls clusters): the CA and a client certificate.
  [[nodiscard]] TlsOptions client_tls() const {
    return TlsOptions{.ca_file = dir_ + "/ca.pem", .cert_file = dir_ + "/client.pem", .key_file = dir_ + "/client.key"};
  }
  /// Options for every member, with short timeouts.
  [[nodiscard]] EtcdOptions options(std::string prefix = "dlock-test/") const {
    EtcdOptions o{.endpoints = urls(),
                  .key_prefix = std::move(prefix),
                  .dial_timeout = std::chrono::milliseconds(500),
                  .request_timeout = std::chrono::milliseconds(1500)};
    if (config_.tls) o.tls = client_tls();
    return o;
  }

  /// SIGKILL: the member dies at once.
  void kill(int i) {
    Member& m = members_.at(i);
    if (m.pid <= 0) return;
    ::kill(m.pid, SIGKILL);
    wait_exit(m.pid, std::chrono::seconds(5));
    m.pid = -1;
  }
  void pause(int i) { ::kill(members_.at(i).pid, SIGSTOP); }
  void resume(int i) { ::kill(members_.at(i).pid, SIGCONT); }
  /// Starts a killed member again with its data (it rejoins the cluster).
  void restart(int i) {
    spawn(i);
    if (!member_ready(i, std::chrono::seconds(15))) throw std::runtime_error("EtcdCluster: restart failed");
  }
  /// The index of the leading member, or -1 if none answers with one.
  [[nodiscard]] int leader() {
    for (int i = 0; i < size(); ++i) {
      if (members_[static_cast<std::size_t>(i)].pid <= 0) continue;
      try {
        detail::EtcdClient c(single(i));
        const std::string status = c.call("/v3/maintenance/status", "{}", "status");
        const std::string leader = field(status, "\"leader\":\"");
        for (int j = 0; j < size(); ++j) {
          if (members_[static_cast<std::size_t>(j)].id.empty()) members_[static_cast<std::size_t>(j)].id = member_id(j);
          if (members_[static_cast<std::size_t>(j)].id == leader) return j;
        }
      } catch (const std::exception&) {
      }
    }
    return -1;
  }

  /// Runs etcdctl against member 0 (e.g. {"user", "add", "root:pw"}); true on exit status 0.
  bool etcdctl(const std::vector<std::string>& args) {
    std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + url(0);
    if (config_.tls)
      cmd += " --cacert=" + dir_ + "/ca.pem --cert=" + dir_ + "/client.pem --key=" + dir_ + "/client.key";
    for (const auto& a : args) cmd += " '" + a + "'";
    cmd += " >>" + dir_ + "/etcdctl.log 2>&1";
    return std::system(cmd.c_str()) == 0;
  }

 private:
  struct Member {
    int client = 0;
    int peer = 0;
    pid_t pid = -1;
    std::string id;
  };

  static std::string field(const std::string& json, const std::string& start) {
    const auto p = json.find(start);
    if (p == std::string::npos) return {};
    const auto b = p + start.size();
    return json.substr(b, json.find('"', b) - b);
  }
  std::string member_id(int j) {
    if (members_[static_cast<std::size_t>(j)].pid <= 0) return {};
    try {
      detail::EtcdClient c(single(j));
      return field(c.call("/v3/maintenance/status", "{}", "status"), "\"member_id\":\"");
    } catch (const std::exception&) {
      return {};
    }
  }
  EtcdOptions single(int i) const {
    EtcdOptions o{.endpoints = {url(i)},
                  .dial_timeout = std::chrono::milliseconds(300),
                  .request_timeout = std::chrono::milliseconds(1000)};
    if (config_.tls) o.tls = client_tls();
    return o;
  }

  void make_certificates() {
    const std::string d = dir_;
    const std::string script =
        "(cd " + d +
        " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=dlock-test-ca"
        " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1"
        " && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext"
        " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 "
        "-extfile server.ext"
        " && openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=dlock-client"
        " && printf 'extendedKeyUsage=clientAuth\\n' > client.ext"
        " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 "
        "-extfile client.ext"
        ") >/dev/null 2>&1";
    if (std::system(script.c_str()) != 0) throw std::runtime_error("EtcdCluster: openssl could not make certificates");
  }

  std::vector<std::string> args(int i) const {
    const Member& m = members_[static_cast<std::size_t>(i)];
    std::string cluster;
    for (int j = 0; j < size(); ++j) {
      cluster += (j ? "," : "") + std::string("m") + std::to_string(j) +
                 "=http://127.0.0.1:" + std::to_string(members_[static_cast<std::size_t>(j)].peer);
    }
    const std::string client = url(i);
    const std::string peer = "http://127.0.0.1:" + std::to_string(m.peer);
    std::vector<std::string> a{"etcd",
                               "--name=m" + std::to_string(i),
                               "--data-dir=" + dir_ + "/data/m" + std::to_string(i),
                               "--listen-client-urls=" + client,
                               "--advertise-client-urls=" + client,
                               "--listen-peer-urls=" + peer,
                               "--initial-advertise-peer-urls=" + peer,
                               "--initial-cluster=" + cluster,
                               "--initial-cluster-state=new",
                               "--initial-cluster-token=dlock-test",
                               "--heartbeat-interval=50",
                               "--election-timeout=500",
                               "--logger=zap",
                               "--log-outputs=" + dir_ + "/m" + std::to_string(i) + ".log"};
    if (config_.tls) {
      a.push_back("--cert-file=" + dir_ + "/server.pem");
      a.push_back("--key-file=" + dir_ + "/server.key");
      a.push_back("--trusted-ca-file=" + dir_ + "/ca.pem");
      a.push_back("--client-cert-auth");
    }
    a.insert(a.end(), config_.extra_args.begin(), config_.extra_args.end());
    return a;
  }

  void spawn(int i) {
    std::vector<std::string> a = args(i);
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("EtcdCluster: fork failed");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      const int null = ::open("/dev/null", O_RDWR);
      if (null >= 0) {
        ::dup2(null, STDIN_FILENO);
        ::dup2(null, STDOUT_FILENO);
        ::dup2(null, STDERR_FILENO);
      }
      ::execvp("etcd", argv.data());
      ::_exit(127);
    }
    members_[static_cast<std::size_t>(i)].pid = pid;
  }

  bool member_ready(int i, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(members_[static_cast<std::size_t>(i)].pid, &status, WNOHANG) != 0) return false;
      try {
        detail::EtcdClient c(single(i));
        (void)c.call("/v3/kv/range", R"({"key":"AA=="})", "readiness check");
        return true;
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  bool try_start() {
    members_.assign(static_cast<std::size_t>(config_.members), Member{});
    for (auto& m : members_) {
      m.client = free_loopback_port();
      m.peer = free_loopback_port();
    }
    for (int i = 0; i < size(); ++i) spawn(i);
    for (int i = 0; i < size(); ++i) {
      if (!member_ready(i, std::chrono::seconds(20))) return false;
    }
    return true;
  }

  void stop_all() {
    // SIGKILL: a throw-away cluster needs no graceful stop (SIGTERM makes a
    // leader hand over first, seconds per member).
    for (auto& m : members_) {
      if (m.pid > 0) ::kill(m.pid, SIGKILL);
    }
    for (auto& m : members_) {
      if (m.pid <= 0) continue;
      if (!wait_exit(m.pid, std::chrono::seconds(5))) {
        ::kill(m.pid, SIGKILL);
        wait_exit(m.pid, std::chrono::seconds(5));
      }
      m.pid = -1;
    }
  }

  static bool wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      const pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid || r < 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  Config config_;
  std::string dir_;
  std::vector<Member> members_;
};

}  // namespace dlock::test
