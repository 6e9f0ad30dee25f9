// Redlock's I/O: per-node idle non-blocking connections and the parallel
// fan-out driven by ppoll() on the calling thread.
#include <dlock/detail/redlock_io.hpp>

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <string>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace {

/// Idle connections older than this are polled for a close by the server before use.
constexpr std::chrono::milliseconds idle_check_after{10};

timespec to_timespec(std::chrono::steady_clock::duration d) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  timespec ts{};
  ts.tv_sec = static_cast<decltype(ts.tv_sec)>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<decltype(ts.tv_nsec)>(ns % 1'000'000'000);
  return ts;
}

bool is_noscript(const RedisValue& v) { return v.is_error() && v.str.rfind("NOSCRIPT", 0) == 0; }

// One node's part of a fan-out.
struct Io {
  RedlockNode* node = nullptr;
  const std::vector<ScriptCall>* calls = nullptr;
  std::unique_ptr<RedisConnection> conn;
  std::deque<std::ptrdiff_t> owed;    // the replies still to come, in order: -1 handshake, else the call's index
  std::vector<RedisValue> handshake;  // the handshake's replies
  std::vector<bool> resent;           // per call: already sent again with EVAL
  bool sent = false;                  // nothing left in the output buffer
  bool done = true;
};

void append_call(RedisConnection& c, const ScriptCall& call, bool by_sha) {
  const std::span<const std::string_view> keys(call.keys.data(), call.key_count);
  const std::span<const std::string_view> args(call.args.data(), call.arg_count);
  if (by_sha) {
    c.append_evalsha(call.script, keys, args);
  } else {
    c.append_eval(call.script, keys, args);
  }
}

// The error of a node that had not answered when the round's deadline
// passed: in doubt (TimeoutError) if its request was sent, else unreachable
// (ConnectionError: the connect or the handshake did not complete, nothing
// was asked of it). Issue 11 item 19; include/dlock/error.hpp.
std::exception_ptr missed_deadline(const RedisConnection& c, std::chrono::milliseconds timeout, std::string_view what) {
  if (c.request_sent())
    return std::make_exception_ptr(TimeoutError(fmt::format(
        "dlock: Redis at {} did not answer within the Redlock node_timeout {} during {}: the request was sent; its "
        "outcome there is unknown. The server may be overloaded, paused or unreachable",
        c.endpoint(), format_duration(timeout), what)));
  return std::make_exception_ptr(ConnectionError(fmt::format(
      "dlock: cannot connect to Redis at {}: {} within the Redlock node_timeout {} during {}; nothing was asked of "
      "it yet",
      c.endpoint(), c.connected() ? "it did not answer the handshake" : "the connect did not complete",
      format_duration(timeout), what)));
}

}  // namespace

// ---- RedlockNode ----

RedlockNode::RedlockNode(RedisOptions options)
    : options_(std::move(options)), endpoint_(redis_endpoint(options_)), pid_(::getpid()) {}

std::unique_ptr<RedisConnection> RedlockNode::take() {
  {
    std::lock_guard lk(mu_);
    if (pid_ != ::getpid()) {  // fork(): the parent's connections; dropped without sending anything
      idle_.clear();
      ++generation_;
      pid_ = ::getpid();
    }
    while (!idle_.empty()) {
      Idle idle = std::move(idle_.back());
      idle_.pop_back();
      const bool check = std::chrono::steady_clock::now() - idle.since >= idle_check_after;
      if (idle.generation == generation_ && !(check ? idle.connection->closed_by_server() : idle.connection->broken()))
        return std::move(idle.connection);
      // else dropped here: from before a failure, or closed by the server
    }
  }
  return std::make_unique<RedisConnection>(options_, endpoint_, RedisConnection::NonBlocking{},
                                           RedisConnection::Handshake{.identify = true, .facts = &facts_});
}

void RedlockNode::give_back(std::unique_ptr<RedisConnection> c) noexcept {
  std::unique_ptr<RedisConnection> drop;  // closed outside the mutex
  std::lock_guard lk(mu_);
  if (c == nullptr) return;
  if (c->inherited()) {  // opened by the parent before fork()
    drop = std::move(c);
    return;
  }
  if (c->broken()) {
    ++generation_;  // the other connections to this server are suspect too
    drop = std::move(c);
    return;
  }
  if (idle_.size() >= options_.pool_size) {
    drop = std::move(c);
    return;
  }
  try {
    idle_.push_back(Idle{std::move(c), generation_, std::chrono::steady_clock::now()});
  } catch (...) {  // out of memory: the connection is closed
  }
}

