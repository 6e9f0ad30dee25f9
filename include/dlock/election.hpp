// dlock/election.hpp: Election<Backend>, leader election on a leased lock.
//
//   dlock::MemoryPrimitives prims;
//   dlock::Election<dlock::MemoryPrimitives> election(prims, "scheduler", "host-a:4242", {.ttl = 10s});
//   election.campaign();                       // blocks until this candidate leads
//   std::stop_token lost = election.stop_token();
//   while (!lost.stop_requested()) lead(election.term());   // term = fencing token
//   election.resign();
//
// Leadership of a name is a lease that also stores the leader's candidate id
// (ElectionBackend in primitives_backend.hpp). It is one Lock over a
// LeaderView of the backend, always with auto_extend on: the heartbeat keeps
// the lease while the process lives, and when an extension finds it gone or
// its validity ends unextended (the process was paused past the TTL, the
// server lost it, an operator removed it), the stop token is requested,
// on_lost callbacks run and the observer gets a `lost` event, exactly as for a
// Lock. Another candidate can then win, with a strictly greater term: pass
// term() to the resources the leader writes to, so they reject a deposed
// leader's late writes.
//
// Thread safety as for Lock. One Election object is one candidate; campaign
// again after resign() or a loss. Not copyable or movable.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>

#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>

#include "async_guard.hpp"
#include "detail/time.hpp"
#include "lock.hpp"
#include "options.hpp"
#include "primitives_backend.hpp"

namespace dlock {

template <ElectionBackend B>
class Election {
 public:
  using backend_type = B;
  using lock_type = Lock<detail::LeaderView<B>>;

  /// `candidate`: how observers see this process (e.g. "host:pid"); 1 to
  /// max_lock_name_size bytes, never a secret. options.auto_extend is forced
  /// on. Validates; does not contact the backend.
  Election(B& backend, std::string name, std::string candidate, LockOptions options = {})
      : view_(backend, detail::LeaderOps{checked_candidate(std::move(candidate))}),
        lock_(view_, std::move(name), with_auto_extend(std::move(options))) {}
  Election(const Election&) = delete;
  Election& operator=(const Election&) = delete;

  /// Blocks until this candidate leads; throws as Lock::lock() (TimeoutError
  /// after options().acquire_timeout, ConnectionError, ...).
  void campaign() {
    forget_lost_term();
    lock_.lock();
  }
  /// One attempt: true if this candidate now leads.
  [[nodiscard]] bool try_campaign() {
    forget_lost_term();
    return lock_.try_lock();
  }
  template <class Rep, class Period>
  [[nodiscard]] bool try_campaign_for(const std::chrono::duration<Rep, Period>& timeout) {
    forget_lost_term();
    return lock_.try_lock_for(timeout);
  }
  /// Gives up leadership (released, or not_held if it was already lost);
  /// throws what Lock::release() throws. Others may win at once.
  ReleaseResult resign() { return lock_.release(); }

  /// True while this candidate leads and its lease is valid.
  [[nodiscard]] bool is_leader() const noexcept { return lock_.owns_lock(); }
  /// The current term (the leadership's fencing token): strictly greater
  /// than every earlier term of this name. Throws LockLostError if not leading.
  [[nodiscard]] std::uint64_t term() const { return lock_.fencing_token(); }
  /// Requested when leadership is lost; throws LockLostError if not leading.
  [[nodiscard]] std::stop_token stop_token() { return lock_.stop_token(); }
  /// Called once when leadership is lost (see Lock::on_lost()).
  void on_lost(std::function<void(const LostEvent&)> callback) { lock_.on_lost(std::move(callback)); }

  /// Who leads now, as the backend sees it (any process); nullopt: nobody.
  [[nodiscard]] std::optional<LeaderInfo> leader() { return view_.backend().leader(lock_.name()); }
  /// Blocks until the leader differs from `seen` (another candidate or term,
  /// or nobody) or `timeout` passes (real time), and returns the leader then.
  /// Wakes on releases where the backend notifies them; a lease that merely
  /// expires is noticed within options().retry.max_delay.
  [[nodiscard]] std::optional<LeaderInfo> wait_leader_change(const std::optional<LeaderInfo>& seen,
                                                             std::chrono::milliseconds timeout) {
    const auto end = detail::steady_deadline(timeout);
    std::optional<typename detail::SubscriptionOf<detail::LeaderView<B>>::type> subscription;
    if constexpr (NotifiesRelease<detail::LeaderView<B>>) subscription.emplace(view_.subscribe_release(lock_.name()));
    for (;;) {
      auto now_leader = leader();
      const auto now = std::chrono::steady_clock::now();
      if (now_leader != seen || now >= end) return now_leader;
      const auto wait = std::min<std::chrono::nanoseconds>(end - now, lock_.options().retry.max_delay);
      if constexpr (NotifiesRelease<detail::LeaderView<B>>) {
        (void)subscription->wait_for(wait);
      } else {
        std::this_thread::sleep_for(wait);
      }
    }
  }

