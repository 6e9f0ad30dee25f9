// Helpers of the transport's link tests (redis_link_fastpath_test,
// redis_link_async_test): a caller_io link's setup and a request, a link to a
// server of the test's own (to pause), a connection killed once it blocks,
// and a value read back on a fresh link.
#pragma once

#include <dlock/detail/redis_transport.hpp>
#include <dlock/redis_options.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "support/redis_server.hpp"

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

/// A server of the test's own and a caller_io link to it, opened and used
/// once (a PING): the in-doubt tests pause the server once the link is idle.
/// Options: the server's, with `command_timeout` (and `prefix` if given).
struct OwnServerLink {
  explicit OwnServerLink(std::chrono::milliseconds command_timeout, std::optional<std::string> prefix = std::nullopt)
      : options(options_of(server, command_timeout, std::move(prefix))),
        link(detail::RedisLink::open(options, caller_io)) {
    (void)link.exec(command({"PING"}));
  }
  static RedisOptions options_of(const RedisServer& s, std::chrono::milliseconds command_timeout,
                                 std::optional<std::string> prefix) {
    RedisOptions o = s.options();
    if (prefix) o.key_prefix = std::move(*prefix);
    o.command_timeout = command_timeout;
    return o;
  }
  RedisServer server;
  RedisOptions options;
  detail::RedisLink link;
};

/// Kills (CLIENT KILL ID) connection `id` of the server at `o` once CLIENT
/// LIST shows it blocked in a BLPOP (polled for about a second at most).
inline void kill_once_blocked_in_blpop(const RedisOptions& o, long long id) {
  detail::RedisLink other = detail::RedisLink::open(o, caller_io);
  for (int i = 0; i < 500; ++i) {  // until the pop is blocked on the server
    const auto list = other.exec(command({"CLIENT", "LIST", "ID", std::to_string(id)})).at(0).str;
    if (list.find("cmd=blpop") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  (void)other.exec(command({"CLIENT", "KILL", "ID", std::to_string(id)}));
}

/// The value of `key` on the server at `o`, read on a fresh link, then deleted.
inline std::string take_value(const RedisOptions& o, const std::string& key) {
  detail::RedisLink check = detail::RedisLink::open(o, caller_io);
  std::string value = check.exec(command({"GET", key})).at(0).str;
  (void)check.exec(command({"DEL", key}));
  return value;
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
