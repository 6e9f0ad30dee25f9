// Internal: the asynchronous side of the Redis client, for the AsyncBackend
// operations of RedisBackend and RedlockBackend (docs/async.md). Requests go
// out on RedisClient::shared_link() (pipelined links shared by every
// asynchronous request, opened without blocking) and complete on the
// transport's I/O thread; the backends post their results to the caller's
// executor. Nothing here blocks a thread.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>

#include "async_work.hpp"
#include "redis_client.hpp"
#include "redis_protocol.hpp"

namespace dlock::detail {

/// fan_out() (redis_client.hpp) without waiting: batches[i] to nodes[i] for
/// every i at once (empty batches skipped), pipelined on a shared link per
/// node, with one EVAL resend of calls answered NOSCRIPT. With a `timeout`,
/// one deadline from now bounds every node (its connect included). `done`
/// runs once with an outcome per node, on the I/O thread (or inside the call
/// when no node was sent anything); it must not block.
void async_fan_out(std::span<RedisClient* const> nodes, std::vector<std::vector<redis_proto::ScriptCall>> batches,
                   std::optional<std::chrono::milliseconds> timeout, std::string what, std::string deadline_name,
                   std::function<void(std::vector<RedisOutcome>)> done);

/// Calls `done(error, result)` through `ex` (never inside the caller); see
/// async_work.hpp for what happens when the executor's context is gone.
template <class R>
void post_result(const ExecutorCompletion& ex, const std::function<void(std::exception_ptr, R)>& done,
                 std::exception_ptr error, R result) {
  ex.post([done, error, result = std::move(result)]() mutable { done(error, std::move(result)); });
}

}  // namespace dlock::detail
