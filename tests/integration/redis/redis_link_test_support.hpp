// Helpers of the transport's link tests (redis_link_fastpath_test,
// redis_link_async_test): a caller_io link's setup and a request.
#pragma once

#include <dlock/detail/redis_transport.hpp>

#include <atomic>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dlock::test {

/// A pooled-style link (the caller may do its own exchange on it), without scripts or the eviction check.
constexpr detail::RedisLinkSetup caller_io{.load_scripts = false, .check_eviction = false, .caller_io = true};

/// One command as a request named `what` in messages.
inline detail::RedisCall command(std::initializer_list<std::string_view> args, std::string what = "a test command") {
  detail::RedisCall c;
  c.request.push(args);
  c.what = std::move(what);
  return c;
}

/// Sender `t`: `rounds` bursts of `burst` ECHOs pipelined on `link` through
/// the I/O thread (send()), each reply checked against its request.
inline void send_pipelined_bursts(detail::RedisLink& link, int t, int rounds, int burst, std::atomic<int>& mismatches,
                                  std::atomic<int>& errors) {
  for (int round = 0; round < rounds; ++round) {
    detail::RedisGather g(static_cast<std::size_t>(burst));
    std::vector<std::string> sent;
    for (int i = 0; i < burst; ++i) {
      sent.push_back("s" + std::to_string(t) + "-" + std::to_string(round) + "-" + std::to_string(i));
      link.send(command({"ECHO", sent.back()}), g.slot(static_cast<std::size_t>(i)));
    }
    auto out = g.wait();
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (out[i].error) {
        ++errors;
      } else if (out[i].replies.size() != 1 || out[i].replies[0].str != sent[i]) {
        ++mismatches;
      }
    }
  }
}

/// A caller's `rounds` ECHOs on `link` (tagged `tag`), each its own exchange
/// (begin_here, counted in `here`) when the link is idle, else through the I/O
/// thread (send()), each reply checked against its request.
inline void echo_here_or_sent(detail::RedisLink& link, std::string_view tag, int rounds, std::atomic<int>& here,
                              std::atomic<int>& mismatches, std::atomic<int>& errors) {
  for (int i = 0; i < rounds; ++i) {
    const std::string mine = std::string(tag) + std::to_string(i);
    detail::RedisCall c = command({"ECHO", mine});
    detail::RedisOutcome o;
    if (link.begin_here(c)) {
      ++here;
      o = link.end_here();
    } else {
      detail::RedisGather g(1);
      link.send(std::move(c), g.slot(0));
      o = std::move(g.wait()[0]);
    }
    if (o.error) {
      ++errors;
    } else if (o.replies.size() != 1 || o.replies[0].str != mine) {
      ++mismatches;
    }
  }
}

}  // namespace dlock::test
