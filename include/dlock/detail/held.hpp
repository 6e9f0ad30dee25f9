// Internal: Held<B>, one acquisition of a Lock, shared by the Lock and the
// heartbeat. The heartbeat only ever touches Held objects, never a Lock, so a
// Lock (or its guard) may be destroyed while an extension is in flight.
//
// Mutex order: op_mu_ (backend operations on the lease) before mu_ (state).
// Neither is held while calling the heartbeat, and mu_ is never held while
// calling the backend or the observer. A loss found under op_mu_ is announced
// (observer, stop token, on_lost callbacks) only after op_mu_ is released (see
// OpLock), so a stop_callback or an on_lost callback may call unlock() or
// release() on the lost Lock from any thread, the heartbeat's included.
#pragma once

#include <chrono>
#include <concepts>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/types.h>
#include <unistd.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include "../backend.hpp"
#include "../clock.hpp"
#include "../error.hpp"
#include "../heartbeat.hpp"
#include "../observer.hpp"
#include "../options.hpp"
#include "time.hpp"

namespace dlock::detail {

/// The primitive a backend (view) implements, for Event::primitive: its
/// primitive() when it names one (BackendView), else "mutex".
template <class B>
[[nodiscard]] std::string_view primitive_of(const B& b) noexcept {
  if constexpr (requires { std::string_view(b.primitive()); }) {
    return b.primitive();
  } else {
    return "mutex";
  }
}

/// Builds the events of one Lock: same backend, endpoint, name and observer.
/// Where lock `name` lives, for events and metrics: the backend's
/// endpoint_of(name) when it has one (Redis with Sentinel or Cluster: the
/// server that serves the name), else endpoint(). Never blocks.
template <class B>
[[nodiscard]] std::string_view event_endpoint(const B& backend, std::string_view name) noexcept {
  if constexpr (requires {
                  { backend.endpoint_of(name) } -> std::convertible_to<std::string_view>;
                })
    return backend.endpoint_of(name);
  else
    return backend.endpoint();
}

struct EventSource {
  std::string_view kind;
  std::string_view endpoint;
  std::string_view primitive;
  std::string_view name;
  Observer* observer;

  [[nodiscard]] Event make(EventType type, std::string_view owner, std::optional<std::uint64_t> token) const noexcept {
    Event ev;
    ev.type = type;
    ev.backend = kind;
    ev.endpoint = endpoint;
    ev.primitive = primitive;
    ev.lock = name;
    ev.owner = owner;
    ev.token = token;
    return ev;
  }
  void emit(const Event& ev) const noexcept { observer->on_event(ev); }
};

[[nodiscard]] inline std::error_code code_of(const std::exception& e) noexcept {
  const auto* err = dynamic_cast<const Error*>(&e);
  return err ? err->code() : make_error_code(errc::server);
}

/// The release of a lease: the fair-mode release (which wakes the queue's new
/// head) for a fair Lock on a backend that has one (QueuesFairly), else the mutex's.
template <class B, class L>
ReleaseResult release_lease(B& b, std::string_view name, L& lease, bool fair) {
  if constexpr (requires { b.release_fair(name, lease); }) {
    if (fair) return b.release_fair(name, lease);
  }
  return b.release(name, lease);
}

/// release_lease() without blocking (AsyncBackend): the fair-mode release
/// where the backend has an asynchronous one (AsyncQueuesFairly), else the mutex's.
template <class B, class L>
void async_release_lease(B& b, std::string_view name, L& lease, bool fair, const boost::asio::any_io_executor& ex,
                         ReleaseCompletion done) {
  if constexpr (requires { b.async_release_fair(name, lease, ex, std::move(done)); }) {
    if (fair) return b.async_release_fair(name, lease, ex, std::move(done));
  }
  b.async_release(name, lease, ex, std::move(done));
}

template <class B>
class Held final : public Beat, public std::enable_shared_from_this<Held<B>> {
 public:
  using H = typename B::Handle;
  using Callback = std::function<void(const LostEvent&)>;

