// The shared pub/sub connection: one background thread owns it and is the
// only user of its hiredis context; other threads talk to the thread through
// the channel table (under Core::mu) and an eventfd that wakes its poll().
#include <dlock/detail/redis_subscriber.hpp>

#include "sigpipe.hpp"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <dlock/detail/redis_node.hpp>
#include <dlock/error.hpp>

namespace dlock::detail {

using Clock = std::chrono::steady_clock;

struct RedisSubscriber::Channel {
  explicit Channel(std::string n) : name(std::move(n)) {}
  const std::string name;
  int refs = 0;                // live RedisSubscriptions
  bool sent = false;           // our last command for it on this connection was SUBSCRIBE
  int pending_acks = 0;        // SUBSCRIBEs sent and not yet acknowledged
  bool acked = false;          // the server confirmed the subscription and it is still wanted
  std::uint64_t releases = 0;  // messages received
};

struct RedisSubscriber::Core {
  Core(const RedisOptions& o, std::string ep) : options(o), endpoint(std::move(ep)) {}
  ~Core() {
    if (efd >= 0) ::close(efd);
  }

  const RedisOptions options;
  const std::string endpoint;

  std::mutex mu;
  std::condition_variable cv;  // acknowledgements and messages
  std::unordered_map<std::string, std::shared_ptr<Channel>> channels;
  bool stop = false;
  bool started = false;
  bool connected = false;
  bool kicked = false;         // a new subscription wants the connection now
  std::uint64_t failures = 0;  // connection attempts failed or connections lost: pending subscribes give up
  int efd = -1;
  std::thread thread;

  void kick() noexcept {
    const std::uint64_t one = 1;
    if (efd >= 0) {
      [[maybe_unused]] const auto n = ::write(efd, &one, sizeof one);
    }
  }

  void run() noexcept;

 private:
  // Thread-only state.
  std::unique_ptr<RedisConnection> conn_;
  Clock::time_point next_connect_{};
  std::optional<Clock::time_point> acks_due_;  // when the oldest unacknowledged SUBSCRIBE times out

  void drop() noexcept;
  bool flush() noexcept;
  void on_reply(const redisReply* r);
};

void RedisSubscriber::Core::drop() noexcept {
  conn_.reset();
  acks_due_.reset();
  next_connect_ = Clock::now() + std::chrono::seconds(1);
  std::lock_guard lk(mu);
  connected = false;
  ++failures;
  cv.notify_all();
  for (auto& [name, ch] : channels) {
    ch->sent = false;
    ch->pending_acks = 0;
    ch->acked = false;
  }
}

bool RedisSubscriber::Core::flush() noexcept {
  SigpipeGuard no_sigpipe;  // hiredis writes with write(): never let a dead server raise SIGPIPE
  int done = 0;
  while (!done) {
    if (redisBufferWrite(conn_->raw(), &done) != REDIS_OK) return false;
  }
  return true;
}

void RedisSubscriber::Core::on_reply(const redisReply* r) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING ||
      r->element[1]->type != REDIS_REPLY_STRING)
    return;
  const std::string_view kind(r->element[0]->str, r->element[0]->len);
  const std::string name(r->element[1]->str, r->element[1]->len);
  std::lock_guard lk(mu);
  auto it = channels.find(name);
  if (it == channels.end()) return;
  Channel& ch = *it->second;
  if (kind == "message") {
    ++ch.releases;
    cv.notify_all();
  } else if (kind == "subscribe") {
    if (ch.pending_acks > 0) --ch.pending_acks;
    if (ch.pending_acks == 0 && ch.sent && ch.refs > 0) {
      ch.acked = true;
      cv.notify_all();
    }
    const bool any_pending =
        std::any_of(channels.begin(), channels.end(), [](const auto& c) { return c.second->pending_acks > 0; });
    if (!any_pending) acks_due_.reset();
  }
}

