// The pub/sub connections: one background thread owns them (one non-blocking
// connection per server, all in one poll()) and is the only user of their
// hiredis contexts; other threads talk to the thread through the channel
// table (under Core::mu) and an eventfd that wakes its poll().
#include <dlock/detail/redis_subscriber.hpp>

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <new>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <dlock/detail/redis_connection.hpp>
#include <dlock/error.hpp>
#include <fmt/format.h>

namespace dlock::detail {

using Clock = std::chrono::steady_clock;

struct RedisSubscriber::Channel {
  struct OnServer {
    bool sent = false;     // our last command for it on this server's connection was SUBSCRIBE
    int pending_acks = 0;  // SUBSCRIBEs sent and not yet acknowledged
    bool acked = false;    // the server confirmed the subscription and it is still wanted
    bool refused = false;  // the server answered a SUBSCRIBE with an error (e.g. NOPERM)
  };
  Channel(std::string n, std::size_t servers) : name(std::move(n)), on(servers) {}
  const std::string name;
  int refs = 0;                // live RedisSubscriptions
  std::vector<OnServer> on;    // per server
  std::uint64_t releases = 0;  // messages received, from any server
};

struct RedisSubscriber::Core {
  explicit Core(std::vector<Server> s)
      : servers(std::move(s)),
        state(servers.size()),
        links_(servers.size()),
        commands_(servers.size()),
        fds_(servers.size() + 1),
        polled_(servers.size()) {
    for (const Server& server : servers)
      wait = std::max(wait, server.options.connect_timeout + server.options.command_timeout);
  }
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;
  ~Core() {
    if (efd >= 0) ::close(efd);
  }

  // fork(): the child has a copy of this Core but not its thread, and its
  // mutex and condition variable may be copied in a locked or waited-on
  // state. A child never uses such a Core (see RedisSubscriber::current()):
  // it closes the fds, frees the connections without sending anything, and
  // keeps the Core alive for good (destroying the thread object or the
  // condition variable could terminate or block), one small leak per fork.
  [[nodiscard]] bool inherited() const noexcept { return pid != ::getpid(); }
  static void abandon(std::shared_ptr<Core> core) noexcept {
    if (core->efd >= 0) ::close(core->efd);
    core->efd = -1;
    for (Link& l : core->links_) l.conn.reset();
    (void)new (std::nothrow) std::shared_ptr<Core>(std::move(core));  // never destroyed
  }

  const pid_t pid = ::getpid();  // the process whose thread serves this Core
  const std::vector<Server> servers;
  std::chrono::milliseconds wait{0};  // how long subscribe() waits for acknowledgements

  struct ServerState {
    bool connected = false;        // handshake done
    std::uint64_t failures = 0;    // connection attempts failed or connections lost
    Clock::time_point retry_at{};  // down, and not reconnected before then (Link::next_connect)
  };

  std::mutex mu;
  std::condition_variable cv;  // acknowledgements, failures and messages
  std::unordered_map<std::string, std::shared_ptr<Channel>> channels;
  std::vector<ServerState> state;  // per server
  std::string refusal;             // the last error reply to a SUBSCRIBE, for last_refusal()
  bool stop = false;
  bool started = false;
  int efd = -1;
  std::thread thread;

  void kick() noexcept {
    const std::uint64_t one = 1;
    if (efd >= 0) {
      [[maybe_unused]] const auto n = ::write(efd, &one, sizeof one);
    }
  }

  [[nodiscard]] bool wanted() const {  // under mu
    return std::any_of(channels.begin(), channels.end(), [](const auto& c) { return c.second->refs > 0; });
  }

  void run() noexcept;

 private:
  // A SUBSCRIBE or UNSUBSCRIBE sent and not yet answered; each gets one reply, in order.
  struct Sent {
    bool subscribe;
    std::string channel;
    Clock::time_point due;  // answered by then, or the server stopped answering
  };
  // One server's connection. Thread-only.
  struct Link {
    std::unique_ptr<RedisConnection> conn;
    std::size_t handshake_owed = 0;  // replies still owed to the connection's handshake
    std::vector<RedisValue> handshake;
    bool flushed = true;  // nothing left to send
    Clock::time_point next_connect{};
    std::optional<Clock::time_point> connect_due;  // the handshake must be done by then
    std::deque<Sent> in_flight;
  };
  std::vector<Link> links_;
  // run()'s buffers, allocated up front so that its loop allocates only where it can recover.
  std::vector<std::vector<std::pair<bool, std::string>>> commands_;  // per server: (subscribe?, channel)
  std::vector<pollfd> fds_;                                          // the eventfd, then the polled links
  std::vector<std::size_t> polled_;                                  // fds_[k + 1] belongs to server polled_[k]

