// A free loopback TCP port, for the test harnesses that start servers.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>

namespace dlock::test {

/// A loopback TCP port nobody listens on right now (bound to port 0, then
/// closed; a harness retries with another port if the server cannot bind it).
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("free_loopback_port: socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("free_loopback_port: bind() failed");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

/// A free loopback port for a Redis Cluster node, whose cluster bus listens
/// on port + 10000: redis-server refuses a port above 55535 ("Redis port
/// number too high"), which the kernel hands out about one time in five. Both
/// ports are free right now (the harness still retries if the server fails).
inline int free_cluster_port() {
  const auto bindable = [](int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
  };
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = free_loopback_port();
    if (port <= 55535 && bindable(port + 10000)) return port;
  }
  throw std::runtime_error("free_cluster_port: no port with a free bus port (+10000)");
}

/// A loopback socket that listens and never accepts or answers: the kernel
/// completes TCP handshakes into its backlog, nothing ever speaks.
class BlackHole {
 public:
  BlackHole() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 64) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(fd_);
      throw std::runtime_error("BlackHole: cannot listen on loopback");
    }
    port_ = ntohs(a.sin_port);
  }
  BlackHole(const BlackHole&) = delete;
  BlackHole& operator=(const BlackHole&) = delete;
  ~BlackHole() { ::close(fd_); }
  [[nodiscard]] int port() const noexcept { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace dlock::test
