// The pub/sub connections: one transport link per server in subscriber mode
// (detail/redis_transport.hpp), driven by the transport's I/O thread, with a
// pure SubscriptionTable per server (detail/redis_protocol.hpp) deciding what
// to send and what each reply means. Callers' threads and the I/O thread meet
// under Core::mu; waiters sleep on Core::cv.
#include <dlock/detail/redis_subscriber.hpp>

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <dlock/detail/redis_protocol.hpp>
#include <dlock/detail/redis_transport.hpp>
#include <dlock/error.hpp>
#include <dlock/redis_options.hpp>
#include <fmt/format.h>

namespace dlock::detail {

using Clock = std::chrono::steady_clock;

// An asynchronous waiter of one subscription (RedisSubscription::on_release).
struct RedisSubscriber::Waker {
  std::function<void()> fn;  // pending, runs once
  std::uint64_t seen = 0;    // the channel's releases when it last ran (or was registered)
  bool acked = false;        // an acknowledgement came while no fn was pending: the next one runs at once
};

// A wake-one subscription's own wait (subscribe_one): woken alone.
struct RedisSubscriber::OneWaiter {
  std::condition_variable cv;
  bool woken = false;  // under the core's mu: a message was handed to it
};

struct RedisSubscriber::Channel {
  explicit Channel(std::string n) : name(std::move(n)) {}
  const std::string name;
  int refs = 0;                // live RedisSubscriptions
  std::uint64_t releases = 0;  // messages received, from any server
  // No reference left, still subscribed until idle_since + linger (it keeps
  // the last reference's want in the tables): a waiter back within it
  // subscribes without a round trip (RedisSubscriber::linger).
  bool lingering = false;
  Clock::time_point idle_since{};
  bool linger_timer = false;  // an end_linger() is scheduled
  // Targeted subscriptions (fair mode): a message whose payload names a
  // target wakes only that target's subscriptions; an empty one wakes all.
  struct Target {
    int refs = 0;
    std::uint64_t hits = 0;      // messages naming it
    std::condition_variable cv;  // its waiters (under the core's mu): woken alone
  };
  std::map<std::string, Target, std::less<>> targets;
  std::uint64_t unnamed = 0;  // messages naming nobody
  std::vector<std::shared_ptr<RedisSubscriber::Waker>> wakers;
  // Wake-one subscriptions (subscribe_one): those blocked in wait_for(),
  // longest first, and a message that found none blocked (kept for the next).
  int ones = 0;
  std::deque<RedisSubscriber::OneWaiter*> blocked;
  bool banked = false;

  // Under mu: one message for the wake-one subscriptions: it wakes the one
  // blocked longest, or waits for the next wait_for().
  void wake_one() noexcept {
    if (ones == 0) return;
    if (blocked.empty()) {
      banked = true;
      return;
    }
    OneWaiter* w = blocked.front();
    blocked.pop_front();
    w->woken = true;
    w->cv.notify_one();
  }

  // Under mu: a release, or what may have hidden one (a subscription renewed
  // after a lost connection: an empty payload). A payload that names a
  // target wakes that target's subscriptions only; an empty one wakes all.
  void released(const std::string& payload) noexcept {
    ++releases;
    if (payload.empty()) {
      ++unnamed;
      for (auto& [who, t] : targets) t.cv.notify_all();
    } else if (auto t = targets.find(payload); t != targets.end()) {
      ++t->second.hits;
      t->second.cv.notify_all();
    }
    wake_one();   // the blocking mutex waiters (subscribe_one): one of them
    wake(false);  // asynchronous waiters (on_release): untargeted
  }

