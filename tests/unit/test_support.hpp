// Test helpers shared by the unit tests: an observer that records events and
// a backend wrapper whose operations can be made to fail.
#pragma once

#include <dlock/dlock.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dlock::test {

/// Polls `pred` until it holds or `limit` passes; whether it held. For
/// asynchronous outcomes (heartbeat, callbacks): a bound on a hang, not a timing.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

struct RecordedEvent {
  EventType type;
  std::string lock;
  std::string owner;
  std::optional<std::uint64_t> token;
  std::uint32_t attempts;
  std::error_code error;
  std::string message;
  std::string reason;
};

class RecordingObserver : public Observer {
 public:
  void on_event(const Event& e) noexcept override {
    std::lock_guard lk(mu_);
    events_.push_back({e.type, std::string(e.lock), std::string(e.owner), e.token, e.attempts, e.error,
                       std::string(e.message), std::string(e.reason)});
  }
  std::vector<RecordedEvent> events() const {
    std::lock_guard lk(mu_);
    return events_;
  }
  std::size_t count(EventType t) const {
    std::lock_guard lk(mu_);
    std::size_t n = 0;
    for (const auto& e : events_) n += e.type == t;
    return n;
  }

 private:
  mutable std::mutex mu_;
  std::vector<RecordedEvent> events_;
};

/// A MemoryBackend whose operations throw ConnectionError while told to.
class FaultyBackend {
 public:
  using Handle = NoHandle;

  explicit FaultyBackend(const Clock& clock = steady_clock()) : mem_(clock) {}

  std::atomic<int> failing_acquires{0};  ///< the next N acquires throw
  std::atomic<bool> release_fails{false};
  std::atomic<bool> extend_fails{false};
  std::atomic<int> acquire_calls{0};

  [[nodiscard]] std::string_view kind() const noexcept { return "faulty"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:0"; }

  AcquireResult<Handle> try_acquire(const AcquireRequest& r) {
    ++acquire_calls;
    if (failing_acquires.load() > 0) {
      --failing_acquires;
      throw ConnectionError("faulty: connection refused (test:0)");
    }
    return mem_.try_acquire(r);
  }
  ReleaseResult release(std::string_view name, Lease<Handle>& lease) {
    if (release_fails) throw ConnectionError("faulty: connection reset during release (test:0)");
    return mem_.release(name, lease);
  }
  std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                  TimePoint started) {
    ++extend_calls;
    if (const int ms = extend_delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    if (extend_fails) throw ConnectionError("faulty: timeout during extend (test:0)");
    return mem_.extend(name, lease, ttl, started);
  }

  std::atomic<int> extend_delay_ms{0};  ///< every extend first sleeps this long
  std::atomic<int> extend_calls{0};

  MemoryBackend& memory() { return mem_; }

 private:
  MemoryBackend mem_;
};

static_assert(Backend<FaultyBackend>);
static_assert(!NotifiesRelease<FaultyBackend>);

}  // namespace dlock::test

namespace dlock::test {

/// A MemoryBackend with a batch extend, counting batches (round trips).
class BatchingBackend {
 public:
  using Handle = NoHandle;
  explicit BatchingBackend(const Clock& clock = steady_clock()) : mem_(clock) {}
  [[nodiscard]] std::string_view kind() const noexcept { return "batching"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:1"; }
  AcquireResult<Handle> try_acquire(const AcquireRequest& r) { return mem_.try_acquire(r); }
  ReleaseResult release(std::string_view name, Lease<Handle>& lease) { return mem_.release(name, lease); }
  std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                  TimePoint started) {
    ++single_extends;
    return mem_.extend(name, lease, ttl, started);
  }
  void extend_many(std::span<ExtendItem> items) {
    ++batches;
    extended_items += static_cast<int>(items.size());
    for (auto& item : items) {
      Lease<Handle> lease{*item.owner, {}, {}, {}, {}};
      item.valid_until = mem_.extend(item.name, lease, item.ttl, item.started);
    }
  }
  MemoryBackend& memory() { return mem_; }

  std::atomic<int> batches{0};
  std::atomic<int> extended_items{0};
  std::atomic<int> single_extends{0};

 private:
  MemoryBackend mem_;
};

static_assert(BatchesExtend<BatchingBackend>);

}  // namespace dlock::test

namespace dlock::test {

/// A MemoryBackend that keeps the wait records published to it.
class WaitRecordingBackend {
 public:
  using Handle = NoHandle;
  struct Record {
    std::string agent, waiter, lock;
    std::vector<std::pair<std::string, std::string>> holds;
  };
  [[nodiscard]] std::string_view kind() const noexcept { return "waits"; }
  [[nodiscard]] std::string_view endpoint() const noexcept { return "test:2"; }
  AcquireResult<Handle> try_acquire(const AcquireRequest& r) { return mem_.try_acquire(r); }
  ReleaseResult release(std::string_view name, Lease<Handle>& lease) { return mem_.release(name, lease); }
  std::optional<TimePoint> extend(std::string_view name, Lease<Handle>& lease, std::chrono::milliseconds ttl,
                                  TimePoint started) {
    return mem_.extend(name, lease, ttl, started);
  }
  void record_wait(const WaitRecord& r) noexcept {
    Record rec{std::string(r.agent), std::string(r.waiter), std::string(r.lock), {}};
    for (const auto& h : r.holds) rec.holds.emplace_back(std::string(h.name), std::string(h.owner));
    std::lock_guard lk(mu_);
    live_[rec.waiter] = rec;
    ++published;
  }
  void clear_wait(const WaitRecord& r) noexcept {
    std::lock_guard lk(mu_);
    live_.erase(std::string(r.waiter));
  }
  std::vector<Record> live() const {
    std::lock_guard lk(mu_);
    std::vector<Record> out;
    for (const auto& [k, v] : live_) out.push_back(v);
    return out;
  }
  std::atomic<int> published{0};

 private:
  MemoryBackend mem_;
  mutable std::mutex mu_;
  std::map<std::string, Record> live_;
};

static_assert(RecordsWaits<WaitRecordingBackend>);

}  // namespace dlock::test