  void connect(std::size_t s) noexcept;
  void drop(std::size_t s) noexcept;
  void send(std::size_t s, const std::vector<std::pair<bool, std::string>>& commands) noexcept;
  void drain(std::size_t s);
  void on_reply(std::size_t s, const RedisValue& r);
};

void RedisSubscriber::Core::drop(std::size_t s) noexcept {
  Link& l = links_[s];
  l.conn.reset();
  l.handshake_owed = 0;
  l.handshake.clear();
  l.flushed = true;
  l.connect_due.reset();
  l.in_flight.clear();
  l.next_connect = Clock::now() + std::chrono::seconds(1);
  std::lock_guard lk(mu);
  state[s].connected = false;
  ++state[s].failures;
  state[s].retry_at = l.next_connect;
  for (auto& [name, ch] : channels) ch->on[s] = Channel::OnServer{};
  cv.notify_all();
}

void RedisSubscriber::Core::connect(std::size_t s) noexcept {
  Link& l = links_[s];
  try {
    const Server& server = servers[s];
    l.conn =
        std::make_unique<RedisConnection>(server.options, server.endpoint, RedisConnection::NonBlocking{},
                                          RedisConnection::Handshake{.load_scripts = false, .check_eviction = false});
    l.handshake_owed = l.conn->pending_handshake();
    l.handshake.clear();
    l.connect_due = Clock::now() + server.options.connect_timeout;
    l.flushed = l.conn->flush();
    if (l.handshake_owed == 0) {
      l.connect_due.reset();
      std::lock_guard lk(mu);
      state[s].connected = true;
    }
  } catch (...) {  // unreachable or refused: retried in 1 s at the earliest
    drop(s);
  }
}

void RedisSubscriber::Core::send(std::size_t s, const std::vector<std::pair<bool, std::string>>& commands) noexcept {
  Link& l = links_[s];
  try {
    for (const auto& [subscribe, name] : commands) {
      const std::array<std::string_view, 2> args{subscribe ? "SUBSCRIBE" : "UNSUBSCRIBE", name};
      l.conn->append(args);
      l.in_flight.push_back(
          Sent{subscribe, name, l.connect_due.value_or(Clock::now()) + servers[s].options.command_timeout});
    }
    l.flushed = l.conn->flush();
  } catch (...) {
    drop(s);
  }
}

void RedisSubscriber::Core::drain(std::size_t s) {
  Link& l = links_[s];
  while (l.conn) {
    auto reply = l.conn->next_reply();
    if (!reply) return;
    if (l.handshake_owed > 0) {
      l.handshake.push_back(std::move(*reply));
      if (--l.handshake_owed == 0) {
        l.conn->check_handshake(l.handshake);  // throws ServerError when AUTH or SELECT was refused
        l.handshake.clear();
        l.connect_due.reset();
        std::lock_guard lk(mu);
        state[s].connected = true;
      }
      continue;
    }
    on_reply(s, *reply);
  }
}

void RedisSubscriber::Core::on_reply(std::size_t s, const RedisValue& r) {
  using Type = RedisValue::Type;
  Link& l = links_[s];
  if (r.is_error()) {  // to the oldest SUBSCRIBE or UNSUBSCRIBE in flight (replies come in order)
    if (l.in_flight.empty()) return;
    const Sent sent = std::move(l.in_flight.front());
    l.in_flight.pop_front();
    if (!sent.subscribe) return;
    std::lock_guard lk(mu);
    try {
      refusal = fmt::format(
          "dlock: Redis at {} refused SUBSCRIBE to '{}' ({}); waiters are not woken by its releases of that lock "
          "(check the ACL user's channel permissions)",
          servers[s].endpoint, sent.channel, r.str);
    } catch (...) {  // out of memory: the refusal still counts, unreported
    }
    auto it = channels.find(sent.channel);
    if (it == channels.end()) return;
    Channel::OnServer& on = it->second->on[s];
    if (on.pending_acks > 0) --on.pending_acks;
    on.refused = true;  // kept (not resent) until the channel is unsubscribed or the connection lost
    cv.notify_all();
    return;
  }
  if (r.type != Type::array || r.elements.size() != 3 || r.elements[0].type != Type::string ||
      r.elements[1].type != Type::string)
    return;
  const std::string& kind = r.elements[0].str;
  if ((kind == "subscribe" || kind == "unsubscribe") && !l.in_flight.empty()) l.in_flight.pop_front();
  std::lock_guard lk(mu);
  auto it = channels.find(r.elements[1].str);
  if (it == channels.end()) return;
  Channel& ch = *it->second;
  if (kind == "message") {
    ++ch.releases;
    cv.notify_all();
  } else if (kind == "subscribe") {
    Channel::OnServer& on = ch.on[s];
    if (on.pending_acks > 0) --on.pending_acks;
    if (on.pending_acks == 0 && on.sent) {  // also with no references left: reconcile unsubscribes then
      on.acked = true;
      cv.notify_all();
    }
  }
}

void RedisSubscriber::Core::run() noexcept {
  const std::size_t n = servers.size();
  for (;;) {
    bool want = false;
    {
      std::lock_guard lk(mu);
      if (stop) break;
      want = wanted();
    }
    if (want) {  // at most one connection attempt per second per server, also when subscriptions arrive
      const auto now = Clock::now();
      for (std::size_t s = 0; s < n; ++s)
        if (!links_[s].conn && now >= links_[s].next_connect) connect(s);
    }

    // Reconcile each server's subscriptions with the reference counts.
    bool retry = false;
    try {
      std::lock_guard lk(mu);
      for (auto it = channels.begin(); it != channels.end();) {
        Channel& ch = *it->second;
        if (ch.refs == 0 &&
            std::none_of(ch.on.begin(), ch.on.end(), [](const auto& on) { return on.sent || on.pending_acks > 0; })) {
          it = channels.erase(it);
          continue;
        }
        for (std::size_t s = 0; s < n; ++s) {
          if (!links_[s].conn) continue;
          Channel::OnServer& on = ch.on[s];
          if (ch.refs > 0 && !on.sent) {
            commands_[s].emplace_back(true, ch.name);
            on.sent = true;
            ++on.pending_acks;
          } else if (ch.refs == 0 && on.sent) {
            commands_[s].emplace_back(false, ch.name);
            on.sent = false;
            on.acked = false;
            on.refused = false;
          }
        }
        ++it;
      }
    } catch (...) {  // out of memory: the commands not queued are queued on a later round
      retry = true;
    }
    for (std::size_t s = 0; s < n; ++s) {
      if (commands_[s].empty()) continue;
      if (links_[s].conn) send(s, commands_[s]);
      commands_[s].clear();
    }

    // Wait for replies, a kick, or the next deadline.
    int timeout_ms = -1;
    std::size_t nfds = 1;
    {
      const auto now = Clock::now();
      const auto consider = [&](Clock::time_point t) {
        const int ms = static_cast<int>(
            std::clamp<long long>(std::chrono::ceil<std::chrono::milliseconds>(t - now).count(), 0, 60'000));
        timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms);
      };
      if (retry) consider(now + std::chrono::milliseconds(100));
      {
        std::lock_guard lk(mu);
        want = wanted();
      }
      fds_[0] = pollfd{efd, POLLIN, 0};
      for (std::size_t s = 0; s < n; ++s) {
        const Link& l = links_[s];
        if (!l.conn) {
          if (want) consider(l.next_connect);
          continue;
        }
        if (l.connect_due) consider(*l.connect_due);
        if (!l.in_flight.empty()) consider(l.in_flight.front().due);
        fds_[nfds] = pollfd{l.conn->fd(), static_cast<short>(POLLIN | (l.flushed ? 0 : POLLOUT)), 0};
        polled_[nfds - 1] = s;
        ++nfds;
      }
    }
    const int ready = ::poll(fds_.data(), nfds, timeout_ms);
    if (ready > 0 && (fds_[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] const auto r = ::read(efd, &count, sizeof count);
    }
    for (std::size_t k = 0; ready > 0 && k + 1 < nfds; ++k) {
      const short ev = fds_[k + 1].revents;
      const std::size_t s = polled_[k];
      Link& l = links_[s];
      if (ev == 0 || !l.conn) continue;
      try {
        if ((ev & POLLNVAL) != 0) throw ConnectionError("dlock: invalid pub/sub socket");
        if (!l.flushed && (ev & (POLLOUT | POLLERR | POLLHUP)) != 0) l.flushed = l.conn->flush();
        if ((ev & (POLLIN | POLLERR | POLLHUP)) != 0) {
          l.conn->fill();
          drain(s);
        }
      } catch (...) {  // reset, closed, refused, a handshake refusal, or out of memory
        drop(s);
      }
    }
    const auto now = Clock::now();
    for (std::size_t s = 0; s < n; ++s) {
      const Link& l = links_[s];
      if (l.conn &&
          ((l.connect_due && now >= *l.connect_due) || (!l.in_flight.empty() && now >= l.in_flight.front().due)))
        drop(s);  // the server stopped answering
    }
  }
  for (Link& l : links_) l.conn.reset();
  std::lock_guard lk(mu);
  for (ServerState& st : state) st.connected = false;
}

RedisSubscriber::RedisSubscriber(std::vector<Server> servers) : core_(std::make_shared<Core>(std::move(servers))) {}

RedisSubscriber::~RedisSubscriber() {
  if (core_->inherited()) {  // a child's copy: no thread to stop here
    Core::abandon(std::move(core_));
    return;
  }
  {
    std::lock_guard lk(core_->mu);
    core_->stop = true;
  }
  core_->kick();
  if (core_->thread.joinable()) core_->thread.join();
  core_->cv.notify_all();
}

std::shared_ptr<RedisSubscriber::Core> RedisSubscriber::current() const {
  std::lock_guard lk(core_mu_);
  if (core_->inherited()) {  // fork(): start over with no thread and no connection
    auto fresh = std::make_shared<Core>(core_->servers);
    Core::abandon(std::exchange(core_, std::move(fresh)));
  }
  return core_;
}

std::size_t RedisSubscriber::connected() const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  return static_cast<std::size_t>(
      std::count_if(core->state.begin(), core->state.end(), [](const auto& st) { return st.connected; }));
}

bool RedisSubscriber::started() const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  return core->started;
}

std::uint64_t RedisSubscriber::failures() const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  std::uint64_t total = 0;
  for (const auto& st : core->state) total += st.failures;
  return total;
}

