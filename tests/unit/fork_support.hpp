// Test helper: run a function in a forked child and get back what it returns.
#pragma once

#include <optional>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

namespace dlock::test {

/// Forks; the child runs `child` (returning a std::string), sends the result
/// through a pipe and _exits. Returns that string, or nullopt if the child
/// failed. Only the forking thread exists in the child: keep `child` simple.
template <class F>
std::optional<std::string> in_child(F child) {
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
  std::string got;
  char buf[256];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return got;
}

}  // namespace dlock::test
