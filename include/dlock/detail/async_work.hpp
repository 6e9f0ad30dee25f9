// Internal: a completion delivered to an Asio executor from another thread
// (the Redis transport's I/O thread), for the AsyncBackend operations whose
// I/O does not run on the caller's io_context.
//
// An ExecutorCompletion counts as outstanding work of the executor's context
// from its creation until it is posted (so io_context::run() does not return
// while a request is in flight: the context "knows" of it, as it knows of a
// socket operation), and is dropped safely when the context is destroyed
// first: a service of that context lets go of the work at shutdown, and a
// later post() does nothing. Thread-safe.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>

namespace dlock::detail {

struct AsyncWorkSlot {
  std::mutex mu;
  std::optional<boost::asio::any_io_executor> ex;  // tracked (outstanding work) while set
  // What the completion keeps alive until it is posted (the operation's
  // state): let go with `ex` at shutdown, so that it is destroyed on the
  // thread destroying the context, not later on the I/O thread.
  std::shared_ptr<void> held;
};

/// Lets go of every pending completion's work when its context shuts down.
class AsyncWorkService : public boost::asio::execution_context::service {
 public:
  using key_type = AsyncWorkService;
  static inline boost::asio::execution_context::id id;
  explicit AsyncWorkService(boost::asio::execution_context& ctx) : service(ctx) {}

  /// False when the context is shutting down: the slot is then not kept.
  bool add(const std::shared_ptr<AsyncWorkSlot>& slot) {
    std::lock_guard lk(mu_);
    if (shut_) return false;
    if (slots_.size() >= prune_at_) {  // amortised: drop the finished ones
      std::erase_if(slots_, [](const std::weak_ptr<AsyncWorkSlot>& w) { return w.expired(); });
      prune_at_ = std::max<std::size_t>(64, 2 * slots_.size());
    }
    slots_.push_back(slot);
    return true;
  }

 private:
  void shutdown() override {
    std::vector<std::weak_ptr<AsyncWorkSlot>> slots;
    {
      std::lock_guard lk(mu_);
      shut_ = true;
      slots.swap(slots_);
    }
    for (auto& w : slots)
      if (auto s = w.lock()) {
        std::shared_ptr<void> held;
        {
          std::lock_guard lk(s->mu);
          s->ex.reset();
          held = std::move(s->held);
        }
        held.reset();  // outside the lock: its destructor may start another operation
      }
  }

  std::mutex mu_;
  bool shut_ = false;
  std::vector<std::weak_ptr<AsyncWorkSlot>> slots_;
  std::size_t prune_at_ = 64;
};

class ExecutorCompletion {
 public:
  explicit ExecutorCompletion(const boost::asio::any_io_executor& ex, std::shared_ptr<void> held = nullptr)
      : slot_(std::make_shared<AsyncWorkSlot>()) {
    auto& ctx = boost::asio::query(ex, boost::asio::execution::context);
    if (boost::asio::use_service<AsyncWorkService>(ctx).add(slot_)) {
      slot_->ex.emplace(boost::asio::prefer(ex, boost::asio::execution::outstanding_work.tracked));
      slot_->held = std::move(held);
    }
  }

  /// Posts `f(*held)` (`held` as given to the constructor, a T), once;
  /// nothing if the context is gone: `held` was destroyed at its shutdown.
  template <class T, class F>
  void post_held(F&& f) const {
    std::shared_ptr<void> held;
    {
      std::lock_guard lk(slot_->mu);
      if (!slot_->ex || !slot_->held) return;
      held = std::move(slot_->held);
      boost::asio::post(
          *slot_->ex, [h = std::static_pointer_cast<T>(std::move(held)), f = std::forward<F>(f)]() mutable { f(*h); });
      slot_->ex.reset();
    }
  }

  /// As post_held(), but runs `f(*held)` inside this call when the caller
  /// already runs in the executor (boost::asio::dispatch). Only for a caller
  /// that is itself a completion on that executor, never an initiating function.
  template <class T, class F>
  void dispatch_held(F&& f) const {
    std::optional<boost::asio::any_io_executor> ex;  // tracked: the context keeps its work until the dispatch
    std::shared_ptr<void> held;
    {
      std::lock_guard lk(slot_->mu);
      if (!slot_->ex || !slot_->held) return;
      held = std::move(slot_->held);
      ex.swap(slot_->ex);
    }
    boost::asio::dispatch(
        *ex, [h = std::static_pointer_cast<T>(std::move(held)), f = std::forward<F>(f)]() mutable { f(*h); });
  }

  /// Posts `f` to the executor, once; nothing if the context is gone (or
  /// this was posted already).
  template <class F>
  void post(F&& f) const {
    std::lock_guard lk(slot_->mu);
    if (!slot_->ex) return;
    boost::asio::post(*slot_->ex, std::forward<F>(f));
    slot_->ex.reset();  // after the post: the context never runs out of work in between
  }

 private:
  std::shared_ptr<AsyncWorkSlot> slot_;
};

}  // namespace dlock::detail
