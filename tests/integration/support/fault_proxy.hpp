// Test support: a loopback TCP proxy that can cut the line to a server.
//
// FaultProxy listens on a free loopback port and forwards each connection to
// a target port on 127.0.0.1, so a test can make a running server unreachable
// for one client without stopping it (other clients, and the test's own
// inspection connections, keep going):
//   cut()      resets every forwarded connection on both sides (RST) and then
//              every new one as soon as it is accepted: a server that went away;
//   silence()  stops forwarding and holds new connections unanswered: a paused
//              server or a black hole (requests time out);
//   heal()     forwards again (held connections are connected to the server
//              then; reset ones stay closed);
//   retarget() sends new connections to another port, while the open ones
//              stay with the old server: a DNS name that moved on failover.
// It also keeps a record per forwarded connection (the server it reached,
// and how often a marker such as "-READONLY" appeared in what the server
// sent back), so a test can check what each client connection was told.
// One thread per proxy, driven by poll().
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace dlock::test {

class FaultProxy {
 public:
  /// Starts forwarding 127.0.0.1:port() to 127.0.0.1:target_port.
  explicit FaultProxy(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw std::runtime_error("FaultProxy: socket() failed");
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd_, 128) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(listen_fd_);
      throw std::runtime_error("FaultProxy: cannot listen on a loopback port");
    }
    port_ = ntohs(a.sin_port);
    if (::pipe2(wake_.data(), O_CLOEXEC | O_NONBLOCK) != 0) {
      ::close(listen_fd_);
      throw std::runtime_error("FaultProxy: pipe2() failed");
    }
    thread_ = std::thread([this] { run(); });
  }
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;
  ~FaultProxy() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    wake();
    thread_.join();
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  /// The port clients connect to instead of the server's.
  [[nodiscard]] int port() const noexcept { return port_; }

  /// Resets every forwarded connection and every new one until heal().
  /// Returns once the open connections are reset.
  void cut() { set_mode(Mode::cut); }
  /// Forwards nothing, and answers no new connection, until heal().
  void silence() { set_mode(Mode::silent); }
  /// Forwards again.
  void heal() { set_mode(Mode::forward); }
  /// New connections go to 127.0.0.1:target_port; open ones stay where they are.
  void retarget(int target_port) noexcept { target_port_.store(target_port); }

  /// Counts `marker` in what servers send on connections forwarded from now
  /// on (say "-READONLY": an error reply's first bytes).
  void count_in_replies(std::string marker) {
    std::lock_guard lk(record_mu_);
    marker_ = std::move(marker);
  }
  /// What the proxy saw on one forwarded connection.
  struct Record {
    int target_port = 0;
    int marked = 0;    // occurrences of the marker in the server's bytes
    std::string tail;  // the last bytes, for a marker split across reads
  };
  [[nodiscard]] std::vector<Record> records() const {
    std::lock_guard lk(record_mu_);
    return records_;
  }

 private:
  enum class Mode { forward, cut, silent };
  struct Pair {
    int client = -1;
    int server = -1;
    std::size_t record = 0;  // index into records_
  };

  static sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    return a;
  }
  // Closes with an RST rather than a FIN: the peer sees a reset connection.
  static void reset(int fd) {
    if (fd < 0) return;
    const linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd);
  }
  static bool send_all(int fd, const char* data, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      data += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

  void wake() const noexcept {
    const char c = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_[1], &c, 1);
  }
  void set_mode(Mode mode) {
    std::unique_lock lk(mu_);
    mode_ = mode;
    const std::uint64_t request = ++requested_;
    lk.unlock();
    wake();
    lk.lock();
    done_cv_.wait(lk, [&] { return applied_ >= request; });
  }

  static int connect_target(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    const sockaddr_in a = loopback(port);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  void run() {
    std::vector<Pair> pairs;
    std::vector<int> held;  // accepted while silent, not yet connected to the server
    std::vector<pollfd> fds;
    std::array<char, 64 * 1024> buf{};
    Mode mode = Mode::forward;
    for (;;) {
      {
        std::lock_guard lk(mu_);
        if (stop_) break;
        if (applied_ != requested_) {
          mode = mode_;
          if (mode == Mode::cut) {
            for (auto& p : pairs) {
              reset(p.client);
              reset(p.server);
            }
            pairs.clear();
          }
          if (mode != Mode::silent) {
            for (const int c : held) attach(c, mode, pairs);
            held.clear();
          }
          applied_ = requested_;
          done_cv_.notify_all();
        }
      }
      fds.clear();
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      const std::size_t polled = mode == Mode::forward ? pairs.size() : 0;
      for (std::size_t i = 0; i < polled; ++i) {
        fds.push_back({pairs[i].client, POLLIN, 0});
        fds.push_back({pairs[i].server, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) continue;  // EINTR
      if (fds[0].revents != 0) {
        char drain[64];
        while (::read(wake_[0], drain, sizeof drain) > 0) {
        }
        continue;  // apply a mode change first, before forwarding anything more
      }
      if (fds[1].revents & POLLIN) {
        const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0 && mode == Mode::silent) {
          held.push_back(c);
        } else if (c >= 0) {
          attach(c, mode, pairs);
        }
      }
      // Forward what arrived; a pair whose either side closed is closed on both.
      const auto forward = [&buf, this](int from, int to, short revents, const std::size_t* record) {
        if (revents == 0) return true;
        const ssize_t n = ::recv(from, buf.data(), buf.size(), 0);
        if (n > 0 && record != nullptr) scan(*record, std::string_view(buf.data(), static_cast<std::size_t>(n)));
        return n > 0 && send_all(to, buf.data(), static_cast<std::size_t>(n));
      };
      std::vector<Pair> next;
      for (std::size_t i = 0; i < pairs.size(); ++i) {
        const Pair p = pairs[i];
        const bool ok = i >= polled || (forward(p.client, p.server, fds[2 + 2 * i].revents, nullptr) &&
                                        forward(p.server, p.client, fds[3 + 2 * i].revents, &p.record));
        if (ok) {
          next.push_back(p);
        } else {
          reset(p.client);
          reset(p.server);
        }
      }
      pairs.swap(next);
    }
    for (auto& p : pairs) {
      reset(p.client);
      reset(p.server);
    }
    for (const int c : held) reset(c);
  }

  // Counts the marker in bytes a server sent on the connection of `record`.
  void scan(std::size_t record, std::string_view bytes) {
    std::lock_guard lk(record_mu_);
    Record& r = records_[record];
    if (marker_.empty()) return;
    const std::string seen = r.tail + std::string(bytes);
    for (std::size_t at = seen.find(marker_); at != std::string::npos; at = seen.find(marker_, at + 1))
      r.marked += at + marker_.size() > r.tail.size() ? 1 : 0;  // not counted in an earlier read
    r.tail = seen.substr(seen.size() - std::min(seen.size(), marker_.size() - 1));
  }

  // Connects an accepted client to the server, or resets it (cut, or the server refused).
  void attach(int client, Mode mode, std::vector<Pair>& pairs) {
    const int port = target_port_.load();
    const int server = mode == Mode::cut ? -1 : connect_target(port);
    if (server < 0) {
      reset(client);
    } else {
      std::lock_guard lk(record_mu_);
      Record r;
      r.target_port = port;
      records_.push_back(std::move(r));
      pairs.push_back({client, server, records_.size() - 1});
    }
  }

  std::atomic<int> target_port_;
  mutable std::mutex record_mu_;
  std::string marker_;
  std::vector<Record> records_;
  int port_ = 0;
  int listen_fd_ = -1;
  std::array<int, 2> wake_{-1, -1};
  std::mutex mu_;
  std::condition_variable done_cv_;
  bool stop_ = false;
  Mode mode_ = Mode::forward;
  std::uint64_t requested_ = 0;  // mode changes asked for
  std::uint64_t applied_ = 0;    // ... and applied by the thread
  std::thread thread_;
};

}  // namespace dlock::test