  // Under mu: runs the pending wakers (a message, or an acknowledgement:
  // `ack`), or marks them for the next on_release().
  void wake(bool ack) noexcept {
    for (const auto& w : wakers) {
      if (!w->fn) {
        w->acked = w->acked || ack;
        continue;
      }
      auto fn = std::move(w->fn);
      w->fn = nullptr;
      w->seen = releases;
      w->acked = false;
      try {
        fn();
      } catch (...) {  // must not throw; a lost wake-up falls back to the waiter's backoff
      }
    }
  }
};

struct RedisSubscriber::Core : std::enable_shared_from_this<RedisSubscriber::Core> {
  explicit Core(std::vector<Server> s) : servers(std::move(s)), per(servers.size()) {
    for (const Server& server : servers)
      wait = std::max(wait, server.options.connect_timeout + server.options.command_timeout);
  }
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // fork(): the child has a copy of this Core but not the I/O thread, and its
  // mutex and condition variable may be copied in a locked or waited-on
  // state. A child never uses such a Core (see RedisSubscriber::current()):
  // it drops the links without sending anything and keeps the Core alive for
  // good (destroying the condition variable could block), one small leak per fork.
  [[nodiscard]] bool inherited() const noexcept { return pid != ::getpid(); }
  static void abandon(std::shared_ptr<Core> core) noexcept {
    for (PerServer& p : core->per) p.link.reset();                    // inherited links: the fd is closed, nothing sent
    (void)new (std::nothrow) std::shared_ptr<Core>(std::move(core));  // never destroyed
  }

  const pid_t pid = ::getpid();
  const std::vector<Server> servers;
  std::chrono::milliseconds wait{0};  // how long subscribe() waits for acknowledgements

  struct PerServer {
    redis_proto::SubscriptionTable table;
    std::optional<RedisLink> link;
    std::uint64_t link_id = 0;     // of the current link; callbacks of older ones are ignored
    bool connected = false;        // handshake done
    std::uint64_t failures = 0;    // connection attempts failed or connections lost
    Clock::time_point retry_at{};  // down, and not reconnected before then
    bool reconnect_scheduled = false;
    std::uint64_t sent = 0;  // SUBSCRIBE/UNSUBSCRIBE sent on the current link
    std::string located;     // the endpoint of the current link (Server::locate's answer)
  };

  std::mutex mu;
  std::condition_variable cv;  // acknowledgements, failures and messages
  std::unordered_map<std::string, std::shared_ptr<Channel>> channels;
  std::vector<PerServer> per;
  std::string refusal;  // the last error reply to a SUBSCRIBE, for last_refusal()
  bool stop = false;
  bool started = false;

  [[nodiscard]] bool wanted() const {  // under mu
    return std::any_of(channels.begin(), channels.end(),
                       [](const auto& c) { return c.second->refs > 0 || c.second->lingering; });
  }

  // Under mu: the last reference to `ch` went. It stays subscribed for
  // RedisSubscriber::linger (keeping that reference's want), then end_linger()
  // unsubscribes unless a subscription came back meanwhile.
  void start_linger(const std::shared_ptr<Channel>& ch) noexcept {
    ch->lingering = true;
    ch->idle_since = Clock::now();
    ch->banked = false;            // a wake kept for its wake-one waiters, all gone: not for the next ones
    if (ch->linger_timer) return;  // that one looks at idle_since when it fires
    ch->linger_timer = true;
    schedule(RedisSubscriber::linger, [w = std::weak_ptr<Channel>(ch)](Core& c) { c.end_linger(w.lock()); });
  }

  void end_linger(const std::shared_ptr<Channel>& ch) noexcept {  // under mu
    if (!ch) return;
    ch->linger_timer = false;
    const auto it = channels.find(ch->name);
    if (!ch->lingering || it == channels.end() || it->second != ch) return;
    const auto left = ch->idle_since + RedisSubscriber::linger - Clock::now();
    if (left > Clock::duration::zero()) {  // used and left again meanwhile: the rest of the new linger
      ch->linger_timer = true;
      schedule(std::chrono::ceil<std::chrono::milliseconds>(left),
               [w = std::weak_ptr<Channel>(ch)](Core& c) { c.end_linger(w.lock()); });
      return;
    }
    ch->lingering = false;
    channels.erase(it);
    for (std::size_t s = 0; s < per.size(); ++s) {
      per[s].table.unwant(ch->name);
      reconcile(s);  // UNSUBSCRIBE
    }
  }

