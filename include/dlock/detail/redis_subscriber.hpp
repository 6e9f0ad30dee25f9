// Internal: pub/sub connections that wake waiters on releases.
//
// A RedisSubscriber serves one or more Redis servers (one for RedisBackend,
// every node for RedlockBackend) with one pub/sub connection per server: a
// transport link in subscriber mode (detail/redis_transport.hpp: TCP, Unix
// socket or TLS, on the transport's I/O thread) and a pure SubscriptionTable
// per server (detail/redis_protocol.hpp) that decides what to send and what
// each reply means. Connections start with the first subscribe().
// subscribe(channel) adds a reference to the channel, sends SUBSCRIBE to
// every server when it is the first, and waits until each server
// acknowledged it, refused it or failed (connect refused or timed out,
// connection lost), at most the largest connect_timeout + command_timeout
// among the servers: a down server does not hold a subscription up, it just
// does not contribute. A message on the channel from any server bumps the
// channel's release count and wakes the waiters through a condition
// variable; the last reference sends UNSUBSCRIBE, `linger` (1 s) after it
// goes unless a new subscription came meanwhile (a process that takes the
// same lock in a loop then subscribes again without a round trip and without
// missing a release in between). Per server: a connection
// that dies (or whose handshake takes longer than connect_timeout, or a
// SUBSCRIBE's or UNSUBSCRIBE's reply longer than command_timeout) is dropped
// without waking anyone (their own timeouts and the caller's backoff take
// over). It is reconnected and resubscribed one second after the failure at
// the earliest, while there are subscribers or with the next subscription
// after that; a subscription made within that second does not wait for the
// server (it counts as failed at once). A release published while a
// subscription was down reached no one: its renewal (the server's
// acknowledgement on the new connection, relocate() included) wakes the
// channel's waiters as a release with no target does (wait_for() returns
// true, one wake-one waiter is woken, on_release() runs), so they try again
// instead of sleeping out their backoff. A server that answers SUBSCRIBE with
// an error (e.g. NOPERM: an ACL user without permission for the channel)
// counts as failed for that channel until it is unsubscribed (no reference
// left) or the connection is lost: it is not retried meanwhile, and the error
// is kept for last_refusal().
//
// fork(): the child has no copy of the I/O thread. The first call in the
// child drops the inherited pub/sub connections without sending anything and
// starts over (new connections on the next subscribe()); subscriptions the
// child inherited never fire (their wait_for() just waits).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "../redis_options.hpp"

namespace dlock::detail {

class RedisSubscription;

class RedisSubscriber {
 public:
  struct Core;
  struct Channel;
  struct Waker;
  struct OneWaiter;

  /// One server to subscribe on. options must be valid (detail::validate);
  /// endpoint names it in messages.
  struct Server {
    RedisOptions options;
    std::string endpoint;
    /// When set, asked at each (re)connect for the server to connect to
    /// instead of `options` (Sentinel: the last primary found; nullopt:
    /// none known yet, the attempt counts as failed). Must not block.
    std::function<std::optional<RedisOptions>()> locate{};
  };

  /// How long a channel stays subscribed after its last subscription goes: a
  /// subscription to it within that time is acknowledged already, so
  /// subscribe() returns at once and subscribed() is true (Lock then
  /// subscribes before its first attempt and needs no second one: fair mode's
  /// waiter that comes back to the queue costs one script call, not two plus
  /// a SUBSCRIBE and an UNSUBSCRIBE). The cost: the process receives the
  /// channel's messages that long after its last waiter left.
  static constexpr std::chrono::milliseconds linger{1000};

  /// Does not connect: that waits for the first subscribe().
  explicit RedisSubscriber(std::vector<Server> servers);
  RedisSubscriber(const RedisOptions& options, std::string endpoint)
      : RedisSubscriber(std::vector<Server>{Server{options, std::move(endpoint)}}) {}
  RedisSubscriber(const RedisSubscriber&) = delete;
  RedisSubscriber& operator=(const RedisSubscriber&) = delete;
  /// Closes the connections. Outstanding subscriptions stay valid but never
  /// fire again.
  ~RedisSubscriber();

  /// Never throws for connection problems (see above); only std::bad_alloc.
  /// With `wait_for_ack` false, returns at once, without waiting for the
  /// servers' acknowledgements (the asynchronous acquire: on_release() then
  /// also fires when one comes).
  [[nodiscard]] RedisSubscription subscribe(std::string channel, bool wait_for_ack = true);
  /// A targeted subscription (fair mode): woken only by a message whose
  /// payload is `target` (the waiter's owner id) or empty, not by the others.
  /// Waits for the acknowledgements as subscribe() does.
  [[nodiscard]] RedisSubscription subscribe_targeted(std::string channel, std::string target);
  /// A wake-one subscription (the mutex's blocking waiters in default mode):
  /// each message on the channel wakes ONE of the process's wake-one
  /// subscriptions of that channel blocked in wait_for() (the one blocked
  /// longest), not all of them; a message that finds none blocked is kept
  /// (at most one) for the next wait_for() of any of them, which returns at
  /// once. A subscription woken this way holds the wake until it calls
  /// taken() (its attempt took the lock) or wait_for() again (its attempt
  /// found the lock held: that holder's release wakes the next one); if it
  /// is destroyed holding it (the acquire ended without the lock: a
  /// deadline, a cancellation, an error), the wake passes on to the next
  /// wake-one subscription.
  /// Other subscriptions of the channel still see every message. Waits for
  /// the acknowledgements as subscribe() does.
  [[nodiscard]] RedisSubscription subscribe_one(std::string channel);