  Held(B& backend, std::string_view name, const LockOptions& options, const Clock& clock,
       std::shared_ptr<Observer> observer, Lease<H> lease)
      : backend_(backend),
        name_(name),
        ttl_(options.ttl),
        interval_(options.extend_interval ? *options.extend_interval : options.ttl / 3),
        auto_extend_(options.auto_extend),
        fair_(options.fair),
        clock_(clock),
        observer_(std::move(observer)),
        lease_(std::move(lease)),
        extend_due_(saturating_add(lease_.acquired_at, interval_)) {
    // "Forever" saturates to `never`, the end of the clock.
    if (options.auto_extend && options.max_hold) max_hold_end_ = saturating_add(lease_.acquired_at, *options.max_hold);
    if (options.long_held) long_held_at_ = saturating_add(lease_.acquired_at, *options.long_held);
    endpoint_ = event_endpoint(backend_, name_);  // the node that granted it, for this hold's events
  }

  // ---- queries (any thread) ----
  // In a process forked after the acquisition the lease is the parent's: it
  // reads as lost there, and nothing reaches the server (see inherited()).

  [[nodiscard]] bool owns(TimePoint now) const noexcept {
    if (inherited()) return false;
    std::lock_guard lk(mu_);
    return state_ == State::held && now < lease_.valid_until;
  }
  [[nodiscard]] TimePoint valid_until() const noexcept {
    if (inherited()) return TimePoint{};
    std::lock_guard lk(mu_);
    return state_ == State::held ? lease_.valid_until : TimePoint{};
  }
  [[nodiscard]] const OwnerId& owner() const noexcept { return lease_.owner; }
  /// True in a child forked after the acquisition. The parent still holds the
  /// lease under the same owner id, so the child must neither extend nor
  /// release it; the child's queries answer from this alone, without taking
  /// a mutex another thread of the parent may have held at the fork.
  [[nodiscard]] bool inherited() const noexcept { return ::getpid() != pid_; }
  /// The token while held and valid; otherwise LockLostError / no_fencing_token.
  [[nodiscard]] std::uint64_t fencing_token() const {
    if (inherited()) throw inherited_error();
    std::lock_guard lk(mu_);
    if (state_ != State::held) throw lost_error();
    if (clock_.now() >= lease_.valid_until)
      throw LockLostError(fmt::format("dlock: lock '{}' on {} {} is past its validity (not extended in time)", name_,
                                      backend_.kind(), backend_.endpoint()));
    if (!lease_.token) {
      std::string_view hint;  // how to get tokens, from a backend that can say (PostgreSQL: install_schema())
      if constexpr (requires { backend_.no_fencing_hint(); }) hint = backend_.no_fencing_hint();
      throw Error(errc::no_fencing_token, fmt::format("dlock: backend {} provides no fencing tokens for lock '{}'{}",
                                                      backend_.kind(), name_, hint));
    }
    return *lease_.token;
  }
  /// The stop source is made on first request (most acquisitions never ask).
  [[nodiscard]] std::stop_token stop_token() {
    if (inherited()) return inherited_stop_token();
    std::lock_guard lk(mu_);
    if (!stop_.stop_possible()) {
      stop_ = std::stop_source();
      if (state_ == State::lost) stop_.request_stop();  // no callbacks can be registered yet
    }
    return stop_.get_token();
  }

  /// Registers a loss callback; runs it at once (on this thread) if the lease
  /// is already lost. Dropped if the lease is released normally.
  void on_lost(Callback cb) {
    LostEvent ev;
    if (inherited()) {
      ev = LostEvent{LostReason::connection, name_, std::string(lease_.owner.str()), lease_.token,
                     inherited_error().what()};
      run_callbacks(std::span<Callback>(&cb, 1), ev);
      return;
    }
    {
      std::lock_guard lk(mu_);
      if (state_ != State::lost) {
        if (state_ == State::held) callbacks_.push_back(std::move(cb));
        return;
      }
      ev = *lost_;
    }
    run_callbacks(std::span<Callback>(&cb, 1), ev);
  }

  /// Whether a heartbeat must watch this lease even if nobody asks for its
  /// stop token: it auto-extends or reports long holds.
  [[nodiscard]] bool needs_watch() const noexcept { return auto_extend_ || long_held_at_ != never; }