  // Under mu: a link for server s if there is none and one is wanted, at most
  // one attempt per second (a timer retries later while wanted).
  void ensure_link(std::size_t s) noexcept {
    PerServer& p = per[s];
    if (stop || p.link || !wanted()) return;
    const auto now = Clock::now();
    if (now < p.retry_at) {
      if (!p.reconnect_scheduled) {
        p.reconnect_scheduled = true;
        schedule(std::chrono::ceil<std::chrono::milliseconds>(p.retry_at - now), [s](Core& c) {
          c.per[s].reconnect_scheduled = false;
          c.ensure_link(s);
        });
      }
      return;
    }
    const std::uint64_t id = ++p.link_id;
    const std::weak_ptr<Core> weak = weak_from_this();
    try {
      p.sent = 0;
      const std::optional<RedisOptions> at =
          servers[s].locate ? servers[s].locate() : std::optional<RedisOptions>(servers[s].options);
      if (!at) throw std::runtime_error("no server located yet");
      p.located = redis_endpoint(*at);
      p.link.emplace(RedisLink::open(
          *at, RedisLinkSetup{.load_scripts = false, .check_eviction = false},
          RedisLinkEvents{
              .push = [weak, s, id](RedisValue r) { with(weak, s, id, [&](Core& c) { c.on_push(s, r); }); },
              .up = [weak, s, id] { with(weak, s, id, [&](Core& c) { c.on_up(s); }); },
              .lost = [weak, s, id](std::exception_ptr) { with(weak, s, id, [&](Core& c) { c.on_lost(s); }); }}));
    } catch (...) {  // an unusable TLS setting, no server located, out of memory: a failed attempt
      p.link.reset();
      failed(s);
    }
  }

  // Runs fn under mu if the Core lives and link `id` is still server s's.
  template <class F>
  static void with(const std::weak_ptr<Core>& weak, std::size_t s, std::uint64_t id, F&& fn) {
    const auto core = weak.lock();
    if (!core) return;
    std::lock_guard lk(core->mu);
    if (core->stop || core->per[s].link_id != id || !core->per[s].link) return;
    fn(*core);
  }

  template <class F>
  void schedule(std::chrono::milliseconds delay, F fn) noexcept {
    try {
      redis_io_after(delay, [weak = weak_from_this(), fn = std::move(fn)] {
        const auto core = weak.lock();
        if (!core) return;
        std::lock_guard lk(core->mu);
        if (!core->stop) fn(*core);
      });
    } catch (...) {  // out of memory: the next subscribe() retries
    }
  }

  // Under mu: sends what server s's table says (SUBSCRIBE / UNSUBSCRIBE); a
  // server that leaves them unanswered for command_timeout is dropped.
  void reconcile(std::size_t s) noexcept {
    PerServer& p = per[s];
    if (!p.link || !p.connected) return;
    try {
      redis_proto::Request req = p.table.take_commands();
      if (req.empty()) return;
      p.sent += req.commands();
      const std::uint64_t target = p.sent, id = p.link_id;
      RedisCall call;
      call.request = std::move(req);
      call.what = "SUBSCRIBE";
      p.link->send(std::move(call), {});
      schedule(servers[s].options.command_timeout, [s, target, id](Core& c) {
        PerServer& q = c.per[s];
        if (q.link_id == id && q.link && q.sent - q.table.in_flight() < target) q.link->close();  // stopped answering
      });
    } catch (...) {  // out of memory: drop the link; the reconnect resubscribes
      if (p.link) p.link->close();
    }
  }

  void on_up(std::size_t s) {
    per[s].connected = true;
    reconcile(s);
    cv.notify_all();
  }

  void on_push(std::size_t s, const RedisValue& r) {
    PerServer& p = per[s];
    const redis_proto::PubSubEvent ev = p.table.on_reply(r);
    using K = redis_proto::PubSubEvent::Kind;
    switch (ev.kind) {
      case K::message:
        if (auto it = channels.find(ev.channel); it != channels.end()) it->second->released(ev.payload);
        break;
      case K::subscribed:
        if (auto it = channels.find(ev.channel); it != channels.end()) {
          // Renewed after a lost connection (a failover's too): a release
          // published meanwhile reached no one, so every kind of waiter
          // tries again as after a release instead of sleeping out its backoff.
          if (ev.renewed) {
            it->second->released({});
          } else {
            it->second->wake(true);
          }
        }
        break;
      case K::refused:
        try {
          refusal = fmt::format(
              "dlock: Redis at {} refused SUBSCRIBE to '{}' ({}); waiters are not woken by its releases of that "
              "lock (check the ACL user's channel permissions)",
              servers[s].endpoint, ev.channel, ev.payload);
        } catch (...) {  // out of memory: the refusal still counts, unreported
        }
        break;
      case K::unexpected:
        if (p.link) p.link->close();  // not a pub/sub reply: drop the connection
        return;
      default:
        break;
    }
    reconcile(s);  // a refusal or an ack may leave commands to send (a channel unwanted meanwhile)
    cv.notify_all();
  }

