// dlockctl: the operator tool for dlock's locks (docs/dlockctl.md).
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const int rc = dlockctl::run(
      args, std::cout, std::cerr, [](const char* n) { return std::getenv(n); }, ::isatty(STDOUT_FILENO) == 1);
  std::cout.flush();
  return rc;
}
