// A test double shared by lock_test and async_test: a server whose key
// outlives the lease's validity on the client.
#pragma once

#include <dlock/dlock.hpp>

#include <boost/asio/post.hpp>

#include <chrono>
#include <optional>
#include <string_view>

namespace dlock::test {
// Acquires through a MemoryBackend; every release reports `released`, as a
// Redlock release does when a minority node still has the expired lease's key
// (its TTL runs on that node's clock) while the next holder has the rest.
// Models AsyncBackend too, so the blocking and asynchronous releases are
// tested against the same server behaviour.
class KeyOutlivesValidityBackend {
 public:
  using Handle = NoHandle;
  explicit KeyOutlivesValidityBackend(const Clock& clock) : mem_(clock) {}
  [[nodiscard]] std::string_view kind() const noexcept { return "key-outlives-validity"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:0"; }
  AcquireResult<Handle> try_acquire(const AcquireRequest& r) { return mem_.try_acquire(r); }
  ReleaseResult release(std::string_view name, Lease<Handle>& lease) {
    (void)mem_.release(name, lease);
    return ReleaseResult::released;
  }
  std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                  TimePoint started) {
    return mem_.extend(name, lease, ttl, started);
  }
  void async_try_acquire(const AcquireRequest& r, const boost::asio::any_io_executor& ex,
                         AcquireCompletion<Handle> done) {
    mem_.async_try_acquire(r, ex, std::move(done));
  }
  void async_release(std::string_view name, Lease<Handle>& lease, const boost::asio::any_io_executor& ex,
                     ReleaseCompletion done) {
    (void)mem_.release(name, lease);
    boost::asio::post(ex, [done = std::move(done)] { done(nullptr, ReleaseResult::released); });
  }
  void async_extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl, TimePoint started,
                    const boost::asio::any_io_executor& ex, ExtendCompletion done) {
    mem_.async_extend(name, lease, ttl, started, ex, std::move(done));
  }

 private:
  MemoryBackend mem_;
};
}  // namespace dlock::test