  // Under mu: relocate() for server s; a replaced link goes to `old`, to be
  // closed outside the lock.
  void relocate(std::size_t s, std::vector<std::optional<RedisLink>>& old) {
    PerServer& p = per[s];
    if (!servers[s].locate) return;
    if (!p.link) {  // down: the new location is tried now, not after the retry delay
      p.retry_at = {};
      ensure_link(s);
      return;
    }
    const std::optional<RedisOptions> at = servers[s].locate();
    if (!at || redis_endpoint(*at) == p.located) return;
    old.push_back(std::move(p.link));
    p.link.reset();
    p.connected = false;
    p.table.on_disconnect();
    p.retry_at = {};
    ensure_link(s);  // a new link_id: the old link's callbacks are ignored
    cv.notify_all();
  }

  void on_lost(std::size_t s) {
    per[s].link.reset();
    failed(s);
  }

  void failed(std::size_t s) noexcept {  // under mu
    PerServer& p = per[s];
    p.connected = false;
    p.table.on_disconnect();
    ++p.failures;
    p.retry_at = Clock::now() + std::chrono::seconds(1);
    ensure_link(s);  // schedules the reconnect while wanted
    cv.notify_all();
  }
};

// fork(): a child never takes mu (a parent thread may have held it inside
// relocate() at the fork) and never relocates through an inherited anchor;
// its subscriber reconnects where locate() says when its connection breaks.
struct RedisSubscriber::Anchor {
  const pid_t pid = ::getpid();
  std::mutex mu;
  RedisSubscriber* subscriber = nullptr;  // under mu; null once it is destroyed
  [[nodiscard]] bool inherited() const noexcept { return pid != ::getpid(); }
};

RedisSubscriber::RedisSubscriber(std::vector<Server> servers)
    : anchor_(std::make_shared<Anchor>()), core_(std::make_shared<Core>(std::move(servers))) {
  anchor_->subscriber = this;
}

void RedisSubscriber::relocate() noexcept {
  std::vector<std::optional<RedisLink>> old;
  try {
    const auto core = current();
    std::lock_guard lk(core->mu);
    if (core->stop) return;
    for (std::size_t s = 0; s < core->per.size(); ++s) core->relocate(s, old);
  } catch (...) {  // out of memory, or a locate() that threw: the reconnect after a loss still relocates
  }
  old.clear();  // closed outside the lock
}

std::function<void()> RedisSubscriber::relocator() const {
  return [anchor = std::weak_ptr<Anchor>(anchor_)] {
    const auto a = anchor.lock();
    if (!a || a->inherited()) return;
    std::lock_guard lk(a->mu);
    if (a->subscriber != nullptr) a->subscriber->relocate();
  };
}

RedisSubscriber::~RedisSubscriber() {
  if (!anchor_->inherited()) {
    std::lock_guard lk(anchor_->mu);  // no relocate() runs after this
    anchor_->subscriber = nullptr;
  }
  if (core_->inherited()) {  // a child's copy: nothing of it is ours to stop
    Core::abandon(std::move(core_));
    return;
  }
  std::vector<std::optional<RedisLink>> links;
  {
    std::lock_guard lk(core_->mu);
    core_->stop = true;
    for (auto& p : core_->per) {
      links.push_back(std::move(p.link));
      p.link.reset();
      p.connected = false;
    }
  }
  links.clear();  // closed outside the lock
  core_->cv.notify_all();
}

std::shared_ptr<RedisSubscriber::Core> RedisSubscriber::current() const {
  std::lock_guard lk(core_mu_);
  if (core_->inherited()) {  // fork(): start over with no connection
    auto fresh = std::make_shared<Core>(core_->servers);
    Core::abandon(std::exchange(core_, std::move(fresh)));
  }
  return core_;
}

std::size_t RedisSubscriber::connected() const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  return static_cast<std::size_t>(
      std::count_if(core->per.begin(), core->per.end(), [](const auto& p) { return p.connected; }));
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
  for (const auto& p : core->per) total += p.failures;
  return total;
}