  /// Whether `channel` has live subscriptions that every server acknowledged:
  /// a subscribe() now returns at once, and sees every message after it.
  [[nodiscard]] bool subscribed(const std::string& channel) const;

  /// The servers' locations may have moved (Sentinel: the primary changed,
  /// by a +switch-master or a discovery): a server whose Server::locate now
  /// names another address than its connection's is reconnected there at
  /// once, its subscriptions renewed (their waiters try again at the
  /// acknowledgement); one that is down is retried there at once. Without
  /// it, a connection to a primary that was failed over but still runs stays
  /// put and hears no release until the sentinels demote that node.
  void relocate() noexcept;
  /// relocate() as a callable that may outlive this subscriber (it does
  /// nothing once the subscriber is destroyed): for a failover callback.
  [[nodiscard]] std::function<void()> relocator() const;

  /// For tests: how many pub/sub connections are up (handshake done).
  [[nodiscard]] std::size_t connected() const;
  /// For tests: whether subscribe() was called (connections started).
  [[nodiscard]] bool started() const;
  /// For tests: connection attempts that failed plus connections lost, over all servers.
  [[nodiscard]] std::uint64_t failures() const;
  /// For diagnostics and tests: the last error a server answered a SUBSCRIBE
  /// with (naming the server and the channel); empty if none.
  [[nodiscard]] std::string last_refusal() const;

 private:
  RedisSubscription subscribe(std::string channel, std::string target, bool wait_for_ack, bool one = false);
  /// core_, replaced by a fresh one first if it was inherited through fork().
  [[nodiscard]] std::shared_ptr<Core> current() const;

  struct Anchor;  ///< relocator()'s way back to this subscriber, cut by the destructor
  std::shared_ptr<Anchor> anchor_;
  mutable std::mutex core_mu_;  ///< guards core_ itself (not what it points at)
  mutable std::shared_ptr<Core> core_;
};

class RedisSubscription {
 public:
  RedisSubscription(RedisSubscription&&) noexcept = default;
  RedisSubscription& operator=(RedisSubscription&& other) noexcept;
  ~RedisSubscription();

  /// True when a message arrived on the channel (from any server) since
  /// subscribing or since the last call that returned true; false when `d`
  /// passed first.
  [[nodiscard]] bool wait_for(std::chrono::nanoseconds d);
  /// For waits that must not block (the asynchronous acquire): `f` runs once,
  /// under the subscriber's lock on the I/O thread, at the next message on
  /// the channel or the next acknowledgement of its SUBSCRIBE by a server, or
  /// at once (inside the call) when a message came since subscribing or
  /// since `f`'s predecessor ran. A later call replaces a pending `f`. `f`
  /// must not block nor call back into the subscriber.
  void on_release(std::function<void()> f);
  /// A wake-one subscription (subscribe_one): the wake it holds, if any, was
  /// used (its attempt took the lock), so it is not passed on. No-op otherwise.
  void taken() noexcept { holding_ = false; }
  /// on_release() for a release that several servers publish (Redlock: one
  /// copy per node): once woken, `f` runs `settle` later on the I/O thread,
  /// and the messages that came in meanwhile count as part of that wake-up
  /// (a later on_release does not fire at once for them).
  void on_release_settled(std::function<void()> f, std::chrono::milliseconds settle);
  /// How many servers acknowledged the subscription before subscribe() returned.
  [[nodiscard]] std::size_t acknowledged() const noexcept { return acknowledged_; }

 private:
  friend class RedisSubscriber;
  RedisSubscription(std::shared_ptr<RedisSubscriber::Core> core, std::shared_ptr<RedisSubscriber::Channel> channel,
                    std::uint64_t seen) noexcept
      : core_(std::move(core)), channel_(std::move(channel)), seen_(seen) {}
  void reset() noexcept;
  bool wait_one(std::unique_lock<std::mutex>& lk, std::chrono::steady_clock::time_point deadline);
  void add_waker();  // waker_, registered with the channel

  std::shared_ptr<RedisSubscriber::Core> core_;
  std::shared_ptr<RedisSubscriber::Channel> channel_;
  std::uint64_t seen_ = 0;
  std::size_t acknowledged_ = 0;
  std::string target_;                             // targeted: the payload that wakes it
  const std::uint64_t* hits_ = nullptr;            // targeted: messages naming target_ (in the channel, under core mu)
  std::condition_variable* target_cv_ = nullptr;   // targeted: where its waits block (in the channel)
  std::shared_ptr<RedisSubscriber::Waker> waker_;  // on_release(), once called
  std::shared_ptr<RedisSubscriber::OneWaiter> one_;  // subscribe_one(): where its waits block
  bool holding_ = false;                             // subscribe_one(): woken, wake neither used nor passed on
};

}  // namespace dlock::detail