  /// Marks the lease watched by a heartbeat; true the first time.
  bool mark_watched() noexcept {
    std::lock_guard lk(mu_);
    return !std::exchange(watched_, true);
  }
  [[nodiscard]] bool watched() const noexcept {
    std::lock_guard lk(mu_);
    return watched_;
  }

  // ---- operations (the holder's thread) ----

  /// Owner-checked release. not_held when already released, or lost (then
  /// an owner-checked release is still attempted, quietly, in case the
  /// server kept the key), or when the server says it had expired or been taken.
  ReleaseResult release() {
    if (inherited()) return ReleaseResult::not_held;  // the parent's lease: deleting it would free the parent's lock
    OpLock op(*this);
    State previous;
    {
      std::lock_guard lk(mu_);
      previous = std::exchange(state_, State::released);
      callbacks_.clear();
    }
    if (previous == State::released) return ReleaseResult::not_held;
    if (previous == State::lost) {  // reported when it was lost; a quiet owner-checked cleanup
      if (!released_on_server_) {
        try {
          (void)release_lease(backend_, name_, lease_, fair_);
        } catch (...) {  // the key expires by its TTL
        }
      }
      return ReleaseResult::not_held;
    }
    // Past its validity the end of the critical section ran unprotected, even
    // if a server still had the key (Redlock: a minority node whose key
    // outlives the validity, while the next holder has the others).
    const bool expired = clock_.now() >= lease_.valid_until;  // op_mu_ held: valid_until is stable
    ReleaseResult result{};
    try {
      result = release_lease(backend_, name_, lease_, fair_);
    } catch (const std::exception& e) {
      report(EventType::release_failed, e,
             fmt::format("release of '{}' failed ({}); the lock will expire by its TTL", name_, e.what()));
      throw;
    }
    if (expired) result = ReleaseResult::not_held;
    emit_released(result);
    return result;
  }

  /// Owner-checked extension to `ttl`; throws LockLostError when lost.
  void extend(std::chrono::milliseconds ttl) {
    if (inherited()) throw inherited_error();
    OpLock op(*this);  // a loss found here is announced after op_mu_ is released, even when this throws
    {
      std::lock_guard lk(mu_);
      if (state_ != State::held) throw lost_error();
    }
    const TimePoint sent = clock_.now();
    std::optional<TimePoint> valid;
    try {
      valid = backend_.extend(name_, lease_, ttl, sent);
    } catch (const LockLostError& e) {
      declare_lost_later(LostReason::connection, e.what(), nullptr);
      throw;
    } catch (const std::exception& e) {
      report(EventType::extend_failed, e, fmt::format("extend of '{}' failed ({})", name_, e.what()));
      throw;
    }
    if (!apply_extension(valid, sent, nullptr)) {
      std::lock_guard lk(mu_);
      throw lost_error();
    }
  }

  // ---- asynchronous operations (AsyncBackend; the completion runs on `ex`) ----

  /// release() without blocking: the lease is marked released at once (no
  /// extension starts after that; one in flight is waited for, as release()
  /// does), then the backend's release runs asynchronously.
  void async_release(const boost::asio::any_io_executor& ex, ReleaseCompletion done) requires AsyncBackend<B> {
    auto finish = [&ex, &done](std::exception_ptr e, ReleaseResult r) {
      boost::asio::post(ex, [done = std::move(done), e, r] { done(e, r); });
    };
    if (inherited()) return finish(nullptr, ReleaseResult::not_held);
    State previous;
    bool on_server;
    bool expired;  // as in release(): past its validity the release reports not_held
    {
      OpLock op(*this);
      std::lock_guard lk(mu_);
      previous = std::exchange(state_, State::released);
      callbacks_.clear();
      on_server = !released_on_server_;
      expired = clock_.now() >= lease_.valid_until;
    }
    if (previous == State::released) return finish(nullptr, ReleaseResult::not_held);
    auto self = this->shared_from_this();
    if (previous == State::lost) {  // reported when it was lost; a quiet owner-checked cleanup
      if (!on_server) return finish(nullptr, ReleaseResult::not_held);
      async_release_lease(backend_, name_, lease_, fair_, ex,
                          [self, done = std::move(done)](std::exception_ptr, ReleaseResult) {
                            done(nullptr, ReleaseResult::not_held);
                          });
      return;
    }
    async_release_lease(backend_, name_, lease_, fair_, ex,
                        [self, expired, done = std::move(done)](std::exception_ptr e, ReleaseResult result) {
                          if (expired) result = ReleaseResult::not_held;
                          if (e) {
                            self->report_exception(EventType::release_failed, e, "; the lock will expire by its TTL",
                                                   "release");
                          } else {
                            self->emit_released(result);
                          }
                          done(e, result);
                        });
  }