bool RedisSubscriber::subscribed(const std::string& channel) const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  const auto it = core->channels.find(channel);
  if (it == core->channels.end() || (it->second->refs == 0 && !it->second->lingering)) return false;
  return std::all_of(core->per.begin(), core->per.end(), [&](const auto& p) { return p.table.ready(channel); });
}

std::string RedisSubscriber::last_refusal() const {
  const auto core = current();
  std::lock_guard lk(core->mu);
  return core->refusal;
}

RedisSubscription RedisSubscriber::subscribe(std::string channel, bool wait_for_ack) {
  return subscribe(std::move(channel), std::string(), wait_for_ack);
}

RedisSubscription RedisSubscriber::subscribe_targeted(std::string channel, std::string target) {
  return subscribe(std::move(channel), std::move(target), true);
}

RedisSubscription RedisSubscriber::subscribe_one(std::string channel) {
  return subscribe(std::move(channel), std::string(), true, true);
}

RedisSubscription RedisSubscriber::subscribe(std::string channel, std::string target, bool wait_for_ack, bool one) {
  const std::shared_ptr<Core> core_ptr = current();
  Core& core = *core_ptr;
  const std::size_t n = core.servers.size();
  // Allocated before locking: nothing below may throw once the reference is
  // taken (unwinding would release it, relocking core.mu).
  std::vector<std::uint64_t> failures(n);
  auto fresh = std::make_shared<Channel>(channel);
  auto one_waiter = one ? std::make_shared<OneWaiter>() : nullptr;
  std::unique_lock lk(core.mu);
  core.started = true;
  auto it = core.channels.find(channel);
  if (it == core.channels.end()) it = core.channels.emplace(channel, std::move(fresh)).first;
  std::shared_ptr<Channel> ch = it->second;
  if (!ch->lingering)
    for (auto& p : core.per) p.table.want(channel);  // may throw bad_alloc: before the reference is taken
  Channel::Target* t = target.empty() ? nullptr : &ch->targets[target];  // may throw too
  ch->lingering = false;  // a lingering channel's want is this reference's now
  ++ch->refs;
  if (t != nullptr) ++t->refs;
  if (one_waiter) ++ch->ones;
  RedisSubscription sub(core_ptr, ch, t != nullptr ? ch->unnamed + t->hits : ch->releases);  // owns the references
  sub.target_ = std::move(target);
  sub.hits_ = t != nullptr ? &t->hits : nullptr;
  sub.target_cv_ = t != nullptr ? &t->cv : nullptr;
  sub.one_ = std::move(one_waiter);
  for (std::size_t s = 0; s < n; ++s) {
    failures[s] = core.per[s].failures;
    core.ensure_link(s);
    core.reconcile(s);
  }
  // Servers to wait for: not yet acknowledged or refused, and not down within
  // their reconnect backoff (those count as failed at once).
  const auto now = Clock::now();
  const auto settled = [&](std::size_t s) {
    const Core::PerServer& p = core.per[s];
    return p.table.ready(ch->name) || p.table.refused(ch->name) || p.failures != failures[s] ||
           (!p.link && now < p.retry_at);
  };
  // Every server either acknowledges, refuses or fails (a down one does so
  // at once, a paused one when its connect_timeout or command_timeout passes).
  if (!wait_for_ack) return sub;
  core.cv.wait_for(lk, core.wait, [&] {
    if (core.stop) return true;
    for (std::size_t s = 0; s < n; ++s)
      if (!settled(s)) return false;
    return true;
  });
  sub.acknowledged_ = static_cast<std::size_t>(
      std::count_if(core.per.begin(), core.per.end(), [&](const auto& p) { return p.table.ready(ch->name); }));
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
  {
    std::lock_guard lk(core_->mu);
    if (hits_ != nullptr) {
      if (auto t = channel_->targets.find(target_); t != channel_->targets.end() && --t->second.refs == 0)
        channel_->targets.erase(t);
      hits_ = nullptr;
      target_cv_ = nullptr;
    }
    if (waker_) std::erase(channel_->wakers, waker_);
    if (one_) {
      --channel_->ones;
      if (std::exchange(holding_, false)) channel_->wake_one();  // woken but did not take it: the next one
    }
    if (--channel_->refs == 0 && !core_->stop && RedisSubscriber::linger > RedisSubscriber::linger.zero()) {
      core_->start_linger(channel_);  // the last reference: UNSUBSCRIBE after the linger
    } else {
      if (channel_->refs == 0) core_->channels.erase(channel_->name);
      for (std::size_t s = 0; s < core_->per.size(); ++s) {
        core_->per[s].table.unwant(channel_->name);
        core_->reconcile(s);  // UNSUBSCRIBE with the last reference
      }
    }
  }
  core_.reset();
  channel_.reset();
  waker_.reset();
  one_.reset();
}

