// dlock/async_lease_guard.hpp: AsyncLeaseGuard, the move-only owner of one
// lease of a primitive that holds several at once (an RwLock's reader, a
// Semaphore's permit), made by their asynchronous acquires (docs/async.md,
// "Primitives").
//
// Each such lease is held by a Lock of the primitive's pool (detail/lock_pool.hpp);
// the guard owns that Lock while it holds the lease, and gives it back to the
// pool when the release has started. Like AsyncGuard, it never blocks:
// destroying an engaged guard starts the release on the guard's executor (a
// failure goes to the observer); `co_await g.async_release(use_awaitable)`
// tells the outcome. It must not outlive the primitive it came from.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>

#include "async_guard.hpp"
#include "detail/lock_pool.hpp"

namespace dlock {

namespace detail {
template <class L, class Pool, class Handler, class Ex>
struct PooledAcquire;
}  // namespace detail

template <class L>
class [[nodiscard]] AsyncLeaseGuard {
 public:
  using lock_type = L;

  AsyncLeaseGuard() noexcept = default;
  AsyncLeaseGuard(AsyncLeaseGuard&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)), lock_(std::move(o.lock_)), guard_(std::move(o.guard_)) {}
  AsyncLeaseGuard& operator=(AsyncLeaseGuard&& o) noexcept {
    if (this != &o) {
      reset();
      pool_ = std::exchange(o.pool_, nullptr);
      lock_ = std::move(o.lock_);
      guard_ = std::move(o.guard_);
    }
    return *this;
  }
  AsyncLeaseGuard(const AsyncLeaseGuard&) = delete;
  AsyncLeaseGuard& operator=(const AsyncLeaseGuard&) = delete;
  /// Starts the release without waiting for it; never throws.
  ~AsyncLeaseGuard() { reset(); }

  explicit operator bool() const noexcept { return static_cast<bool>(guard_); }
  /// True while the lease is held and within its validity.
  [[nodiscard]] bool owns_lock() const noexcept { return guard_.owns_lock(); }
  /// See Lock::fencing_token() (a reader's token: docs/primitives.md).
  [[nodiscard]] std::uint64_t fencing_token() const { return guard_.fencing_token(); }
  [[nodiscard]] std::string owner_id() const { return guard_.owner_id(); }
  [[nodiscard]] TimePoint valid_until() const noexcept { return guard_.valid_until(); }
  /// Requested when this lease is lost; see Lock::stop_token().
  [[nodiscard]] std::stop_token stop_token() const { return guard_.stop_token(); }
  /// See Lock::on_lost().
  template <class F>
  void on_lost(F&& callback) {
    guard_.on_lost(std::forward<F>(callback));
  }
  [[nodiscard]] const boost::asio::any_io_executor& get_executor() const noexcept { return guard_.get_executor(); }

  /// Releases the lease; completes with (error_code, ReleaseResult) on the
  /// token's executor. The guard is empty at once.
  template <class Token>
  auto async_release(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, ReleaseResult)>(
        [this](auto handler) {
          AsyncGuard<L> g = std::move(guard_);
          g.async_release(std::move(handler));  // detaches the lease from the Lock at once
          give_back();
        },
        token);
  }
  /// Extends the lease to `ttl`; completes with an error_code (see AsyncGuard::async_extend).
  template <class Token>
  auto async_extend(std::chrono::milliseconds ttl, Token&& token) {
    return guard_.async_extend(ttl, std::forward<Token>(token));
  }

 private:
  template <class, class, class, class>
  friend struct detail::PooledAcquire;
  AsyncLeaseGuard(detail::LockPool<L>* pool, std::unique_ptr<L> lock, AsyncGuard<L> guard) noexcept
      : pool_(pool), lock_(std::move(lock)), guard_(std::move(guard)) {}

  void reset() noexcept {
    guard_ = AsyncGuard<L>();  // starts the release of an engaged guard
    give_back();
  }
  void give_back() noexcept {
    if (lock_) pool_->give_back(std::move(lock_));
    pool_ = nullptr;
  }

  detail::LockPool<L>* pool_ = nullptr;
  std::unique_ptr<L> lock_;  // the pooled Lock that holds the lease
  AsyncGuard<L> guard_;
};

namespace detail {

/// An asynchronous acquire's result as a guard: a bool form's `true` is the
/// Lock's current acquisition; a guard form's guard as it is.
template <class L, class R, class Ex>
[[nodiscard]] AsyncGuard<L> guard_of(L& lock, R result, const Ex& ex) {
  if constexpr (std::is_same_v<R, bool>) {
    return result ? AsyncGuard<L>(lock, boost::asio::any_io_executor(ex)) : AsyncGuard<L>();
  } else {
    (void)lock;
    (void)ex;
    return result;
  }
}

/// The completion of an acquire on a pooled Lock: an AsyncLeaseGuard that
/// owns the Lock when acquired; otherwise the Lock goes back to the pool.
template <class L, class Pool, class Handler, class Ex>
struct PooledAcquire {
  Pool* pool;
  std::unique_ptr<L> lock;
  Handler handler;
  Ex ex;
  template <class R>
  void operator()(boost::system::error_code ec, R result) {
    L& l = *lock;
    AsyncGuard<L> g = guard_of(l, std::move(result), ex);
    if (!g) {
      pool->give_back(std::move(lock));
      return handler(ec, AsyncLeaseGuard<L>());
    }
    handler(ec, AsyncLeaseGuard<L>(pool, std::move(lock), std::move(g)));
  }
};

/// A lease taken asynchronously on a Lock of `pool` (an idle one, or a new
/// one from `make()`): `start(L&, handler)` starts one of the Lock's
/// asynchronous acquires (a guard form or a bool form); completes with
/// (error_code, AsyncLeaseGuard<L>), empty when not acquired.
template <class L, class Make, class Start, class Token>
auto async_pooled_acquire(LockPool<L>& pool, Make make, Start start, Token&& token) {
  return boost::asio::async_initiate<Token, void(boost::system::error_code, AsyncLeaseGuard<L>)>(
      [&pool, make = std::move(make), start = std::move(start)](auto handler) mutable {
        std::unique_ptr<L> lock = pool.acquire(make, [](L&) { return true; });
        L& l = *lock;
        auto ex = boost::asio::get_associated_executor(handler);
        using Done = PooledAcquire<L, LockPool<L>, decltype(handler), decltype(ex)>;
        start(l, boost::asio::bind_executor(ex, Done{&pool, std::move(lock), std::move(handler), ex}));
      },
      token);
}

/// One of `lock`'s asynchronous acquires, started by `start(L&, handler)`,
/// completing with (error_code, AsyncGuard<L>) whether it is a bool or a
/// guard form (an empty guard when not acquired).
template <class L, class Start, class Token>
auto async_guarded_acquire(L& lock, Start start, Token&& token) {
  return boost::asio::async_initiate<Token, void(boost::system::error_code, AsyncGuard<L>)>(
      [&lock, start = std::move(start)](auto handler) mutable {
        auto ex = boost::asio::get_associated_executor(handler);
        start(lock, boost::asio::bind_executor(
                        ex, [&lock, h = std::move(handler), ex](boost::system::error_code ec, auto result) mutable {
                          h(ec, guard_of(lock, std::move(result), ex));
                        }));
      },
      token);
}

}  // namespace detail
}  // namespace dlock