  /// extend(ttl) without blocking; the completion gets null, or the
  /// LockLostError / backend error that extend() would throw. A loss is
  /// announced (on the executor's thread) before the completion runs.
  void async_extend(std::chrono::milliseconds ttl, const boost::asio::any_io_executor& ex,
                    std::function<void(std::exception_ptr)> done) requires AsyncBackend<B> {
    std::exception_ptr refused;
    if (inherited()) {
      refused = std::make_exception_ptr(inherited_error());
    } else {
      std::lock_guard lk(mu_);
      if (state_ != State::held) refused = std::make_exception_ptr(lost_error());
    }
    if (refused) {
      boost::asio::post(ex, [done = std::move(done), refused] { done(refused); });
      return;
    }
    const TimePoint sent = clock_.now();
    backend_.async_extend(name_, lease_, ttl, sent, ex,
                          [self = this->shared_from_this(), sent, done = std::move(done)](
                              std::exception_ptr e, std::optional<TimePoint> valid) {
                            bool held = false;
                            {
                              OpLock op(*self);  // announces a loss when it goes
                              if (e) {
                                try {
                                  std::rethrow_exception(e);
                                } catch (const LockLostError& lost) {
                                  self->declare_lost_later(LostReason::connection, lost.what(), nullptr);
                                } catch (...) {
                                  self->report_exception(EventType::extend_failed, e, "", "extend");
                                }
                              } else {
                                held = self->apply_extension(valid, sent, nullptr);
                              }
                            }
                            if (!e && !held) {
                              std::lock_guard lk(self->mu_);
                              e = std::make_exception_ptr(self->lost_error());
                            }
                            done(e);
                          });
  }

  // ---- Beat (heartbeat threads) ----

  [[nodiscard]] BatchKey batch_key() const noexcept override { return {&type_tag_, backend_identity(backend_)}; }
  [[nodiscard]] const Clock& clock() const noexcept override { return clock_; }
  [[nodiscard]] Clock::duration slack() const noexcept override {
    return auto_extend_ ? interval_ / 4 : Clock::duration{};
  }

