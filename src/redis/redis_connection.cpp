// Legacy hiredis connection (detail/redis_connection.hpp), being retired.
#include <dlock/detail/redis_connection.hpp>

#include "sigpipe.hpp"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include <fmt/format.h>

#include <dlock/detail/format.hpp>
#include <dlock/detail/sha1.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

namespace {

timeval to_timeval(std::chrono::milliseconds d) {
  timeval tv{};
  tv.tv_sec = static_cast<decltype(tv.tv_sec)>(d.count() / 1000);
  tv.tv_usec = static_cast<decltype(tv.tv_usec)>((d.count() % 1000) * 1000);
  return tv;
}

// TCP keepalive on a Redis connection: a peer that vanished without a reset
// (host down, partition) is noticed after about 30 s of silence (15 s idle,
// then 3 probes 5 s apart) instead of never. That matters for connections that
// wait without a command timeout: the pub/sub ones, and idle pooled ones.
// Best effort: a failure leaves the connection as it was.
void enable_keepalive(int fd) noexcept {
  const int on = 1, idle = 15, interval = 5, count = 3;
  (void)::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

RedisValue to_value(const redisReply* r) {
  RedisValue v;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      v.type = RedisValue::Type::integer;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      v.type = r->type == REDIS_REPLY_STRING   ? RedisValue::Type::string
               : r->type == REDIS_REPLY_STATUS ? RedisValue::Type::status
                                               : RedisValue::Type::error;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      v.type = RedisValue::Type::array;
      v.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i) v.elements.push_back(to_value(r->element[i]));
      break;
    default:
      v.type = RedisValue::Type::nil;
  }
  return v;
}

