// dlock/metrics.hpp: MetricsRegistry, an Observer that keeps counters and
// histograms of lock activity and renders them in the Prometheus text
// exposition format (version 0.0.4).
//
//   auto metrics = std::make_shared<dlock::MetricsRegistry>();
//   dlock::Lock<dlock::RedisBackend> lock(redis, "orders:42", {.observer = metrics});
//   ...
//   std::string body = metrics->prometheus_text();   // serve it at /metrics
//
// Labels are bounded: `backend` (the backend kind), `lock_class`, derived
// from the lock name by MetricsOptions::classify (by default the part before
// the first ':', so "orders:42" is counted as "orders"), and `kind`, the
// primitive (Event::primitive: "mutex", "rw_read", "rw_write", "permit",
// "leader"); failure and loss counters add a `reason` from a fixed set. Full
// lock names never become labels. Label values are made valid UTF-8 (invalid
// bytes become U+FFFD), as the exposition format requires. Past
// MetricsOptions::max_series distinct (backend, lock_class, kind) series,
// further classes are counted under lock_class="_other".
//
// The node a lock lives on (Event::endpoint, e.g. "127.0.0.1:6379"; with
// Sentinel "the primary of 'mymaster' (Sentinel)") is its own small family
// of series, dlock_endpoint_*{backend, endpoint}: one series per node, not
// per lock or class (the endpoint is not crossed with lock_class). Events
// without an endpoint are not counted there; past
// MetricsOptions::max_endpoints endpoints, further ones are "_other".
//
// Thread-safe; on_event() takes one mutex briefly. Share one registry among
// many locks (pass the same shared_ptr as LockOptions::observer), and chain
// another observer through MetricsOptions::next to keep logging too.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "detail/utf8.hpp"
#include "observer.hpp"

namespace dlock {

/// The lock class of a name: the part before the first ':' (the whole name if none).
[[nodiscard]] inline std::string default_lock_class(std::string_view name) {
  return std::string(name.substr(0, name.find(':')));
}

struct MetricsOptions {
  /// Maps a lock name to its lock_class label; keep its range small.
  std::function<std::string(std::string_view)> classify = default_lock_class;
  /// Upper bounds, in seconds, of the acquire-wait histogram buckets.
  std::vector<double> wait_buckets{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60};
  /// Upper bounds, in seconds, of the hold-duration histogram buckets.
  std::vector<double> hold_buckets{0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600};
  /// Most (backend, lock_class, kind) series kept apart; the rest are "_other".
  std::size_t max_series = 1000;
  /// Most (backend, endpoint) series kept apart; the rest are "_other".
  std::size_t max_endpoints = 64;
  /// Also receives every event (e.g. default_observer() to keep logging).
  std::shared_ptr<Observer> next{};
};

class MetricsRegistry : public Observer {
 public:
  /// The counters, in exposition order.
  enum class Counter {
    attempts,
    acquisitions,
    contentions,
    releases,
    releases_not_held,
    acquire_timeouts,
    extensions,
    long_held,
    callback_failures,
    order_violations,
    count_
  };
  /// The counters with a `reason` label.
  enum class ReasonCounter {
    acquire_failures,
    attempt_failures,
    release_failures,
    extend_failures,
    lost,
    degraded,
    count_
  };

  struct Histogram {
    std::vector<std::uint64_t> buckets;  ///< cumulative is computed at exposition; these are per bucket
    std::uint64_t count = 0;
    double sum = 0;
  };

  explicit MetricsRegistry(MetricsOptions options = {}) : options_(std::move(options)) {
    std::sort(options_.wait_buckets.begin(), options_.wait_buckets.end());
    std::sort(options_.hold_buckets.begin(), options_.hold_buckets.end());
  }

  void on_event(const Event& e) noexcept override {
    try {
      record(e);
    } catch (...) {  // out of memory: drop this sample rather than fail the lock operation
    }
    if (options_.next) options_.next->on_event(e);
  }

  // ---- reading ----

  /// The per-node series of (backend, endpoint): acquisitions, attempts
  /// that failed with a transient error, locks currently held.
  struct EndpointSeries {
    std::uint64_t acquisitions = 0;
    std::uint64_t attempt_failures = 0;
    std::int64_t held = 0;
  };
  [[nodiscard]] EndpointSeries endpoint_series(std::string_view backend, std::string_view endpoint) const {
    std::lock_guard lk(mu_);
    const auto b = endpoints_.find(backend);
    if (b == endpoints_.end()) return {};
    const auto it = b->second.find(endpoint);
    return it == b->second.end() ? EndpointSeries{} : it->second;
  }

