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

#include <boost/asio.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// One direction of a connection: reads from `from`, writes to `to` after the delay.
class Pump : public std::enable_shared_from_this<Pump> {
 public:
  Pump(std::shared_ptr<tcp::socket> from, std::shared_ptr<tcp::socket> to, Clock::duration delay)
      : from_(std::move(from)), to_(std::move(to)), delay_(delay), timer_(from_->get_executor()) {}

  void start() { read(); }

 private:
  struct Chunk {
    Clock::time_point due;
    std::vector<char> bytes;
  };

  void read() {
    from_->async_read_some(
        asio::buffer(buffer_), [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
          if (ec) return self->close();
          self->queue_.push_back(Chunk{Clock::now() + self->delay_, {self->buffer_.data(), self->buffer_.data() + n}});
          if (!self->busy_) self->schedule();
          self->read();
        });
  }

  // Waits for the first queued chunk's time, then writes every chunk due by then.
  void schedule() {
    busy_ = true;
    timer_.expires_at(queue_.front().due);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec) return self->close();
      self->out_.clear();
      const auto now = Clock::now();
      while (!self->queue_.empty() && self->queue_.front().due <= now) {
        auto& b = self->queue_.front().bytes;
        self->out_.insert(self->out_.end(), b.begin(), b.end());
        self->queue_.pop_front();
      }
      asio::async_write(*self->to_, asio::buffer(self->out_), [self](boost::system::error_code wec, std::size_t) {
        if (wec) return self->close();
        if (self->queue_.empty()) {
          self->busy_ = false;
        } else {
          self->schedule();
        }
      });
    });
  }

  void close() {
    boost::system::error_code ignored;
    from_->close(ignored);
    to_->close(ignored);
    timer_.cancel();
  }

  std::shared_ptr<tcp::socket> from_, to_;
  Clock::duration delay_;
  asio::steady_timer timer_;
  std::array<char, 65536> buffer_{};
  std::deque<Chunk> queue_;
  std::vector<char> out_;
  bool busy_ = false;
};

void accept(tcp::acceptor& acceptor, unsigned short target, Clock::duration delay) {
  acceptor.async_accept([&acceptor, target, delay](boost::system::error_code ec, tcp::socket client) {
    if (!ec) {
      auto down = std::make_shared<tcp::socket>(std::move(client));
      auto up = std::make_shared<tcp::socket>(acceptor.get_executor());
      boost::system::error_code cec;
      up->connect(tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), target), cec);
      if (!cec) {
        up->set_option(tcp::no_delay(true));
        down->set_option(tcp::no_delay(true));
        std::make_shared<Pump>(down, up, delay)->start();
        std::make_shared<Pump>(up, down, delay)->start();
      }
    }
    accept(acceptor, target, delay);
  });
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::fprintf(stderr, "usage: latency_proxy DELAY_US LISTEN_PORT:TARGET_PORT...\n");
    return 2;
  }
  const Clock::duration delay = std::chrono::microseconds(std::stol(argv[1]));
  ::prctl(PR_SET_TIMERSLACK, 1UL);  // wake at the due time, not up to 50 us later
  asio::io_context io;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  for (int i = 2; i < argc; ++i) {
    const std::string spec = argv[i];
    const auto colon = spec.find(':');
    const auto listen = static_cast<unsigned short>(std::stoi(spec.substr(0, colon)));
    const auto target = static_cast<unsigned short>(std::stoi(spec.substr(colon + 1)));
    acceptors.push_back(std::make_unique<tcp::acceptor>(
        io, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), listen), /*reuse_address=*/true));
    accept(*acceptors.back(), target, delay);
  }
  std::printf("ready\n");
  std::fflush(stdout);
  io.run();
} catch (const std::exception& e) {
  std::fprintf(stderr, "latency_proxy: %s\n", e.what());
  return 1;
}
