// Internal: one shared pub/sub connection that wakes waiters on releases.
//
// A RedisSubscriber owns (lazily) one connection and one background thread.
// subscribe(channel) adds a reference to the channel, has the thread send
// SUBSCRIBE when it is the first, and waits for the server's acknowledgement
// (at most connect_timeout + command_timeout). Each published message bumps
// the channel's release count and wakes the waiters through a condition
// variable; the last reference sends UNSUBSCRIBE. When the connection dies,
// waiters are not woken (their own timeouts and the caller's backoff take
// over); the thread reconnects and resubscribes when a new subscription
// arrives or, while there are subscribers, at most once per second.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "redis_options.hpp"

namespace dlock::detail {

class RedisSubscription;

class RedisSubscriber {
 public:
  struct Core;
  struct Channel;

  RedisSubscriber(const RedisOptions& options, std::string endpoint);
  RedisSubscriber(const RedisSubscriber&) = delete;
  RedisSubscriber& operator=(const RedisSubscriber&) = delete;
  /// Stops and joins the thread and closes the connection. Outstanding
  /// subscriptions stay valid but never fire again.
  ~RedisSubscriber();

  /// Never throws for connection problems (see above).
  [[nodiscard]] RedisSubscription subscribe(std::string channel);

  /// For tests: whether the pub/sub connection is currently up.
  [[nodiscard]] bool connected() const;

 private:
  std::shared_ptr<Core> core_;
};

class RedisSubscription {
 public:
  RedisSubscription(RedisSubscription&&) noexcept = default;
  RedisSubscription& operator=(RedisSubscription&& other) noexcept;
  ~RedisSubscription();

  /// True when a message arrived on the channel since subscribing or since the
  /// last call that returned true; false when `d` passed first.
  [[nodiscard]] bool wait_for(std::chrono::nanoseconds d);
  /// Whether the server acknowledged the subscription before subscribe() returned.
  [[nodiscard]] bool acknowledged() const noexcept { return acknowledged_; }

 private:
  friend class RedisSubscriber;
  RedisSubscription(std::shared_ptr<RedisSubscriber::Core> core, std::shared_ptr<RedisSubscriber::Channel> channel,
                    std::uint64_t seen, bool acknowledged) noexcept
      : core_(std::move(core)), channel_(std::move(channel)), seen_(seen), acknowledged_(acknowledged) {}
  void reset() noexcept;

  std::shared_ptr<RedisSubscriber::Core> core_;
  std::shared_ptr<RedisSubscriber::Channel> channel_;
  std::uint64_t seen_ = 0;
  bool acknowledged_ = false;
};

}  // namespace dlock::detail
