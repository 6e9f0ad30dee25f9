// Internal: post_outcome(), how an in-process backend completes an
// AsyncBackend operation (backend.hpp): the operation is a short critical
// section run at once, and its outcome (the exception it threw, or its
// result) goes to the completion through the caller's executor, never inside
// the initiating call.
#pragma once

#include <exception>
#include <optional>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>

namespace dlock::detail {

/// Runs `op()` now and posts `done(error, result)` to `ex` (a default R when
/// `op` threw).
template <class Done, class Op>
void post_outcome(const boost::asio::any_io_executor& ex, Done done, Op op) {
  using R = decltype(op());
  std::exception_ptr error;
  std::optional<R> result;
  try {
    result.emplace(op());
  } catch (...) {
    error = std::current_exception();
  }
  boost::asio::post(ex, [done = std::move(done), error, result = std::move(result)]() mutable {
    done(error, result ? std::move(*result) : R{});
  });
}

}  // namespace dlock::detail