  // The series of (backend, lock_class, kind); kind: Event::primitive, "mutex"
  // for plain Locks.
  [[nodiscard]] std::uint64_t value(Counter c, std::string_view backend, std::string_view lock_class,
                                    std::string_view kind = "mutex") const {
    std::lock_guard lk(mu_);
    const Series* s = find(backend, lock_class, kind);
    return s ? s->counters[static_cast<std::size_t>(c)] : 0;
  }
  [[nodiscard]] std::uint64_t value(ReasonCounter c, std::string_view backend, std::string_view lock_class,
                                    std::string_view reason, std::string_view kind = "mutex") const {
    std::lock_guard lk(mu_);
    const Series* s = find(backend, lock_class, kind);
    if (!s) return 0;
    const auto& m = s->reasons[static_cast<std::size_t>(c)];
    auto it = m.find(reason);
    return it == m.end() ? 0 : it->second;
  }
  /// Locks currently held (acquired, and neither released nor lost).
  [[nodiscard]] std::int64_t held(std::string_view backend, std::string_view lock_class,
                                  std::string_view kind = "mutex") const {
    std::lock_guard lk(mu_);
    const Series* s = find(backend, lock_class, kind);
    return s ? s->held : 0;
  }
  [[nodiscard]] Histogram wait_histogram(std::string_view backend, std::string_view lock_class,
                                         std::string_view kind = "mutex") const {
    std::lock_guard lk(mu_);
    const Series* s = find(backend, lock_class, kind);
    return s ? s->wait : Histogram{};
  }
  [[nodiscard]] Histogram hold_histogram(std::string_view backend, std::string_view lock_class,
                                         std::string_view kind = "mutex") const {
    std::lock_guard lk(mu_);
    const Series* s = find(backend, lock_class, kind);
    return s ? s->hold : Histogram{};
  }

  /// Every metric in the Prometheus text format 0.0.4, with HELP and TYPE
  /// lines; histograms as _bucket (cumulative, ending in le="+Inf"), _sum
  /// and _count. Serve with Content-Type "text/plain; version=0.0.4".
  [[nodiscard]] std::string prometheus_text() const {
    std::lock_guard lk(mu_);
    std::string out;
    auto header = [&out](std::string_view name, std::string_view type, std::string_view help) {
      fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    };
    for (std::size_t c = 0; c < counter_info.size(); ++c) {
      header(counter_info[c].first, "counter", counter_info[c].second);
      for (const auto& [key, s] : series_)
        fmt::format_to(std::back_inserter(out), "{}{{{}}} {}\n", counter_info[c].first, labels(key), s.counters[c]);
    }
    for (std::size_t c = 0; c < reason_info.size(); ++c) {
      header(reason_info[c].first, "counter", reason_info[c].second);
      for (const auto& [key, s] : series_)
        for (const auto& [reason, n] : s.reasons[c])
          fmt::format_to(std::back_inserter(out), "{}{{{},reason=\"{}\"}} {}\n", reason_info[c].first, labels(key),
                         escape(reason), n);
    }
    header("dlock_held_locks", "gauge", "Locks currently held: acquired and neither released nor lost.");
    for (const auto& [key, s] : series_)
      fmt::format_to(std::back_inserter(out), "dlock_held_locks{{{}}} {}\n", labels(key), s.held);
    endpoint_text(out);
    histogram_text(out, "dlock_acquire_wait_seconds", "Time from the first attempt to acquisition.",
                   options_.wait_buckets, &Series::wait);
    histogram_text(out, "dlock_hold_seconds", "How long locks were held, from acquisition to release.",
                   options_.hold_buckets, &Series::hold);
    return out;
  }

 private:
  using Key = std::tuple<std::string, std::string, std::string>;  // backend, lock_class, kind
  using KeyView = std::tuple<std::string_view, std::string_view, std::string_view>;
  struct KeyLess {  // lets lookups use string views, without allocating
    using is_transparent = void;
    static KeyView view(const Key& k) noexcept { return {std::get<0>(k), std::get<1>(k), std::get<2>(k)}; }
    static KeyView view(const KeyView& k) noexcept { return k; }
    template <class A, class B>
    bool operator()(const A& a, const B& b) const noexcept {
      return view(a) < view(b);
    }
  };

  struct Series {
    std::array<std::uint64_t, static_cast<std::size_t>(Counter::count_)> counters{};
    std::array<std::map<std::string, std::uint64_t, std::less<>>, static_cast<std::size_t>(ReasonCounter::count_)>
        reasons{};
    std::int64_t held = 0;
    Histogram wait;
    Histogram hold;
  };

