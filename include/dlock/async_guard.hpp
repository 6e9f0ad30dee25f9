// dlock/async_guard.hpp: AsyncGuard, the move-only owner of one acquisition
// made by Lock::async_acquire() (docs/async.md).
//
// Like Guard, but it never blocks: destroying an engaged AsyncGuard starts
// the release on the guard's executor and returns at once (a failure goes to
// the lock's observer); `co_await g.async_release(use_awaitable)` releases it
// and tells the outcome. It is bound to its acquisition, not to the Lock, and
// must not outlive the Lock it came from; a release it started may finish
// after both are gone (it keeps what it needs).
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <stop_token>
#include <string>
#include <system_error>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

#include "backend.hpp"
#include "error.hpp"

namespace dlock {

// Asynchronous completions carry a boost::system::error_code, which Boost
// 1.74's use_awaitable and use_future turn into exceptions (a std::error_code
// would come back as a value). Its category is async_error_category(), named
// "dlock", with the values and messages of dlock::errc; to_std() gives the
// std::error_code of error_category() that the blocking API's exceptions carry:
//
//   catch (const boost::system::system_error& e) {
//     if (dlock::to_std(e.code()) == dlock::errc::cancelled) ...
//   }
namespace detail {
class AsyncErrorCategory final : public boost::system::error_category {
 public:
  [[nodiscard]] const char* name() const noexcept override { return "dlock"; }
  [[nodiscard]] std::string message(int ev) const override { return dlock::error_category().message(ev); }
};
}  // namespace detail

[[nodiscard]] inline const boost::system::error_category& async_error_category() noexcept {
  static const detail::AsyncErrorCategory category;
  return category;
}
[[nodiscard]] inline boost::system::error_code make_async_error_code(errc e) noexcept {
  return {static_cast<int>(e), async_error_category()};
}
/// The std::error_code of an asynchronous completion's error: in
/// dlock::error_category() for dlock's own codes, else Boost's conversion.
[[nodiscard]] inline std::error_code to_std(const boost::system::error_code& ec) noexcept {
  if (ec.category() == async_error_category()) return make_error_code(static_cast<errc>(ec.value()));
  return ec;
}

namespace detail {
/// The error code an asynchronous completion carries for `e`: its dlock
/// code, or errc::server for anything else; none for null.
[[nodiscard]] inline boost::system::error_code error_code_of(std::exception_ptr e) noexcept {
  if (!e) return {};
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return {err.code().value(), async_error_category()};
  } catch (...) {
    return make_async_error_code(errc::server);
  }
}
}  // namespace detail

template <class L>
class [[nodiscard]] AsyncGuard {
  using Acquisition = typename L::acquisition_type;

 public:
  AsyncGuard() noexcept = default;
  /// Takes over the acquisition `lock` holds now; releases go to `ex`.
  AsyncGuard(L& lock, boost::asio::any_io_executor ex) noexcept
      : lock_(&lock), held_(lock.current_or_null()), ex_(std::move(ex)) {
    if (!held_) lock_ = nullptr;
  }
  AsyncGuard(AsyncGuard&& other) noexcept
      : lock_(std::exchange(other.lock_, nullptr)), held_(std::move(other.held_)), ex_(std::move(other.ex_)) {}
  AsyncGuard& operator=(AsyncGuard&& other) noexcept {
    if (this != &other) {
      start_release();
      lock_ = std::exchange(other.lock_, nullptr);
      held_ = std::move(other.held_);
      ex_ = std::move(other.ex_);
    }
    return *this;
  }
  AsyncGuard(const AsyncGuard&) = delete;
  AsyncGuard& operator=(const AsyncGuard&) = delete;
  /// Starts the release without waiting for it; never throws.
  ~AsyncGuard() { start_release(); }

  explicit operator bool() const noexcept { return held_ != nullptr; }
  [[nodiscard]] bool owns_lock() const noexcept { return held_ && held_->owns(held_->clock().now()); }
  /// See Guard::fencing_token().
  [[nodiscard]] std::uint64_t fencing_token() const { return checked().fencing_token(); }
  [[nodiscard]] std::string owner_id() const { return held_ ? std::string(held_->owner().str()) : std::string(); }
  [[nodiscard]] TimePoint valid_until() const noexcept { return held_ ? held_->valid_until() : TimePoint{}; }
  /// See Lock::stop_token(); an empty guard gives a token that is never requested.
  [[nodiscard]] std::stop_token stop_token() const { return held_ ? lock_->stop_token_of(held_) : std::stop_token{}; }
  /// See Lock::on_lost().
  template <class F>
  void on_lost(F&& callback) {
    (void)checked();
    lock_->on_lost_of(held_, std::forward<F>(callback));
  }
  [[nodiscard]] const boost::asio::any_io_executor& get_executor() const noexcept { return ex_; }
  [[nodiscard]] L* lock() const noexcept { return lock_; }

  /// Releases this acquisition; completes with (error_code, ReleaseResult) on
  /// the token's executor. The guard is empty at once.
  template <class Token>
  auto async_release(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, ReleaseResult)>(
        [this](auto handler) {
          L* lock = std::exchange(lock_, nullptr);
          auto held = std::move(held_);
          held_.reset();
          auto ex = boost::asio::get_associated_executor(handler, ex_);
          auto done = [h = std::make_shared<decltype(handler)>(std::move(handler))](
                          std::exception_ptr e, ReleaseResult r) { (*h)(detail::error_code_of(e), r); };
          if (!held) {
            boost::asio::post(ex, [done] { done(nullptr, ReleaseResult::not_held); });
            return;
          }
          lock->async_release_acquisition(held, ex, std::move(done));
        },
        token);
  }

  /// Extends this acquisition to `ttl`; completes with an error_code
  /// (lock_lost, not_held, connection, ...) on the token's executor.
  template <class Token>
  auto async_extend(std::chrono::milliseconds ttl, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, ttl](auto handler) {
          auto ex = boost::asio::get_associated_executor(handler, ex_);
          auto done = [h = std::make_shared<decltype(handler)>(std::move(handler))](std::exception_ptr e) {
            (*h)(detail::error_code_of(e));
          };
          if (!held_) {
            auto e = std::make_exception_ptr(
                LockLostError("dlock: the guard is empty (not acquired or already released)", errc::not_held));
            boost::asio::post(ex, [done, e] { done(e); });
            return;
          }
          lock_->async_extend_acquisition(held_, ttl, ex, std::move(done));
        },
        token);
  }

 private:
  Acquisition& checked() const {
    if (!held_) throw LockLostError("dlock: the guard is empty (not acquired or already released)", errc::not_held);
    return *held_;
  }
  void start_release() noexcept {
    if (!held_) return;
    try {
      lock_->async_release_acquisition(held_, ex_, [](std::exception_ptr, ReleaseResult) {});
    } catch (...) {  // out of memory: the lock expires by its TTL
    }
    lock_ = nullptr;
    held_.reset();
  }

  L* lock_ = nullptr;
  std::shared_ptr<Acquisition> held_;
  boost::asio::any_io_executor ex_;
};

}  // namespace dlock
