// Test support: a throw-away PostgreSQL server for integration tests.
//
// PostgresServer runs `initdb` into a mkdtemp directory and starts `postgres`
// on a free loopback port (Unix socket in the same directory), as the
// `postgres` user when the tests run as root (PostgreSQL refuses root). The
// server is a direct child (fork + setuid + exec, no pg_ctl), started with
// PR_SET_PDEATHSIG=SIGQUIT so it dies with the test process; the destructor
// stops it (SIGINT, then SIGQUIT, then SIGKILL) and removes the directory.
// A small watchdog process also waits for the test process to end by any
// means (crash, abort, sanitizer exit, SIGKILL) and then stops the server and
// removes the directory, so nothing outlives a failed test. It creates the
// database `dlock_test`.
//
// PostgresServer::shared() is one server per test executable (initdb once).
// DLOCK_TEST_PG=<libpq conninfo> uses an external server instead: then nothing
// is started (run such suites one at a time: they share the database).
#pragma once

#include "ports.hpp"

#include <libpq-fe.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace dlock::test::pg {

inline int free_port() { return free_loopback_port(); }

/// The directory of PostgreSQL's server programs: $DLOCK_PG_BIN, else the
/// newest /usr/lib/postgresql/<version>/bin.
inline std::string pg_bin_dir() {
  if (const char* env = std::getenv("DLOCK_PG_BIN")) return env;
  std::string best;
  int best_version = -1;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string v = entry.path().filename().string();
    const int n = std::atoi(v.c_str());
    if (n > best_version && std::filesystem::exists(entry.path() / "bin" / "postgres")) {
      best_version = n;
      best = (entry.path() / "bin").string();
    }
  }
  if (best.empty()) throw std::runtime_error("PostgreSQL server programs not found under /usr/lib/postgresql");
  return best;
}

class PostgresServer {
 public:
  /// Starts a server in a new temporary directory (or adopts DLOCK_TEST_PG).
  PostgresServer() {
    if (const char* env = std::getenv("DLOCK_TEST_PG"); env && *env) {
      conninfo_ = env;
      return;
    }
    start();
  }
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;
  ~PostgresServer() { stop(); }

  /// One server for the whole test executable, stopped at exit.
  static PostgresServer& shared() {
    static PostgresServer server;
    return server;
  }

  [[nodiscard]] const std::string& conninfo() const noexcept { return conninfo_; }
  [[nodiscard]] bool external() const noexcept { return pid_ <= 0; }

