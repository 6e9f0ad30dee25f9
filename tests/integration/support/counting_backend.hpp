// A backend wrapper that counts extension round trips, for tests and
// benchmarks of the heartbeat's batching. Copyable handle, like what it wraps.
#pragma once

#include <dlock/backend.hpp>

#include <atomic>
#include <memory>
#include <span>

namespace dlock::test {

template <class B>
class CountingBackend {
 public:
  using Handle = typename B::Handle;
  struct Counts {
    std::atomic<long> single{0};   ///< extend() calls: one round trip each
    std::atomic<long> batches{0};  ///< extend_many() calls: one pipelined round trip each
    std::atomic<long> items{0};    ///< extensions inside those batches
  };

  explicit CountingBackend(B inner) : inner_(std::move(inner)) {}

  [[nodiscard]] std::string_view kind() const noexcept { return inner_.kind(); }
  [[nodiscard]] std::string_view endpoint() const noexcept { return inner_.endpoint(); }
  [[nodiscard]] const void* identity() const noexcept { return detail::backend_identity(inner_); }
  AcquireResult<Handle> try_acquire(const AcquireRequest& r) { return inner_.try_acquire(r); }
  ReleaseResult release(std::string_view n, Lease<Handle>& l) { return inner_.release(n, l); }
  std::optional<TimePoint> extend(std::string_view n, Lease<Handle>& l, std::chrono::milliseconds t, TimePoint s) {
    ++counts_->single;
    return inner_.extend(n, l, t, s);
  }
  void extend_many(std::span<ExtendItem> items) noexcept requires BatchesExtend<B> {
    ++counts_->batches;
    counts_->items += static_cast<long>(items.size());
    inner_.extend_many(items);
  }

  [[nodiscard]] const Counts& counts() const noexcept { return *counts_; }

 private:
  B inner_;
  std::shared_ptr<Counts> counts_ = std::make_shared<Counts>();
};

}  // namespace dlock::test
