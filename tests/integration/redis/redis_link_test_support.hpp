// Helpers of the transport's link tests (redis_link_fastpath_test,
// redis_link_async_test): a caller_io link's setup and a request.
#pragma once

#include <dlock/detail/redis_transport.hpp>

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

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

}  // namespace dlock::test