  [[nodiscard]] std::optional<TimePoint> wake_at() const noexcept override {
    std::lock_guard lk(mu_);
    if (state_ != State::held) return std::nullopt;
    return beat_wake(times());
  }
  [[nodiscard]] BeatAction claim(TimePoint now) noexcept override {
    BeatAction action;
    bool long_held = false;
    {
      std::lock_guard lk(mu_);
      if (state_ != State::held) return BeatAction::none;
      action = beat_action(times(), now, slack());
      if (action == BeatAction::extend) in_flight_ = true;
      if (now >= long_held_at_) {
        long_held_at_ = never;  // once per hold
        long_held = true;
      }
    }
    if (long_held) {
      Event ev = source().make(EventType::long_held, lease_.owner.str(), lease_.token);
      ev.held = now - lease_.acquired_at;
      ev.message = "held longer than its long_held threshold";
      source().emit(ev);
    }
    return action;
  }
  void expire(HeartbeatCore& hb) noexcept override {
    bool failing;
    {
      std::lock_guard lk(mu_);
      failing = failing_;
    }
    declare_lost(failing ? LostReason::connection : LostReason::expired,
                 failing ? fmt::format("lock '{}': extensions kept failing until its validity ended", name_)
                         : fmt::format("lock '{}': its validity ended without an extension", name_),
                 &hb);
  }
  void stop_holding(HeartbeatCore& hb) noexcept override {
    if (!declare_lost(
            LostReason::max_hold,
            fmt::format("lock '{}': held for max_hold; the heartbeat stopped extending and released it", name_), &hb))
      return;
    try {
      hb.post_backend(batch_key(), [self = this->shared_from_this()] { self->release_after_max_hold(); });
    } catch (...) {  // out of memory: the lock expires by its TTL
    }
  }
  void extend_batch(HeartbeatCore& hb, std::span<const std::shared_ptr<Beat>> group) noexcept override {
    if constexpr (BatchesExtend<B>) {
      // The batch needs only names and owners, which never change, so no
      // lease mutex is held across the round trip: a release racing with it
      // makes its owner-checked extension a no-op, seen as not held below.
      std::vector<Held*> members;
      std::vector<ExtendItem> items;
      std::vector<typename B::Handle> handles;  // copies: the batch reads them without the lease mutex
      handles.reserve(group.size());
      for (const auto& beat : group) {
        auto* h = static_cast<Held*>(beat.get());  // same batch key: same type
        OpLock op(*h);
        if (!h->still_held()) continue;
        members.push_back(h);
        handles.push_back(h->lease_.handle);
        items.push_back(ExtendItem{h->name_, &h->lease_.owner, h->ttl_, h->clock_.now(), &handles.back()});
      }
      if (items.empty()) return;
      try {
        backend_.extend_many(items);
      } catch (...) {
        for (auto& item : items) item.error = std::current_exception();
      }
      for (std::size_t i = 0; i < items.size(); ++i) {
        OpLock op(*members[i]);
        if (items[i].error) {
          members[i]->extension_failed(items[i].error, items[i].started, hb);
        } else {
          members[i]->apply_extension(items[i].valid_until, items[i].started, &hb);
        }
      }
    } else {
      for (const auto& beat : group) static_cast<Held*>(beat.get())->extend_in_background(hb);
    }
  }

  [[nodiscard]] std::stop_source forked() noexcept override {
    // Inside fork(), in the child, alone: a mutex that another thread of the
    // parent held at the fork stays locked here for good, so only try.
    std::unique_lock op(op_mu_, std::try_to_lock);
    std::unique_lock lk(mu_, std::try_to_lock);
    if (op) released_on_server_ = true;  // the parent's lock: this process must never delete it
    if (!lk || state_ != State::held) return std::stop_source(std::nostopstate);
    state_ = State::lost;  // its on_lost callbacks belong to the parent's hold: they do not run here
    try {
      lost_ = std::make_unique<LostEvent>(LostEvent{
          LostReason::connection, name_, std::string(lease_.owner.str()), lease_.token,
          fmt::format("lock '{}': inherited across fork(); the parent process holds it, not this one", name_)});
    } catch (...) {  // out of memory: still lost, with less detail
    }
    return stop_;  // requested by the heartbeat once its mutexes are free; nostopstate if never asked for
  }

 private:
  enum class State { held, released, lost };

  // Requires mu_.
  [[nodiscard]] BeatTimes times() const noexcept {
    auto unless_never = [](TimePoint t) { return t == never ? std::nullopt : std::optional<TimePoint>(t); };
    return BeatTimes{lease_.valid_until, extend_due_, unless_never(max_hold_end_), auto_extend_ && !in_flight_,
                     unless_never(long_held_at_)};
  }
  // Requires mu_.
  [[nodiscard]] LockLostError lost_error() const {
    if (state_ == State::lost && lost_)
      return LockLostError(fmt::format("dlock: lock '{}' on {} {} was lost ({}): {}", name_, backend_.kind(),
                                       backend_.endpoint(), to_string(lost_->reason), lost_->message));
    if (state_ == State::lost)
      return LockLostError(
          fmt::format("dlock: lock '{}' on {} {} was lost", name_, backend_.kind(), backend_.endpoint()));
    return LockLostError(fmt::format("dlock: lock '{}' is not held", name_), errc::not_held);
  }
  [[nodiscard]] LockLostError inherited_error() const {
    return LockLostError(
        fmt::format("dlock: lock '{}' on {} {} was acquired by process {}, not this one (inherited "
                    "across fork()); it belongs to that process",
                    name_, backend_.kind(), backend_.endpoint(), pid_));
  }
  // In a forked child: a requested token. The shared stop source is requested
  // too (so tokens handed out before the fork see it) unless another thread of
  // the parent held the mutex at the fork.
  [[nodiscard]] std::stop_token inherited_stop_token() noexcept {
    std::stop_source stop;
    {
      std::unique_lock lk(mu_, std::try_to_lock);
      if (lk.owns_lock() && stop_.stop_possible()) stop = stop_;
    }
    stop.request_stop();
    return stop.get_token();
  }
  // Requires op_mu_. Clears in_flight_ when no longer held.
  bool still_held() noexcept {
    std::lock_guard lk(mu_);
    if (state_ == State::held) return true;
    in_flight_ = false;
    return false;
  }