RedisSubscription& RedisSubscription::operator=(RedisSubscription&& other) noexcept {
  if (this != &other) {
    reset();
    core_ = std::move(other.core_);
    channel_ = std::move(other.channel_);
    seen_ = other.seen_;
    acknowledged_ = other.acknowledged_;
    target_ = std::move(other.target_);
    hits_ = std::exchange(other.hits_, nullptr);
    target_cv_ = std::exchange(other.target_cv_, nullptr);
    waker_ = std::move(other.waker_);
    one_ = std::move(other.one_);
    holding_ = std::exchange(other.holding_, false);
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
  if (one_) return wait_one(lk, deadline);
  const auto count = [&] { return hits_ != nullptr ? channel_->unnamed + *hits_ : channel_->releases; };
  // A targeted subscription waits on its target's own condition variable, so
  // a release naming another waiter does not wake this thread at all.
  std::condition_variable& cv = target_cv_ != nullptr ? *target_cv_ : core_->cv;
  if (!cv.wait_until(lk, deadline, [&] { return count() != seen_; })) return false;
  seen_ = count();
  return true;
}

bool RedisSubscription::wait_one(std::unique_lock<std::mutex>& lk, std::chrono::steady_clock::time_point deadline) {
  // Waiting again after a wake: its attempt found the lock held, and that
  // holder's release wakes the next waiter; the wake was used.
  holding_ = false;
  RedisSubscriber::Channel& ch = *channel_;
  if (ch.banked) {  // a release while nobody waited
    ch.banked = false;
    holding_ = true;
    return true;
  }
  one_->woken = false;
  ch.blocked.push_back(one_.get());
  if (!one_->cv.wait_until(lk, deadline, [&] { return one_->woken; })) {
    std::erase(ch.blocked, one_.get());
    return false;
  }
  holding_ = true;
  return true;
}

void RedisSubscription::add_waker() {
  auto w = std::make_shared<RedisSubscriber::Waker>();
  w->seen = seen_;
  std::lock_guard lk(core_->mu);
  channel_->wakers.push_back(w);
  waker_ = std::move(w);
}

void RedisSubscription::on_release(std::function<void()> f) {
  if (!core_ || core_->inherited()) return;  // never fires (fork(): the parent's)
  if (!waker_) add_waker();
  {
    std::lock_guard lk(core_->mu);
    if (channel_->releases == waker_->seen && !waker_->acked) {
      waker_->fn = std::move(f);
      return;
    }
    waker_->seen = channel_->releases;
    waker_->acked = false;
    waker_->fn = nullptr;
  }
  f();  // a release (or an acknowledgement) since the last wake-up
}

void RedisSubscription::on_release_settled(std::function<void()> f, std::chrono::milliseconds settle) {
  if (!core_ || core_->inherited()) return;  // never fires (fork(): the parent's)
  if (!waker_) add_waker();
  on_release([core = std::weak_ptr<RedisSubscriber::Core>(core_), waker = std::weak_ptr<RedisSubscriber::Waker>(waker_),
              channel = channel_, settle, f = std::move(f)] {
    const auto settled = [core, waker, channel, f] {
      if (const auto c = core.lock())
        if (const auto w = waker.lock()) {
          std::lock_guard lk(c->mu);
          w->seen = channel->releases;  // the other servers' copies of this release
          w->acked = false;
        }
      f();
    };
    try {
      redis_io_after(settle, settled);
    } catch (...) {  // out of memory: woken now, unsettled
      f();
    }
  });
}

}  // namespace dlock::detail
