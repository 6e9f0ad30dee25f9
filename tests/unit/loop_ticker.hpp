// A test helper shared by the asynchronous tests: a 1 ms timer on the loop's
// thread whose worst lateness tells whether anything blocked that thread.
#pragma once

#include <algorithm>
#include <chrono>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

namespace dlock::test {

struct Ticker {
  using Clock = std::chrono::steady_clock;
  explicit Ticker(boost::asio::io_context& io) : timer(io) {}
  boost::asio::steady_timer timer;
  Clock::duration worst{};
  bool stop = false;
  int ticks = 0;
  void arm(Clock::time_point due) {
    timer.expires_at(due);
    timer.async_wait([this, due](const boost::system::error_code&) {
      worst = std::max(worst, Clock::now() - due);
      ++ticks;
      if (!stop) arm(Clock::now() + std::chrono::milliseconds(1));
    });
  }
  [[nodiscard]] long long worst_us() const {
    return std::chrono::duration_cast<std::chrono::microseconds>(worst).count();
  }
};

}  // namespace dlock::test