void RedisSubscriber::Core::run() noexcept {
  for (;;) {
    bool connect = false;
    {
      std::lock_guard lk(mu);
      if (stop) break;
      const bool wanted =
          std::any_of(channels.begin(), channels.end(), [](const auto& c) { return c.second->refs > 0; });
      connect = !conn_ && wanted && (kicked || Clock::now() >= next_connect_);
      kicked = false;
    }
    if (connect) {
      try {
        conn_ = std::make_unique<RedisConnection>(options, endpoint, false);
        std::lock_guard lk(mu);
        connected = true;
      } catch (...) {  // unreachable or refused: waiters time out; retried on the next subscription or in 1s
        conn_.reset();
        next_connect_ = Clock::now() + std::chrono::seconds(1);
        std::lock_guard lk(mu);
        ++failures;
        cv.notify_all();
      }
    }

    // Reconcile the server's subscriptions with the reference counts.
    std::vector<std::pair<bool, std::string>> commands;  // (subscribe?, channel)
    {
      std::lock_guard lk(mu);
      for (auto it = channels.begin(); it != channels.end();) {
        Channel& ch = *it->second;
        if (ch.refs == 0 && !ch.sent && ch.pending_acks == 0) {
          it = channels.erase(it);
          continue;
        }
        if (conn_) {
          if (ch.refs > 0 && !ch.sent) {
            commands.emplace_back(true, ch.name);
            ch.sent = true;
            ++ch.pending_acks;
          } else if (ch.refs == 0 && ch.sent) {
            commands.emplace_back(false, ch.name);
            ch.sent = false;
            ch.acked = false;
          }
        }
        ++it;
      }
    }
    if (conn_ && !commands.empty()) {
      bool ok = true;
      try {
        for (const auto& [subscribe, name] : commands) {
          const std::array<std::string_view, 2> args{subscribe ? "SUBSCRIBE" : "UNSUBSCRIBE", name};
          conn_->append(args);
          if (subscribe && !acks_due_) acks_due_ = Clock::now() + options.command_timeout;
        }
        ok = flush();
      } catch (...) {
        ok = false;
      }
      if (!ok) drop();
    }

    // Wait for replies, a kick, or a timeout.
    int timeout_ms = -1;
    const auto now = Clock::now();
    auto until = [&](Clock::time_point t) {
      return static_cast<int>(
          std::clamp<long long>(std::chrono::ceil<std::chrono::milliseconds>(t - now).count(), 0, 60'000));
    };
    if (conn_) {
      if (acks_due_) timeout_ms = until(*acks_due_);
    } else {
      std::lock_guard lk(mu);
      const bool wanted =
          std::any_of(channels.begin(), channels.end(), [](const auto& c) { return c.second->refs > 0; });
      if (wanted) timeout_ms = until(next_connect_);
    }
    std::array<pollfd, 2> fds{pollfd{efd, POLLIN, 0}, pollfd{conn_ ? conn_->raw()->fd : -1, POLLIN, 0}};
    const int n = ::poll(fds.data(), conn_ ? 2 : 1, timeout_ms);
    if (n > 0 && (fds[0].revents & POLLIN)) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto r = ::read(efd, &count, sizeof count);
    }
    if (n > 0 && conn_ && fds[1].revents != 0) {
      bool ok = redisBufferRead(conn_->raw()) == REDIS_OK;
      while (ok) {
        void* reply = nullptr;
        if (redisGetReplyFromReader(conn_->raw(), &reply) != REDIS_OK) {
          ok = false;
          break;
        }
        if (reply == nullptr) break;
        try {
          on_reply(static_cast<const redisReply*>(reply));
        } catch (...) {
          ok = false;
        }
        freeReplyObject(reply);
      }
      if (!ok) drop();
    }
    if (conn_ && acks_due_ && Clock::now() >= *acks_due_) drop();  // the server stopped answering
  }
  conn_.reset();
  std::lock_guard lk(mu);
  connected = false;
}

RedisSubscriber::RedisSubscriber(const RedisOptions& options, std::string endpoint)
    : core_(std::make_shared<Core>(options, std::move(endpoint))) {}

RedisSubscriber::~RedisSubscriber() {
  {
    std::lock_guard lk(core_->mu);
    core_->stop = true;
  }
  core_->kick();
  if (core_->thread.joinable()) core_->thread.join();
  core_->cv.notify_all();
}

bool RedisSubscriber::connected() const {
  std::lock_guard lk(core_->mu);
  return core_->connected;
}

RedisSubscription RedisSubscriber::subscribe(std::string channel) {
  Core& core = *core_;
  std::unique_lock lk(core.mu);
  if (!core.started) {
    core.efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (core.efd < 0) throw ConnectionError("dlock: cannot create an eventfd for the Redis pub/sub thread");
    core.thread = std::thread([c = core_.get()] { c->run(); });
    core.started = true;
  }
  auto it = core.channels.find(channel);
  if (it == core.channels.end()) it = core.channels.emplace(channel, std::make_shared<Channel>(channel)).first;
  std::shared_ptr<Channel> ch = it->second;
  ++ch->refs;
  RedisSubscription sub(core_, ch, ch->releases, false);  // owns the reference from here on
  if (!ch->acked) {
    core.kicked = true;
    core.kick();
    const auto wait = core.options.connect_timeout + core.options.command_timeout;
    const std::uint64_t failures = core.failures;
    core.cv.wait_for(lk, wait, [&] { return ch->acked || core.stop || core.failures != failures; });
  }
  sub.acknowledged_ = ch->acked;
  return sub;
}

// ---- RedisSubscription ----

void RedisSubscription::reset() noexcept {
  if (!core_) return;
  bool last = false;
  {
    std::lock_guard lk(core_->mu);
    last = --channel_->refs == 0;
  }
  if (last) core_->kick();
  core_.reset();
  channel_.reset();
}

RedisSubscription& RedisSubscription::operator=(RedisSubscription&& other) noexcept {
  if (this != &other) {
    reset();
    core_ = std::move(other.core_);
    channel_ = std::move(other.channel_);
    seen_ = other.seen_;
    acknowledged_ = other.acknowledged_;
  }
  return *this;
}

RedisSubscription::~RedisSubscription() { reset(); }

bool RedisSubscription::wait_for(std::chrono::nanoseconds d) {
  if (!core_) return false;
  const auto deadline = Clock::now() + std::min<std::chrono::nanoseconds>(d, std::chrono::hours(24));
  std::unique_lock lk(core_->mu);
  if (!core_->cv.wait_until(lk, deadline, [&] { return channel_->releases != seen_; })) return false;
  seen_ = channel_->releases;
  return true;
}

}  // namespace dlock::detail