  // The backend's lane: one extension of a claimed lease.
  void extend_in_background(HeartbeatCore& hb) noexcept {
    OpLock op(*this);
    if (!still_held()) return;
    const TimePoint sent = clock_.now();
    std::optional<TimePoint> valid;
    try {
      valid = backend_.extend(name_, lease_, ttl_, sent);
    } catch (...) {
      extension_failed(std::current_exception(), sent, hb);
      return;
    }
    apply_extension(valid, sent, &hb);
  }

  // Requires op_mu_. A transient failure is retried (a quarter interval
  // later) until the validity ends; LockLostError means lost now.
  void extension_failed(std::exception_ptr error, TimePoint sent, HeartbeatCore& hb) noexcept {
    try {
      std::rethrow_exception(error);
    } catch (const LockLostError& e) {
      {
        std::lock_guard lk(mu_);
        in_flight_ = false;
      }
      declare_lost_later(LostReason::connection, e.what(), &hb);
    } catch (const std::exception& e) {
      {
        std::lock_guard lk(mu_);
        in_flight_ = false;
        failing_ = true;
        extend_due_ = saturating_add(sent, std::max<Clock::duration>(interval_ / 4, std::chrono::milliseconds(1)));
      }
      report(EventType::extend_failed, e,
             fmt::format("auto-extend of '{}' failed ({}); retrying within its validity", name_, e.what()));
    } catch (...) {
      std::lock_guard lk(mu_);
      in_flight_ = false;
      failing_ = true;
    }
  }

  // Requires op_mu_. Applies the backend's answer to an extension: the new
  // validity, or loss (nullopt). Returns whether the lease is still held.
  bool apply_extension(std::optional<TimePoint> valid, TimePoint sent, HeartbeatCore* hb) noexcept {
    State state;
    TimePoint old_validity;
    {
      std::lock_guard lk(mu_);
      in_flight_ = false;
      state = state_;
      old_validity = lease_.valid_until;
      if (valid && state == State::held) {
        lease_.valid_until = *valid;
        extend_due_ = saturating_add(sent, interval_);
        failing_ = false;
      }
    }
    if (!valid) {
      if (sent < old_validity) {
        declare_lost_later(LostReason::taken,
                           fmt::format("lock '{}': the server no longer has it for this owner although it was still "
                                       "valid (deleted, taken over, or the server lost its data)",
                                       name_),
                           hb);
      } else {
        declare_lost_later(LostReason::expired,
                           fmt::format("lock '{}': it had expired when the extension arrived", name_), hb);
      }
      return false;
    }
    if (state == State::lost && !released_on_server_) {
      // Declared lost (validity ended) while this late extension was on its
      // way: do not leave the key blocking others for another TTL.
      try {
        (void)release_lease(backend_, name_, lease_, fair_);
      } catch (...) {  // it expires by its TTL
      }
      released_on_server_ = true;
      return false;
    }
    if (state != State::held) return false;
    Event ev = source().make(EventType::extended, lease_.owner.str(), lease_.token);
    ev.held = sent - lease_.acquired_at;
    source().emit(ev);
    return true;
  }