  void stop() noexcept {
    if (pid_ > 0) {
      ::kill(pid_, SIGINT);  // fast shutdown: disconnects clients, no checkpoint wait beyond a moment
      if (!wait_exit(pid_, std::chrono::seconds(10))) {
        ::kill(pid_, SIGQUIT);
        if (!wait_exit(pid_, std::chrono::seconds(5))) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, nullptr, 0);
        }
      }
      pid_ = -1;
    }
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      dir_.clear();
    }
    if (watchdog_fd_ >= 0) {
      ::close(watchdog_fd_);
      ::waitpid(watchdog_pid_, nullptr, 0);
      watchdog_fd_ = -1;
    }
  }

 private:
  void start() {
    char tmpl[] = "/tmp/dlock-pgtest.XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    ::chmod(dir_.c_str(), 0755);
    if (::geteuid() == 0) {
      const passwd* pw = ::getpwnam("postgres");
      if (!pw) throw std::runtime_error("running as root but there is no postgres user to run the server as");
      uid_ = pw->pw_uid;
      gid_ = pw->pw_gid;
      if (::chown(dir_.c_str(), uid_, gid_) != 0) throw std::runtime_error("chown of the data directory failed");
    }
    const std::string bin = pg_bin_dir();
    const int rc = run_wait({bin + "/initdb", "-D", dir_ + "/data", "-A", "trust", "-U", "postgres", "--no-sync", "-E",
                             "UTF8", "--locale=C"},
                            dir_ + "/initdb.log");
    if (rc != 0)
      throw std::runtime_error("initdb failed (exit " + std::to_string(rc) + "); log: " + dir_ + "/initdb.log");
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = free_port();
      pid_ = spawn({bin + "/postgres", "-D", dir_ + "/data", "-p", std::to_string(port_), "-k", dir_, "-c",
                    "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c",
                    "full_page_writes=off", "-c", "max_connections=200", "-c", "deadlock_timeout=100ms"},
                   dir_ + "/server.log", SIGQUIT);
      if (wait_ready()) break;
      stop_child();  // most likely the port was taken in between: try another
    }
    if (pid_ <= 0) throw std::runtime_error("postgres did not start; log: " + dir_ + "/server.log");
    start_watchdog();
    const std::string admin = "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres user=postgres";
    PGconn* c = PQconnectdb(admin.c_str());
    PGresult* r = PQexec(c, "CREATE DATABASE dlock_test");
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    PQfinish(c);
    if (!ok) throw std::runtime_error("CREATE DATABASE dlock_test failed");
    conninfo_ = "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=dlock_test user=postgres";
  }

  // A forked child that blocks reading a pipe whose only write end we hold:
  // EOF means this process is gone, however it ended. It then stops the
  // server and removes the directory. A normal stop() does both first and
  // then closes the pipe, and the watchdog finds nothing left to do.
  void start_watchdog() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;  // CLOEXEC: spawned workers must not keep it open
    const pid_t server = pid_;
    const std::string dir = dir_;
    const pid_t w = ::fork();
    if (w == 0) {
      ::close(fds[1]);
      for (int fd = 3; fd < 1024; ++fd)
        if (fd != fds[0]) ::close(fd);
      ::setpgid(0, 0);  // not killed along with the test's process group
      char c;
      while (::read(fds[0], &c, 1) > 0 || errno == EINTR) {
      }
      if (::kill(server, 0) == 0) {
        ::kill(server, SIGQUIT);
        for (int i = 0; i < 200 && ::kill(server, 0) == 0; ++i) ::usleep(25'000);
        if (::kill(server, 0) == 0) ::kill(server, SIGKILL);
      }
      // exec rather than remove_all: after fork() in a threaded process only
      // async-signal-safe calls are safe.
      ::execl("/bin/rm", "rm", "-rf", dir.c_str(), static_cast<char*>(nullptr));
      ::_exit(0);
    }
    ::close(fds[0]);
    if (w > 0) {
      watchdog_fd_ = fds[1];
      watchdog_pid_ = w;
    } else {
      ::close(fds[1]);
    }
  }

  bool wait_ready() {
    const std::string probe =
        "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres user=postgres connect_timeout=2";
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (PQping(probe.c_str()) == PQPING_OK) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  void stop_child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGQUIT);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

  static bool wait_exit(pid_t pid, std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // fork + (setuid postgres) + exec, output to `log`. The child dies with us.
  pid_t spawn(const std::vector<std::string>& args, const std::string& log, int death_signal) const {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
      }
      if (::geteuid() == 0) {
        if (::fchown(1, uid_, gid_) != 0 || ::setgroups(0, nullptr) != 0 || ::setgid(gid_) != 0 || ::setuid(uid_) != 0)
          ::_exit(126);
      }
      // After setuid: a credential change clears the parent-death signal.
      ::prctl(PR_SET_PDEATHSIG, death_signal);
      if (::getppid() != parent) ::_exit(125);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    return pid;
  }

  int run_wait(const std::vector<std::string>& args, const std::string& log) const {
    const pid_t pid = spawn(args, log, SIGKILL);
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::string dir_;
  std::string conninfo_;
  int port_ = 0;
  pid_t pid_ = -1;
  int watchdog_fd_ = -1;
  pid_t watchdog_pid_ = -1;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
};

/// A plain libpq connection for the test's own SQL (the "other application").
class RawConn {
 public:
  explicit RawConn(const std::string& conninfo) : c_(PQconnectdb(conninfo.c_str())) {
    if (PQstatus(c_) != CONNECTION_OK) {
      const std::string msg = PQerrorMessage(c_);
      PQfinish(c_);
      throw std::runtime_error("RawConn: " + msg);
    }
  }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;
  ~RawConn() { PQfinish(c_); }

  [[nodiscard]] PGconn* get() const noexcept { return c_; }

  /// Runs `sql` with text parameters; throws on error. Returns the first column of the first row ("" if none).
  std::string exec(const std::string& sql, const std::vector<std::string>& params = {}) {
    std::vector<const char*> values;
    for (const auto& p : params) values.push_back(p.c_str());
    PGresult* r =
        PQexecParams(c_, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0);
    const auto st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      const std::string msg = PQresultErrorMessage(r);
      PQclear(r);
      throw std::runtime_error("RawConn: " + sql + ": " + msg);
    }
    std::string out = PQntuples(r) > 0 && PQnfields(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    PQclear(r);
    return out;
  }

 private:
  PGconn* c_;
};

}  // namespace dlock::test::pg
