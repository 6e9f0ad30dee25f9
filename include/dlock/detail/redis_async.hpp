// Internal: the asynchronous side of the Redis client, for the AsyncBackend
// operations of RedisBackend and RedlockBackend (docs/async.md). Requests go
// out on links found by RedisClient::async_route() (pipelined links shared
// by every asynchronous request, opened without blocking; with Sentinel to
// the current primary, with Cluster to the slot's primary) and complete on the
// transport's I/O thread; the backends post their results to the caller's
// executor. Nothing here blocks a thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
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
#include "redis_cluster.hpp"
#include "redis_protocol.hpp"

namespace dlock::detail {

/// Where a RedisClient's asynchronous requests go, found without blocking
/// (RedisClient::async_route(); src/redis/redis_async_ha.cpp):
///   - one server: its shared links (RedisClient::shared_link());
///   - Sentinel: shared links to the primary, found as SentinelClient::open()
///     finds it (every sentinel asked SENTINEL MASTER, the highest epoch of
///     a majority by redis_proto::choose_primary, ROLE checked, adopted)
///     but with every connection and request asynchronous; found again after
///     a +switch-master, a connection error or a READONLY/MASTERDOWN reply;
///   - Cluster: the shared links of the slot's primary (a RedisClient per
///     node, ClusterClient::node_at), the slot map read with CLUSTER SLOTS on
///     a shared link when none is known, and again after MOVED, READONLY,
///     CLUSTERDOWN or a connection error.
/// Callbacks run inside the call or on the I/O thread and must not block.
/// Thread-safe; safe to use after its client is gone (requests then fail
/// with ConnectionError).
class AsyncRoute : public std::enable_shared_from_this<AsyncRoute> {
 public:
  /// A link to send on and the host it reaches (for a redirect's empty
  /// host), or the error that kept one from being found.
  using Got = std::function<void(std::shared_ptr<RedisLink> link, std::string host, std::exception_ptr error)>;
  explicit AsyncRoute(RedisClient& client);
  AsyncRoute(const AsyncRoute&) = delete;
  AsyncRoute& operator=(const AsyncRoute&) = delete;
  ~AsyncRoute();

  /// A link to the server serving `route_key` (only Cluster looks at it).
  void get(std::string_view route_key, Got got);
  /// Cluster: a link to the node at host:port (a redirect's target).
  void get_at(const std::string& host, std::uint16_t port, Got got);
  [[nodiscard]] bool cluster() const noexcept { return kind_ == Kind::cluster; }
  /// A request on `link` failed with a connection error, or was refused as
  /// not the primary: Sentinel finds the primary again for the next request,
  /// Cluster reads the slot map again, one server's link is closed (the next
  /// one resolves the name again). `link` may be null (Cluster: refresh).
  void failed(const std::shared_ptr<RedisLink>& link) noexcept;
  /// Cluster: a MOVED followed (the map patched, read again), an ASK followed.
  void moved(const redis_proto::Redirect& to, std::string_view sender_host) noexcept;
  void asked() noexcept;
  /// Sentinel: a +switch-master was heard.
  void switched() noexcept;
  /// The client is being destroyed: later requests fail, links are closed.
  void detach() noexcept;

  struct Resolve;  // Sentinel: one asynchronous search for the primary
  struct Refresh;  // Cluster: one asynchronous CLUSTER SLOTS

 private:
  enum class Kind { one, sentinel, cluster };
  // Runs fn(client) under life_mu_; throws ConnectionError once detached.
  template <class F>
  auto with_client(F&& fn);
  void finish_resolve(std::shared_ptr<RedisLink> link, std::optional<RedisOptions> primary, std::exception_ptr error);
  void refresh_then(std::function<void()> then);
  void finish_refresh();

  const Kind kind_;
  const std::string endpoint_;
  std::mutex life_mu_;
  RedisClient* client_;  // under life_mu_; null once detached
  std::mutex mu_;
  // Sentinel (under mu_): the primary found, the shared links to it.
  std::optional<RedisOptions> primary_;
  std::vector<std::shared_ptr<RedisLink>> links_;
  std::size_t next_ = 0;
  pid_t pid_ = 0;
  bool resolving_ = false;
  std::vector<Got> waiting_;
  std::shared_ptr<RedisLink> probe_;  // the link being checked, closed by detach()
  // Cluster (under mu_): one refresh at a time, and what waits for it.
  bool refreshing_ = false;
  std::vector<std::function<void()>> after_refresh_;
};

/// fan_out() (redis_client.hpp) without waiting: batches[i] to nodes[i] for
/// every i at once (empty batches skipped), pipelined on a shared link per
/// node found by its AsyncRoute (a Cluster routes by the first call's first
/// key: a batch's keys must share a slot), with one EVAL resend of calls
/// answered NOSCRIPT, one resend on a new link after READONLY/MASTERDOWN (as
/// run_scripts() does), and a Cluster's MOVED/ASK followed for a one-call
/// batch. With a `timeout` (Redlock's rounds), one deadline from now bounds
/// every node (its connect included), and a Cluster node is refused
/// (InvalidArgument, as the blocking fan_out() refuses it). `done`
/// runs once with an outcome per node, on the I/O thread (or inside the call
/// when no node was sent anything); it must not block. With `ex` (the
/// caller's executor), a batch that finds its link idle is written and read
/// on `ex` itself (RedisLink::send_here; `ex` from reactor_executor(): FanOut
/// may outlive the context, a strand may not); `done` may then run there.
void async_fan_out(std::span<RedisClient* const> nodes, std::vector<std::vector<redis_proto::ScriptCall>> batches,
                   std::optional<std::chrono::milliseconds> timeout, std::string what, std::string deadline_name,
                   std::function<void(std::vector<RedisOutcome>)> done,
                   std::optional<boost::asio::any_io_executor> ex = std::nullopt);

/// A backend operation's completion `done(error, result)`, posted to `ex`
/// from the I/O thread. `done` (and the operation state it holds) is kept
/// by the executor's context, not by the request in flight: if the context
/// is destroyed first, `done` is destroyed with it, on that thread, while the
/// objects the operation refers to (its Lock) still exist (docs/async.md,
/// "When the io_context stops"). Thread-safe.
template <class R>
class ResultCompletion {
 public:
  using Done = std::function<void(std::exception_ptr, R)>;
  ResultCompletion(const boost::asio::any_io_executor& ex, Done done)
      : work_(ex, std::make_shared<Done>(std::move(done))) {}
  void post(std::exception_ptr error, R result) const {
    work_.post_held<Done>([error, result = std::move(result)](Done& done) mutable { done(error, std::move(result)); });
  }
  /// post(), or `done` at once when called from the completion of a caller's
  /// own exchange (RedisLink::send_here) on this executor: no second trip
  /// through the executor's queue.
  void complete(std::exception_ptr error, R result) const {
    if (!take_caller_completion()) return post(error, std::move(result));
    work_.dispatch_held<Done>(
        [error, result = std::move(result)](Done& done) mutable { done(error, std::move(result)); });
  }

 private:
  ExecutorCompletion work_;
};

/// Calls `done(error, result)` through `ex` (never inside the caller); see
/// async_work.hpp for what happens when the executor's context is gone.
template <class R>
void post_result(const ExecutorCompletion& ex, const std::function<void(std::exception_ptr, R)>& done,
                 std::exception_ptr error, R result) {
  ex.post([done, error, result = std::move(result)]() mutable { done(error, std::move(result)); });
}

}  // namespace dlock::detail