std::string RedisSubscriber::last_refusal() const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  return core->refusal;
}

RedisSubscription RedisSubscriber::subscribe(std::string channel) {
  const std::shared_ptr<Core> core_ptr = current();
  Core& core = *core_ptr;
  const std::size_t n = core.servers.size();
  // Allocated before locking: nothing below may throw once the reference is
  // taken (unwinding would release it, relocking core.mu).
  std::vector<std::uint64_t> failures(n);
  std::unique_lock lk(core.mu);
  if (!core.started) {
    core.efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (core.efd < 0) throw ConnectionError("dlock: cannot create an eventfd for the Redis pub/sub thread");
    try {
      core.thread = std::thread([c = core_ptr.get()] { c->run(); });
    } catch (const std::exception& e) {  // std::system_error: out of threads or memory
      ::close(core.efd);
      core.efd = -1;
      throw ConnectionError(std::string("dlock: cannot start the Redis pub/sub thread: ") + e.what());
    }
    core.started = true;
  }
  auto it = core.channels.find(channel);
  if (it == core.channels.end()) it = core.channels.emplace(channel, std::make_shared<Channel>(channel, n)).first;
  std::shared_ptr<Channel> ch = it->second;
  ++ch->refs;
  RedisSubscription sub(core_ptr, ch, ch->releases);  // owns the reference from here on
  // Servers to wait for: not yet acknowledged or refused, and not down within
  // their reconnect backoff (those count as failed at once).
  const auto now = Clock::now();
  const auto settled = [&](std::size_t s) {
    const Channel::OnServer& on = ch->on[s];
    return on.acked || on.refused || core.state[s].failures != failures[s] || now < core.state[s].retry_at;
  };
  bool wait = false;
  for (std::size_t s = 0; s < n; ++s) {
    failures[s] = core.state[s].failures;
    wait = wait || !settled(s);
  }
  // The thread sends the SUBSCRIBEs, and with the first reference times the
  // reconnects of servers that are down.
  if (wait || ch->refs == 1) core.kick();
  if (wait) {
    // Every server either acknowledges, refuses or fails (a down one does so
    // at once, a paused one when its connect_timeout or command_timeout passes).
    core.cv.wait_for(lk, core.wait, [&] {
      if (core.stop) return true;
      for (std::size_t s = 0; s < n; ++s)
        if (!settled(s)) return false;
      return true;
    });
  }
  sub.acknowledged_ =
      static_cast<std::size_t>(std::count_if(ch->on.begin(), ch->on.end(), [](const auto& on) { return on.acked; }));
  return sub;
}

// ---- RedisSubscription ----

void RedisSubscription::reset() noexcept {
  if (!core_) return;
  if (core_->inherited()) {  // fork(): the parent's; its mutex is not ours to take
    core_.reset();
    channel_.reset();
    return;
  }
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
  if (core_->inherited()) {  // fork(): the parent's subscription never fires here; wait as if it did not
    std::this_thread::sleep_until(deadline);
    return false;
  }
  std::unique_lock lk(core_->mu);
  if (!core_->cv.wait_until(lk, deadline, [&] { return channel_->releases != seen_; })) return false;
  seen_ = channel_->releases;
  return true;
}

}  // namespace dlock::detail
