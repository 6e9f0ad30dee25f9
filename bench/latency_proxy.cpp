// latency_proxy: TCP forwarding on loopback with a fixed one-way delay, so a
// benchmark can see what a network between client and servers costs when this
// kernel has no netem. For bench/parts/redlock.sh.
//
//   latency_proxy DELAY_US LISTEN_PORT:TARGET_PORT [LISTEN_PORT:TARGET_PORT...]
//
// Every byte read from either side is written to the other DELAY_US
// microseconds later (steady clock), in order; a round trip through the proxy
// costs 2 * DELAY_US more than a direct one, plus the proxy's own CPU. One
// thread serves all ports. Prints "ready" on stdout once every port listens;
// runs until killed. Targets are 127.0.0.1 only.
#include <sys/prctl.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "proxy_pump.hpp"  // tests/chaos: the forwarding core shared with chaos_proxy

namespace {

using namespace dlock::test_proxy;

void accept(tcp::acceptor& acceptor, unsigned short target, const Faults& delay) {
  acceptor.async_accept([&acceptor, target, &delay](boost::system::error_code ec, tcp::socket client) {
    if (!ec) (void)splice(std::move(client), target, delay);
    accept(acceptor, target, delay);
  });
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::fprintf(stderr, "usage: latency_proxy DELAY_US LISTEN_PORT:TARGET_PORT...\n");
    return 2;
  }
  Faults delay;
  delay.delay[0] = delay.delay[1] = std::chrono::microseconds(std::stol(argv[1]));
  ::prctl(PR_SET_TIMERSLACK, 1UL);  // wake at the due time, not up to 50 us later
  asio::io_context io;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  for (int i = 2; i < argc; ++i) {
    const std::string spec = argv[i];
    const auto colon = spec.find(':');
    const auto listen = static_cast<unsigned short>(std::stoi(spec.substr(0, colon)));
    const auto target = static_cast<unsigned short>(std::stoi(spec.substr(colon + 1)));
    acceptors.push_back(std::make_unique<tcp::acceptor>(io, loopback(listen), /*reuse_address=*/true));
    accept(*acceptors.back(), target, delay);
  }
  std::printf("ready\n");
  std::fflush(stdout);
  io.run();
} catch (const std::exception& e) {
  std::fprintf(stderr, "latency_proxy: %s\n", e.what());
  return 1;
}