struct ReplyDeleter {
  void operator()(void* r) const noexcept { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<void, ReplyDeleter>;

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string number(long long v) { return std::to_string(v); }

// argv for hiredis: pointers and lengths of string_views.
struct Argv {
  std::vector<const char*> ptr;
  std::vector<std::size_t> len;
  void add(std::string_view s) {
    ptr.push_back(s.data());
    len.push_back(s.size());
  }
};

static_assert(sizeof(pid_t) == sizeof(int));

// The SHA-1 of each lock script (EVALSHA names a script by it), computed once.
const std::string& script_sha(RedisScript script) {
  static const auto shas = [] {
    std::array<std::string, redis_script_count> out;
    for (std::size_t i = 0; i < redis_script_count; ++i) out[i] = sha1_hex(redis_scripts[i]);
    return out;
  }();
  return shas[static_cast<std::size_t>(script)];
}

}  // namespace

using redis_proto::describe_auth_refusal;

// ---- RedisConnection ----

RedisConnection::RedisConnection(const RedisOptions& options, std::string endpoint, Handshake handshake)
    : endpoint_(std::move(endpoint)),
      connect_timeout_(options.connect_timeout),
      command_timeout_(options.command_timeout),
      username_(options.username),
      database_(options.database),
      handshake_(handshake),
      eviction_check_(options.eviction_check),
      pid_(::getpid()) {
  const timeval connect_tv = to_timeval(options.connect_timeout);
  ctx_ = options.unix_socket.empty() ? redisConnectWithTimeout(options.host.c_str(), options.port, connect_tv)
                                     : redisConnectUnixWithTimeout(options.unix_socket.c_str(), connect_tv);
  if (ctx_ == nullptr)
    throw ConnectionError(fmt::format("dlock: cannot connect to Redis at {}: out of memory", endpoint_));
  struct FreeOnThrow {
    RedisConnection* self;
    bool armed = true;
    ~FreeOnThrow() {
      if (armed) {
        redisFree(self->ctx_);
        self->ctx_ = nullptr;
      }
    }
  } guard{this};
  if (ctx_->err)
    connect_failed(options,
                   ctx_->err == REDIS_ERR_IO && (errno == EINPROGRESS || errno == ETIMEDOUT || errno == EAGAIN));
  if (options.unix_socket.empty()) enable_keepalive(ctx_->fd);
  // Bounds the handshake below by connect_timeout, then every command by command_timeout.
  if (redisSetTimeout(ctx_, connect_tv) != REDIS_OK) fail("setting the socket timeout");
  queue_handshake(options);
  // Read every reply before judging, so that the first error reported is the cause (AUTH before NOAUTH).
  std::vector<RedisValue> replies;
  replies.reserve(steps_.size());
  for (std::size_t i = 0; i < steps_.size(); ++i) replies.push_back(read_reply());
  check_handshake(replies);
  if (redisSetTimeout(ctx_, to_timeval(command_timeout_)) != REDIS_OK) fail("setting the socket timeout");
  handshake_done_ = true;
  guard.armed = false;
}

RedisConnection::RedisConnection(const RedisOptions& options, std::string endpoint, NonBlocking, Handshake handshake)
    : endpoint_(std::move(endpoint)),
      connect_timeout_(options.connect_timeout),
      command_timeout_(options.command_timeout),
      nonblocking_(true),
      username_(options.username),
      database_(options.database),
      handshake_(handshake),
      eviction_check_(options.eviction_check),
      pid_(::getpid()) {
  ctx_ = options.unix_socket.empty() ? redisConnectNonBlock(options.host.c_str(), options.port)
                                     : redisConnectUnixNonBlock(options.unix_socket.c_str());
  if (ctx_ == nullptr)
    throw ConnectionError(fmt::format("dlock: cannot connect to Redis at {}: out of memory", endpoint_));
  if (ctx_->err) {
    try {
      connect_failed(options, false);
    } catch (...) {
      redisFree(ctx_);
      ctx_ = nullptr;
      throw;
    }
  }
  if (options.unix_socket.empty()) enable_keepalive(ctx_->fd);
  queue_handshake(options);
  handshake_done_ = steps_.empty();
}

void RedisConnection::connect_failed(const RedisOptions& options, bool timed_out) {
  broken_ = true;
  throw ConnectionError(fmt::format(
      "dlock: cannot connect to Redis at {}: {}{}; nothing was sent. Check that redis-server is running there "
      "and that RedisOptions {} is right",
      endpoint_, ctx_->errstr,
      timed_out ? fmt::format(" (connect_timeout {})", format_duration(options.connect_timeout)) : std::string(),
      options.unix_socket.empty() ? "host and port" : "unix_socket"));
}

void RedisConnection::queue_handshake(const RedisOptions& options) {
  steps_.clear();
  if (!options.password.empty()) {
    if (options.username.empty()) {
      append(std::array<std::string_view, 2>{"AUTH", options.password});
    } else {
      append(std::array<std::string_view, 3>{"AUTH", options.username, options.password});
    }
    steps_.emplace_back(Step::auth, RedisScript::acquire);
  }
  const std::string db = number(options.database);
  if (options.database != 0) {
    append(std::array<std::string_view, 2>{"SELECT", db});
    steps_.emplace_back(Step::select, RedisScript::acquire);
  }
  if (handshake_.check_eviction && options.eviction_check != EvictionCheck::off) {
    append(std::array<std::string_view, 3>{"CONFIG", "GET", "maxmemory-policy"});
    steps_.emplace_back(Step::eviction, RedisScript::acquire);
  }
  if (handshake_.identify) {
    append(std::array<std::string_view, 2>{"INFO", "server"});
    steps_.emplace_back(Step::identify, RedisScript::acquire);
  }
  if (handshake_.load_scripts) {
    for (std::size_t i = 0; i < redis_script_count; ++i) {
      append(std::array<std::string_view, 3>{"SCRIPT", "LOAD", redis_scripts[i]});
      steps_.emplace_back(Step::script, static_cast<RedisScript>(i));
    }
  }
}

void RedisConnection::check_handshake(std::span<const RedisValue> replies) {
  const auto steps = std::move(steps_);
  steps_.clear();
  handshake_done_ = true;
  for (std::size_t i = 0; i < steps.size() && i < replies.size(); ++i) {
    const RedisValue& r = replies[i];
    switch (steps[i].first) {
      case Step::auth:
        if (r.is_error()) {
          throw ServerError(fmt::format("dlock: Redis at {} refused authentication{} ({}); check RedisOptions "
                                        "username and password",
                                        endpoint_,
                                        username_.empty() ? std::string(" with the password")
                                                          : fmt::format(" of user '{}'", username_),
                                        describe_auth_refusal(r.str)),
                            errc::auth);
        }
        break;
      case Step::select:
        if (r.is_error())
          throw ServerError(
              fmt::format("dlock: Redis at {} cannot select database {} ({}); check RedisOptions "
                          "database",
                          endpoint_, database_, r.str));
        break;
      case Step::eviction:
        judge_eviction(r);
        break;
      case Step::identify:
        if (r.is_error() && starts_with(r.str, "NOAUTH")) throw_if_error(r, endpoint_, "INFO server");
        // Refused (ACL, renamed): no run_id, and no duplicate check by it (docs/redlock.md).
        if (r.type == RedisValue::Type::string && handshake_.facts != nullptr) {
          if (auto id = parse_run_id(r.str); !id.empty()) handshake_.facts->set_run_id(std::move(id));
        }
        break;
      case Step::script: {
        const auto s = steps[i].second;
        if (r.is_error() && (starts_with(r.str, "NOPERM") || r.str.find("unknown command") != std::string::npos)) {
          // The ACL (or a renamed SCRIPT) refuses SCRIPT LOAD: call the script
          // by its SHA-1 anyway (another client may have loaded it), with the
          // EVAL fallback on NOSCRIPT, which loads it.
          sha_[static_cast<unsigned>(s)] = script_sha(s);
          break;
        }
        if (r.is_error()) throw_if_error(r, endpoint_, fmt::format("loading the {} script", redis_script_name(s)));
        if (r.type != RedisValue::Type::string)
          throw ServerError(fmt::format("dlock: unexpected reply to SCRIPT LOAD from Redis at {}", endpoint_));
        sha_[static_cast<unsigned>(s)] = r.str;
        break;
      }
    }
  }
}

void RedisConnection::judge_eviction(const RedisValue& r) {
  const EvictionVerdict v = judge_eviction_policy(r, endpoint_);
  using Kind = EvictionVerdict::Kind;
  if (v.kind == Kind::safe || eviction_check_ == EvictionCheck::off) return;
  if (v.kind == Kind::evicts && eviction_check_ == EvictionCheck::fail) throw ServerError("dlock: " + v.message);
  const std::string_view kind = v.kind == Kind::evicts ? "eviction" : "eviction-unknown";
  if (handshake_.facts != nullptr) {
    handshake_.facts->warn_once(kind, v.message);
  } else {
    OnceWarnings().warn(kind, v.message);  // no facts to remember it by: warned each time
  }
}

// Frees hiredis' memory and closes the fd; sends nothing (no QUIT), so a
// connection inherited through fork() is dropped without touching the parent's session.
RedisConnection::~RedisConnection() {
  if (ctx_ != nullptr) redisFree(ctx_);
}

bool RedisConnection::inherited() const noexcept { return pid_ != ::getpid(); }

void RedisConnection::fail(std::string_view doing) {
  broken_ = true;
  const int err = ctx_ != nullptr ? ctx_->err : REDIS_ERR_OTHER;
  const std::string detail = ctx_ != nullptr ? std::string(ctx_->errstr) : std::string("no connection");
  const bool timed_out = err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT);
  // Before the handshake is answered nothing was asked of the server: it
  // could not be reached (ConnectionError, FallbackBackend degrades). After
  // it, a request was sent: its outcome is unknown (a timeout is a
  // TimeoutError; a dropped connection stays a ConnectionError).
  if (!handshake_done_) {
    if (timed_out)
      throw ConnectionError(fmt::format(
          "dlock: cannot connect to Redis at {}: it accepted the connection but did not answer its handshake "
          "within connect_timeout {}; nothing was asked of it yet. The server may be overloaded or paused, or "
          "something other than Redis listens there",
          endpoint_, format_duration(connect_timeout_)));
    throw ConnectionError(fmt::format(
        "dlock: cannot connect to Redis at {}: the connection failed during its handshake ({}); nothing was asked "
        "of it yet. Check that redis-server is running there",
        endpoint_, detail));
  }
  if (timed_out)
    throw TimeoutError(fmt::format(
        "dlock: Redis at {} did not answer within command_timeout {} during {}: the request was sent; its outcome "
        "is unknown. The server may be overloaded, paused or unreachable",
        endpoint_, format_duration(command_timeout_), doing));
  if (err == REDIS_ERR_EOF)
    throw ConnectionError(fmt::format(
        "dlock: Redis at {} closed the connection during {} ({}): the request was sent; its outcome is unknown. "
        "The server may have restarted or dropped idle clients",
        endpoint_, doing, detail));
  throw ConnectionError(fmt::format(
      "dlock: connection to Redis at {} failed during {} ({}): the request was sent; its outcome is unknown", endpoint_,
      doing, detail));
}