  // The backend's lane, after a max_hold loss.
  void release_after_max_hold() noexcept {
    OpLock op(*this);
    {
      std::lock_guard lk(mu_);
      if (state_ != State::lost || released_on_server_) return;  // the holder released it meanwhile
    }
    released_on_server_ = true;
    try {
      (void)release_lease(backend_, name_, lease_, fair_);  // the lost event (max_hold) was this hold's end
    } catch (const std::exception& e) {
      report(
          EventType::release_failed, e,
          fmt::format("release of '{}' after max_hold failed ({}); the lock will expire by its TTL", name_, e.what()),
          "after_loss");
    }
  }

  // A loss marked under the mutexes, to be announced outside them.
  struct Loss {
    LostEvent lost;
    std::stop_source stop{std::nostopstate};
    bool has_callbacks = false;
    HeartbeatCore* hb = nullptr;
  };

  // op_mu_, held for a backend operation on the lease. A loss declared while
  // it is held (declare_lost_later) is announced when it is released, so that
  // the stop callbacks and on_lost callbacks it runs may call release() on
  // this lease (unlock() on its Lock) without deadlocking on op_mu_.
  class OpLock {
   public:
    explicit OpLock(Held& h) : h_(h) { h_.op_mu_.lock(); }
    ~OpLock() {
      std::optional<Loss> loss = std::move(h_.deferred_loss_);
      h_.deferred_loss_.reset();
      h_.op_mu_.unlock();
      if (loss) h_.announce(std::move(*loss));
    }
    OpLock(const OpLock&) = delete;
    OpLock& operator=(const OpLock&) = delete;

   private:
    Held& h_;
  };

  // Any thread, without op_mu_. Marks the lease lost once and announces it:
  // observer event, stop token, then the callbacks (on this lease's callback
  // lane of `hb` when given, so that they delay no extension). Returns whether
  // this call declared it.
  bool declare_lost(LostReason reason, std::string message, HeartbeatCore* hb) noexcept {
    auto loss = mark_lost(reason, std::move(message), hb);
    if (!loss) return false;
    announce(std::move(*loss));
    return true;
  }
  // Requires op_mu_ (an OpLock): marks the lease lost now; the OpLock
  // announces it once op_mu_ is released.
  void declare_lost_later(LostReason reason, std::string message, HeartbeatCore* hb) noexcept {
    if (auto loss = mark_lost(reason, std::move(message), hb)) deferred_loss_ = std::move(loss);
  }

  [[nodiscard]] std::optional<Loss> mark_lost(LostReason reason, std::string message, HeartbeatCore* hb) noexcept {
    Loss loss;
    loss.hb = hb;
    std::lock_guard lk(mu_);
    if (state_ != State::held) return std::nullopt;
    state_ = State::lost;
    lost_callbacks_.swap(callbacks_);  // no copy of them here: see run_lost_callbacks()
    loss.has_callbacks = !lost_callbacks_.empty();
    loss.stop = stop_;  // requested by announce(), outside the mutexes: stop callbacks run synchronously
    try {
      lost_ = std::make_unique<LostEvent>(
          LostEvent{reason, name_, std::string(lease_.owner.str()), lease_.token, std::move(message)});
      loss.lost = *lost_;
    } catch (...) {  // out of memory: still lost, with less detail
    }
    return loss;
  }

  // No lease mutex held.
  void announce(Loss loss) noexcept {
    Event ev = source().make(EventType::lost, lease_.owner.str(), lease_.token);
    ev.held = clock_.now() - lease_.acquired_at;
    ev.error = make_error_code(errc::lock_lost);
    ev.message = loss.lost.message;
    ev.reason = to_string(loss.lost.reason);
    source().emit(ev);
    loss.stop.request_stop();
    if (!loss.has_callbacks) return;
    if (loss.hb) {
      try {
        loss.hb->post_callbacks(
            *this, [self = this->shared_from_this(), lost = loss.lost] { self->run_lost_callbacks(lost); });
        return;
      } catch (...) {  // could not post: run them here rather than drop them
      }
    }
    run_lost_callbacks(loss.lost);
  }

