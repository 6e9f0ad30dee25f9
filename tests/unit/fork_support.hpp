// Test helper: run a function in a forked child and get back what it returns.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>

namespace dlock::test {

/// Forks; the child runs `child` (returning a std::string), sends the result
/// through a pipe and _exits, while this process runs `parent()` at the same
/// time. Returns the child's string, or nullopt if the child failed or did
/// not finish within `limit` of `parent()` returning (it is then killed).
/// Only the forking thread exists in the child: keep `child` simple.
template <class F, class G>
std::optional<std::string> in_child_while(F child, G parent, std::chrono::seconds limit = std::chrono::seconds(60)) {
  int fds[2];
  if (::pipe(fds) != 0) return std::nullopt;
  const pid_t pid = ::fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    ::close(fds[0]);
    const std::string out = child();
    const bool sent = ::write(fds[1], out.data(), out.size()) == static_cast<ssize_t>(out.size());
    ::_exit(sent ? 0 : 1);
  }
  ::close(fds[1]);
  parent();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::string got;
  bool in_time = true;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fds[0], POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
      in_time = false;
      ::kill(pid, SIGKILL);
      break;
    }
    char buf[256];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !in_time || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return std::nullopt;
  return got;
}

/// in_child_while(child) with nothing to do meanwhile.
template <class F>
std::optional<std::string> in_child(F child) {
  return in_child_while(child, [] {});
}

}  // namespace dlock::test