void RedisConnection::queue(std::size_t argc, const char** argv, const std::size_t* lens) {
  if (!nonblocking_) {
    if (redisAppendCommandArgv(ctx_, static_cast<int>(argc), argv, lens) != REDIS_OK) fail("formatting a command");
    return;
  }
  char* cmd = nullptr;
  const int len = redisFormatCommandArgv(&cmd, static_cast<int>(argc), argv, lens);
  if (len < 0 || cmd == nullptr) fail("formatting a command");
  try {
    out_.append(cmd, static_cast<std::size_t>(len));
  } catch (...) {
    redisFreeCommand(cmd);
    throw;
  }
  redisFreeCommand(cmd);
}

void RedisConnection::append(std::span<const std::string_view> args) {
  Argv argv;
  argv.ptr.reserve(args.size());
  argv.len.reserve(args.size());
  for (auto a : args) argv.add(a);
  queue(args.size(), argv.ptr.data(), argv.len.data());
}

int RedisConnection::fd() const noexcept { return ctx_ != nullptr ? ctx_->fd : -1; }

bool RedisConnection::flush() {
  while (out_sent_ < out_.size()) {
    const ssize_t n = ::send(ctx_->fd, out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
    if (n > 0) {
      out_sent_ += static_cast<std::size_t>(n);
      sent_any_ = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;  // also: connect still in progress
    broken_ = true;
    const int err = n < 0 ? errno : EPIPE;
    if (!sent_any_)  // a non-blocking connect that failed: nothing went out
      throw ConnectionError(fmt::format(
          "dlock: cannot connect to Redis at {} ({}); nothing was sent. Check that redis-server is running there",
          endpoint_, std::strerror(err)));
    throw ConnectionError(fmt::format(
        "dlock: cannot send to Redis at {} ({}): the connection broke after a request may have been sent; its "
        "outcome is unknown. Check that redis-server is running there",
        endpoint_, std::strerror(err)));
  }
  out_.clear();
  out_sent_ = 0;
  return true;
}

void RedisConnection::fill() {
  if (redisBufferRead(ctx_) != REDIS_OK) fail("reading a reply");
}

std::optional<RedisValue> RedisConnection::next_reply() {
  void* raw = nullptr;
  if (redisGetReplyFromReader(ctx_, &raw) != REDIS_OK) fail("parsing a reply");
  if (raw == nullptr) return std::nullopt;
  ReplyPtr reply(raw);
  return to_value(static_cast<const redisReply*>(raw));
}

RedisValue RedisConnection::read_reply() {
  void* raw = nullptr;
  int rc;
  {
    SigpipeGuard no_sigpipe;  // redisGetReply first writes what append() queued
    rc = redisGetReply(ctx_, &raw);
  }
  if (rc != REDIS_OK || raw == nullptr) fail(ctx_->err ? "a command" : "a command (no reply)");
  ReplyPtr reply(raw);
  return to_value(static_cast<const redisReply*>(raw));
}

RedisValue RedisConnection::command(std::span<const std::string_view> args) {
  append(args);
  return read_reply();
}

void RedisConnection::append_script(bool by_sha, RedisScript script, std::span<const std::string_view> keys,
                                    std::span<const std::string_view> args) {
  const unsigned i = static_cast<unsigned>(script);
  char numkeys[8];
  const auto end = std::to_chars(numkeys, numkeys + sizeof numkeys, keys.size()).ptr;
  Argv argv;
  argv.ptr.reserve(3 + keys.size() + args.size());
  argv.len.reserve(3 + keys.size() + args.size());
  if (by_sha && !sha_[i].empty()) {
    argv.add("EVALSHA");
    argv.add(sha_[i]);
  } else {
    argv.add("EVAL");
    argv.add(redis_scripts[i]);
  }
  argv.add(std::string_view(numkeys, static_cast<std::size_t>(end - numkeys)));
  for (auto k : keys) argv.add(k);
  for (auto a : args) argv.add(a);
  queue(argv.ptr.size(), argv.ptr.data(), argv.len.data());
}

void RedisConnection::append_evalsha(RedisScript script, std::span<const std::string_view> keys,
                                     std::span<const std::string_view> args) {
  append_script(true, script, keys, args);
}

void RedisConnection::append_eval(RedisScript script, std::span<const std::string_view> keys,
                                  std::span<const std::string_view> args) {
  append_script(false, script, keys, args);
}

RedisValue RedisConnection::eval(RedisScript script, std::span<const std::string_view> keys,
                                 std::span<const std::string_view> args) {
  append_evalsha(script, keys, args);
  RedisValue r = read_reply();
  if (r.is_error() && starts_with(r.str, "NOSCRIPT")) {  // SCRIPT FLUSH since we connected
    append_eval(script, keys, args);
    r = read_reply();
  }
  return r;
}

bool RedisConnection::broken() noexcept {
  if (broken_ || ctx_ == nullptr || ctx_->err) broken_ = true;
  return broken_;
}

bool RedisConnection::closed_by_server() noexcept {
  if (broken()) return true;
  // An idle connection has nothing to read: readable means EOF (the server
  // closed it, e.g. restarted) or stray data; either way it is unusable.
  pollfd p{ctx_->fd, POLLIN, 0};
  if (::poll(&p, 1, 0) != 0) broken_ = true;
  return broken_;
}

}  // namespace dlock::detail