  static constexpr std::array<std::pair<std::string_view, std::string_view>, static_cast<std::size_t>(Counter::count_)>
      counter_info{{
          {"dlock_acquire_attempts_total", "Acquire attempts sent to the lock service."},
          {"dlock_acquisitions_total", "Locks acquired."},
          {"dlock_contentions_total", "Attempts that found the lock held by another owner."},
          {"dlock_releases_total", "Locks released by their owner."},
          {"dlock_releases_not_held_total",
           "Releases that found the lock already expired or taken: the critical section ran unprotected at its end."},
          {"dlock_acquire_timeouts_total",
           "Acquires that ended without the lock because it stayed held until their deadline (contention)."},
          {"dlock_extensions_total", "Successful extensions."},
          {"dlock_long_held_total", "Holds that passed their long_held threshold."},
          {"dlock_callback_failures_total", "on_lost callbacks that threw."},
          {"dlock_lock_order_violations_total", "Lock-order inversions found by the lock-order checker."},
      }};
  static constexpr std::array<std::pair<std::string_view, std::string_view>,
                              static_cast<std::size_t>(ReasonCounter::count_)>
      reason_info{{
          {"dlock_acquire_failures_total", "Acquires that ended with an error (thrown to the caller), by reason."},
          {"dlock_attempt_failures_total",
           "Acquire attempts that failed with a transient error and were retried, by reason."},
          {"dlock_release_failures_total", "Releases that could not be delivered, by reason."},
          {"dlock_extend_failures_total", "Extensions that failed with an error, by reason."},
          {"dlock_locks_lost_total", "Held locks that were lost, by reason."},
          {"dlock_degraded_acquisitions_total",
           "Acquisitions made without the primary lock service (fallback policy), by fallback."},
      }};

  void record(const Event& e) {
    std::string lock_class = options_.classify(e.lock);
    std::lock_guard lk(mu_);
    if (!e.endpoint.empty()) record_endpoint(e);
    Series& s = series(e.backend, std::move(lock_class), e.primitive);
    auto count = [&s](Counter c) { ++s.counters[static_cast<std::size_t>(c)]; };
    auto count_reason = [&s, &e](ReasonCounter c) {
      auto& m = s.reasons[static_cast<std::size_t>(c)];
      const std::string_view reason = e.reason.empty() ? std::string_view("unknown") : e.reason;
      auto it = m.find(reason);
      if (it == m.end()) it = m.emplace(std::string(reason), 0).first;
      ++it->second;
    };
    switch (e.type) {
      case EventType::attempt:
        count(Counter::attempts);
        break;
      case EventType::acquired:
        count(Counter::acquisitions);
        ++s.held;
        observe(s.wait, options_.wait_buckets, e.wait);
        break;
      case EventType::contended:
        count(Counter::contentions);
        break;
      case EventType::acquire_failed:
        count_reason(ReasonCounter::acquire_failures);
        break;
      case EventType::attempt_failed:
        count_reason(ReasonCounter::attempt_failures);
        break;
      case EventType::acquire_timed_out:
        count(Counter::acquire_timeouts);
        break;
      case EventType::released:
        count(Counter::releases);
        --s.held;
        observe(s.hold, options_.hold_buckets, e.held);
        break;
      case EventType::release_not_held:
        count(Counter::releases_not_held);
        --s.held;
        observe(s.hold, options_.hold_buckets, e.held);
        break;
      case EventType::release_failed:
        count_reason(ReasonCounter::release_failures);
        if (e.reason != "after_loss") --s.held;
        break;
      case EventType::extended:
        count(Counter::extensions);
        break;
      case EventType::extend_failed:
        count_reason(ReasonCounter::extend_failures);
        break;
      case EventType::lost:
        count_reason(ReasonCounter::lost);
        --s.held;
        break;
      case EventType::long_held:
        count(Counter::long_held);
        break;
      case EventType::callback_failed:
        count(Counter::callback_failures);
        break;
      case EventType::order_violation:
        count(Counter::order_violations);
        break;
      case EventType::degraded:
        count_reason(ReasonCounter::degraded);
        break;
    }
  }