  // Runs the loss's callbacks, then destroys them, on the calling thread: on
  // a callback lane no lease mutex is held there, so a callback may own (and
  // drop) the last reference to its Lock.
  void run_lost_callbacks(const LostEvent& lost) noexcept {
    std::vector<Callback> callbacks;
    {
      std::lock_guard lk(mu_);
      callbacks.swap(lost_callbacks_);
    }
    run_callbacks(callbacks, lost);
  }

  void run_callbacks(std::span<Callback> callbacks, const LostEvent& lost) noexcept {
    for (auto& cb : callbacks) {
      try {
        cb(lost);
      } catch (const std::exception& e) {
        report(EventType::callback_failed, e, fmt::format("an on_lost callback of '{}' threw: {}", name_, e.what()));
      } catch (...) {
        Event ev = source().make(EventType::callback_failed, lease_.owner.str(), lease_.token);
        ev.message = "an on_lost callback threw a non-standard exception";
        source().emit(ev);
      }
    }
  }

  void emit_released(ReleaseResult result) const noexcept {
    Event ev = source().make(result == ReleaseResult::released ? EventType::released : EventType::release_not_held,
                             lease_.owner.str(), lease_.token);
    ev.held = clock_.now() - lease_.acquired_at;
    if (result == ReleaseResult::not_held) {
      ev.error = make_error_code(errc::lock_lost);
      ev.message =
          "the lock had already expired or been taken before release: the end of the critical section ran unprotected";
    }
    source().emit(ev);
  }

  void report(EventType type, const std::exception& e, const std::string& message,
              std::string_view reason = {}) const noexcept {
    Event ev = source().make(type, lease_.owner.str(), lease_.token);
    ev.held = clock_.now() - lease_.acquired_at;
    ev.error = code_of(e);
    ev.message = message;
    ev.reason = reason.empty() ? std::string_view(to_string(static_cast<errc>(ev.error.value()))) : reason;
    source().emit(ev);
  }

  // report() for an exception_ptr: "<what> of '<name>' failed (<error>)<suffix>".
  void report_exception(EventType type, std::exception_ptr e, std::string_view suffix,
                        std::string_view what) const noexcept {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      try {
        report(type, x, fmt::format("{} of '{}' failed ({}){}", what, name_, x.what(), suffix));
      } catch (...) {  // out of memory: nothing sensible is left to report
      }
    } catch (...) {
    }
  }

  [[nodiscard]] EventSource source() const noexcept {
    return {backend_.kind(), endpoint_, primitive_of(backend_), name_, observer_.get()};
  }

  inline static const char type_tag_ = 0;

  BackendStorage<B> backend_;
  const std::string name_;
  std::string_view endpoint_;  // event_endpoint() at the grant: one label for the whole hold
  const std::chrono::milliseconds ttl_;
  const Clock::duration interval_;
  const bool auto_extend_;
  const bool fair_;  // LockOptions::fair: released by release_fair where the backend has it
  const Clock& clock_;
  const std::shared_ptr<Observer> observer_;
  const pid_t pid_ = ::getpid();  // the process that acquired the lease
  static constexpr TimePoint never = TimePoint::max();
  TimePoint max_hold_end_ = never;

  std::mutex op_mu_;
  Lease<H> lease_;                     // owner, token, acquired_at immutable; valid_until under mu_ + op_mu_
  bool released_on_server_ = false;    // under op_mu_
  std::optional<Loss> deferred_loss_;  // under op_mu_: declared lost, announced when op_mu_ is released

  mutable std::mutex mu_;
  State state_ = State::held;
  std::unique_ptr<LostEvent> lost_;  // set when state_ == lost
  bool in_flight_ = false;           // the heartbeat claimed an extension that has not finished
  bool failing_ = false;             // the last background extension failed with a transient error
  bool watched_ = false;             // registered with a heartbeat
  TimePoint extend_due_;
  TimePoint long_held_at_ = never;  // until reported
  std::vector<Callback> callbacks_;
  std::vector<Callback> lost_callbacks_;     // declare_lost() to run_lost_callbacks()
  std::stop_source stop_{std::nostopstate};  // made by stop_token()
};

}  // namespace dlock::detail