std::size_t RedlockNode::idle_connections() const {
  std::lock_guard lk(mu_);
  return idle_.size();
}

// ---- fan_out ----

std::vector<NodeReplies> fan_out(std::span<RedlockNode* const> nodes, std::span<const std::vector<ScriptCall>> batches,
                                 std::chrono::milliseconds timeout, std::string_view what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<NodeReplies> out(nodes.size());
  std::vector<Io> io(nodes.size());

  const auto fail = [&](std::size_t i, std::exception_ptr e) noexcept {
    out[i].error = std::move(e);
    io[i].done = true;
    if (io[i].conn) {
      io[i].conn->mark_broken();  // replies may be pending: never reuse it
      io[i].node->give_back(std::move(io[i].conn));
    }
  };
  // Takes the replies read so far; when all are in, judges the handshake,
  // resends NOSCRIPT calls once with EVAL, or finishes the node.
  const auto drain = [&](std::size_t i) {
    Io& n = io[i];
    while (!n.owed.empty()) {
      auto reply = n.conn->next_reply();
      if (!reply) return;
      const std::ptrdiff_t slot = n.owed.front();
      n.owed.pop_front();
      if (slot < 0) {
        n.handshake.push_back(std::move(*reply));
      } else {
        out[i].replies[static_cast<std::size_t>(slot)] = std::move(*reply);
      }
    }
    if (!n.handshake.empty()) {
      n.conn->check_handshake(n.handshake);
      n.handshake.clear();
    }
    bool again = false;
    for (std::size_t k = 0; k < n.calls->size(); ++k) {
      if (!n.resent[k] && is_noscript(out[i].replies[k])) {  // SCRIPT FLUSH since the connection loaded them
        append_call(*n.conn, (*n.calls)[k], false);
        n.owed.push_back(static_cast<std::ptrdiff_t>(k));
        n.resent[k] = true;
        again = true;
      }
    }
    if (again) {
      n.sent = n.conn->flush();
      return;
    }
    n.done = true;
    out[i].answered = std::chrono::steady_clock::now();
    n.node->give_back(std::move(n.conn));
  };

  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (i >= batches.size() || batches[i].empty()) continue;
    Io& n = io[i];
    n.node = nodes[i];
    n.calls = &batches[i];
    n.done = false;
    out[i].replies.resize(batches[i].size());
    n.resent.assign(batches[i].size(), false);
    try {
      n.conn = n.node->take();
      for (std::size_t h = n.conn->pending_handshake(); h > 0; --h) n.owed.push_back(-1);
      for (std::size_t k = 0; k < batches[i].size(); ++k) {
        append_call(*n.conn, batches[i][k], true);
        n.owed.push_back(static_cast<std::ptrdiff_t>(k));
      }
      n.sent = n.conn->flush();
    } catch (...) {
      fail(i, std::current_exception());
    }
  }

  std::vector<pollfd> fds;
  std::vector<std::size_t> index;
  fds.reserve(nodes.size());
  index.reserve(nodes.size());
  for (;;) {
    fds.clear();
    index.clear();
    for (std::size_t i = 0; i < io.size(); ++i) {
      if (io[i].done) continue;
      fds.push_back(pollfd{io[i].conn->fd(), static_cast<short>(POLLIN | (io[i].sent ? 0 : POLLOUT)), 0});
      index.push_back(i);
    }
    if (fds.empty()) break;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      for (std::size_t i : index) fail(i, missed_deadline(*io[i].conn, timeout, what));
      break;
    }
    const timespec ts = to_timespec(deadline - now);
    const int ready = ::ppoll(fds.data(), fds.size(), &ts, nullptr);
    if (ready < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      for (std::size_t i : index)
        fail(i, std::make_exception_ptr(
                    ConnectionError(fmt::format("dlock: poll() failed during {} ({})", what, std::strerror(err)))));
      break;
    }
    for (std::size_t k = 0; k < fds.size(); ++k) {
      const short ev = fds[k].revents;
      if (ev == 0) continue;
      const std::size_t i = index[k];
      try {
        if ((ev & POLLNVAL) != 0)
          throw ConnectionError(fmt::format("dlock: connection to Redis at {} has an invalid socket during {}",
                                            io[i].node->endpoint(), what));
        if (!io[i].sent && (ev & (POLLOUT | POLLERR | POLLHUP)) != 0) io[i].sent = io[i].conn->flush();
        if ((ev & (POLLIN | POLLERR | POLLHUP)) != 0) {
          io[i].conn->fill();
          drain(i);
        }
      } catch (...) {
        fail(i, std::current_exception());
      }
    }
  }
  return out;
}

}  // namespace dlock::detail