  // The per-node series (mu_ held).
  void record_endpoint(const Event& e) {
    auto& nodes = endpoints_[std::string(e.backend)];
    auto it = nodes.find(e.endpoint);
    if (it == nodes.end()) {
      std::size_t total = 0;
      for (const auto& [backend, m] : endpoints_) total += m.size();
      const std::string_view name = total >= options_.max_endpoints ? std::string_view("_other") : e.endpoint;
      it = nodes.find(name);
      if (it == nodes.end()) it = nodes.emplace(std::string(name), EndpointSeries{}).first;
    }
    EndpointSeries& n = it->second;
    switch (e.type) {
      case EventType::acquired:
        ++n.acquisitions;
        ++n.held;
        break;
      case EventType::attempt_failed:
        ++n.attempt_failures;
        break;
      case EventType::released:
      case EventType::release_not_held:
      case EventType::lost:
        --n.held;
        break;
      case EventType::release_failed:
        if (e.reason != "after_loss") --n.held;
        break;
      default:
        break;
    }
  }

  void endpoint_text(std::string& out) const {
    auto family = [&](std::string_view name, std::string_view type, std::string_view help, auto value) {
      fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
      for (const auto& [backend, nodes] : endpoints_)
        for (const auto& [endpoint, n] : nodes)
          fmt::format_to(std::back_inserter(out), "{}{{backend=\"{}\",endpoint=\"{}\"}} {}\n", name, escape(backend),
                         escape(endpoint), value(n));
    };
    family("dlock_endpoint_acquisitions_total", "counter", "Locks acquired, by the node (endpoint) that granted them.",
           [](const EndpointSeries& n) { return n.acquisitions; });
    family("dlock_endpoint_attempt_failures_total", "counter",
           "Acquire attempts that failed with a transient error and were retried, by node (endpoint).",
           [](const EndpointSeries& n) { return n.attempt_failures; });
    family("dlock_endpoint_held_locks", "gauge", "Locks currently held, by the node (endpoint) they live on.",
           [](const EndpointSeries& n) { return n.held; });
  }

  static void observe(Histogram& h, const std::vector<double>& bounds, std::chrono::nanoseconds d) {
    const double seconds = std::chrono::duration<double>(d).count();
    if (h.buckets.empty()) h.buckets.assign(bounds.size(), 0);
    const auto it = std::lower_bound(bounds.begin(), bounds.end(), seconds);  // first bound >= value: le
    if (it != bounds.end()) ++h.buckets[static_cast<std::size_t>(it - bounds.begin())];
    ++h.count;
    h.sum += seconds;
  }

  void histogram_text(std::string& out, std::string_view name, std::string_view help, const std::vector<double>& bounds,
                      Histogram Series::*member) const {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    for (const auto& [key, s] : series_) {
      const Histogram& h = s.*member;
      const std::string l = labels(key);
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < bounds.size(); ++i) {
        cumulative += h.buckets.empty() ? 0 : h.buckets[i];
        fmt::format_to(std::back_inserter(out), "{}_bucket{{{},le=\"{}\"}} {}\n", name, l, bounds[i], cumulative);
      }
      fmt::format_to(std::back_inserter(out), "{}_bucket{{{},le=\"+Inf\"}} {}\n{}_sum{{{}}} {}\n{}_count{{{}}} {}\n",
                     name, l, h.count, name, l, h.sum, name, l, h.count);
    }
  }

  Series& series(std::string_view backend, std::string lock_class, std::string_view kind) {
    auto it = series_.find(KeyView(backend, lock_class, kind));
    if (it != series_.end()) return it->second;
    if (series_.size() >= options_.max_series) lock_class = "_other";
    return series_[Key(std::string(backend), std::move(lock_class), std::string(kind))];
  }
  const Series* find(std::string_view backend, std::string_view lock_class, std::string_view kind) const {
    auto it = series_.find(KeyView(backend, lock_class, kind));
    return it == series_.end() ? nullptr : &it->second;
  }

  static std::string escape(std::string_view raw) {
    const std::string v = detail::sanitize_utf8(raw);
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
      if (c == '\\')
        out += "\\\\";
      else if (c == '"')
        out += "\\\"";
      else if (c == '\n')
        out += "\\n";
      else
        out += c;
    }
    return out;
  }
  static std::string labels(const Key& key) {
    return fmt::format("backend=\"{}\",lock_class=\"{}\",kind=\"{}\"", escape(std::get<0>(key)),
                       escape(std::get<1>(key)), escape(std::get<2>(key)));
  }

  MetricsOptions options_;
  mutable std::mutex mu_;
  std::map<Key, Series, KeyLess> series_;
  std::map<std::string, std::map<std::string, EndpointSeries, std::less<>>, std::less<>> endpoints_;
};

}  // namespace dlock
