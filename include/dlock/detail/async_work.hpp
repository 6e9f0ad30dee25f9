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
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>

namespace dlock::detail {

struct AsyncWorkSlot {
  std::mutex mu;
  std::optional<boost::asio::any_io_executor> ex;  // tracked (outstanding work) while set
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
        std::lock_guard lk(s->mu);
        s->ex.reset();
      }
  }

  std::mutex mu_;
  bool shut_ = false;
  std::vector<std::weak_ptr<AsyncWorkSlot>> slots_;
  std::size_t prune_at_ = 64;
};

class ExecutorCompletion {
 public:
  explicit ExecutorCompletion(const boost::asio::any_io_executor& ex) : slot_(std::make_shared<AsyncWorkSlot>()) {
    auto& ctx = boost::asio::query(ex, boost::asio::execution::context);
    if (boost::asio::use_service<AsyncWorkService>(ctx).add(slot_))
      slot_->ex.emplace(boost::asio::prefer(ex, boost::asio::execution::outstanding_work.tracked));
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