  [[nodiscard]] const std::string& candidate() const noexcept { return view_.ops().candidate; }
  [[nodiscard]] const std::string& name() const noexcept { return lock_.name(); }

  /// The underlying Lock (owner_id(), valid_until(), options(), ...).
  [[nodiscard]] lock_type& lock() noexcept { return lock_; }

  // ==== cancellable and asynchronous forms (docs/async.md, "Primitives") ====

  // ---- blocking, cancellable: as Lock's stop_token overloads (CancelledError,
  // errc::cancelled, as soon as `stop` is requested; nothing left held) ----
  void campaign(const std::stop_token& stop) {
    forget_lost_term();
    lock_.lock(stop);
  }
  template <class Rep, class Period>
  [[nodiscard]] bool try_campaign_for(const std::chrono::duration<Rep, Period>& timeout, const std::stop_token& stop) {
    forget_lost_term();
    return lock_.try_lock_for(timeout, stop);
  }

  // ---- asynchronous (backends with the asynchronous election operations,
  // AsyncElectionBackend; any completion token) ----
  //
  // async_campaign completes with an error_code once this candidate leads
  // (this Election then holds the leadership: is_leader(), term(),
  // stop_token(), resign() or async_resign()), or with errc::timeout
  // (options().acquire_timeout), errc::connection, errc::cancelled (stop
  // requested: the candidate is not left leading on the server).
  // async_try_campaign_for completes with (error_code, bool leads).
  // Nothing blocks a thread.
  template <class Token>
  auto async_campaign(Token&& token) requires AsyncElectionBackend<B> {
    return async_campaign(std::stop_token{}, std::forward<Token>(token));
  }
  template <class Token>
  auto async_campaign(std::stop_token stop, Token&& token) requires AsyncElectionBackend<B> {
    const auto timeout = lock_.options().acquire_timeout ? std::chrono::nanoseconds(*lock_.options().acquire_timeout)
                                                         : std::chrono::nanoseconds::max();  // saturates: forever
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, timeout, stop = std::move(stop)](auto handler) mutable {
          forget_lost_term();
          auto ex = boost::asio::get_associated_executor(handler);
          lock_.async_try_lock_for(timeout, std::move(stop),
                                   boost::asio::bind_executor(
                                       ex, [h = std::move(handler)](boost::system::error_code ec, bool leads) mutable {
                                         if (!ec && !leads) ec = make_async_error_code(errc::timeout);
                                         h(ec);
                                       }));
        },
        token);
  }
  template <class Rep, class Period, class Token>
  auto async_try_campaign_for(const std::chrono::duration<Rep, Period>& timeout,
                              Token&& token) requires AsyncElectionBackend<B> {
    return async_try_campaign_for(timeout, std::stop_token{}, std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_campaign_for(const std::chrono::duration<Rep, Period>& timeout, std::stop_token stop,
                              Token&& token) requires AsyncElectionBackend<B> {
    forget_lost_term();
    return lock_.async_try_lock_for(timeout, std::move(stop), std::forward<Token>(token));
  }
  /// resign() without blocking; completes with (error_code, ReleaseResult).
  template <class Token>
  auto async_resign(Token&& token) requires AsyncElectionBackend<B> {
    return lock_.async_release(std::forward<Token>(token));
  }

  // ==== end of the cancellable and asynchronous forms ====

 private:
  // A term that was lost (or ran past its validity) still occupies the Lock
  // until it is let go, and a campaign from the same thread would then be a
  // re-entry (DeadlockError). Campaigning again after a loss is how an
  // election is used, so a lost term is let go first (a quiet owner-checked
  // cleanup; it was reported when it was lost). A term still held is not:
  // campaigning while leading stays a re-entry error.
  void forget_lost_term() noexcept {
    if (!lock_.owns_lock()) lock_.unlock();
  }

  static std::string checked_candidate(std::string c) {
    if (c.empty() || c.size() > max_lock_name_size)
      detail::invalid_field("Election candidate", fmt::format("must be 1 to {} bytes", max_lock_name_size),
                            fmt::format("{} bytes", c.size()));
    return c;
  }
  static LockOptions with_auto_extend(LockOptions o) {
    o.auto_extend = true;
    return o;
  }

  detail::LeaderView<B> view_;
  lock_type lock_;
};

}  // namespace dlock
