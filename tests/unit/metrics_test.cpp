// MetricsRegistry: exact counts after a scripted sequence, bounded labels, and
// a strict check of the Prometheus text exposition.
#include <dlock/dlock.hpp>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "test_support.hpp"

using namespace std::chrono_literals;
using dlock::Lock;
using dlock::MemoryBackend;
using dlock::MetricsRegistry;
using C = dlock::MetricsRegistry::Counter;
using R = dlock::MetricsRegistry::ReasonCounter;

namespace {

// A scripted sequence on the in-process backend with an injected clock.
void run_script(dlock::ManualClock& clock, MemoryBackend& mem, const std::shared_ptr<MetricsRegistry>& metrics) {
  Lock<MemoryBackend> a(mem, "orders:1", {.ttl = 10s, .observer = metrics, .clock = &clock});
  Lock<MemoryBackend> b(mem, "orders:2", {.ttl = 10s, .observer = metrics, .clock = &clock});
  Lock<MemoryBackend> c(mem, "orders:1",
                        {.ttl = 10s, .retry = {.max_attempts = 1}, .observer = metrics, .clock = &clock});
  Lock<MemoryBackend> job(mem, "reindex", {.ttl = 1s, .observer = metrics, .clock = &clock});

  for (int i = 0; i < 3; ++i) {  // 3 acquisitions held 2 s each
    a.lock();
    clock.advance(2s);
    a.unlock();
  }
  b.lock();                                     // 4th acquisition; released by its destructor at the end, after 5 s
  a.lock();                                     // 5th
  EXPECT_FALSE(c.try_lock());                   // 1 contention
  EXPECT_THROW(c.lock(), dlock::TimeoutError);  // 1 more attempt, contention, failure (timeout)
  a.extend();                                   // 1 extension
  a.unlock();

  job.lock();  // class "reindex": lost
  clock.advance(5s);
  EXPECT_THROW(job.extend(), dlock::LockLostError);
  job.unlock();  // quiet: the loss was the hold's end
}

}  // namespace

TEST(Metrics, ExactCountsAfterAScriptedSequence) {
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  auto metrics = std::make_shared<MetricsRegistry>();
  run_script(clock, mem, metrics);

  EXPECT_EQ(metrics->value(C::attempts, "memory", "orders"), 7u);  // 3 + b + a + try + lock
  EXPECT_EQ(metrics->value(C::acquisitions, "memory", "orders"), 5u);
  EXPECT_EQ(metrics->value(C::contentions, "memory", "orders"), 2u);
  EXPECT_EQ(metrics->value(C::acquire_timeouts, "memory", "orders"), 1u);  // contention, not a failure
  EXPECT_EQ(metrics->value(R::acquire_failures, "memory", "orders", "timeout"), 0u);
  EXPECT_EQ(metrics->value(C::releases, "memory", "orders"), 5u);
  EXPECT_EQ(metrics->value(C::extensions, "memory", "orders"), 1u);
  EXPECT_EQ(metrics->held("memory", "orders"), 0);

  EXPECT_EQ(metrics->value(C::acquisitions, "memory", "reindex"), 1u);
  EXPECT_EQ(metrics->value(R::lost, "memory", "reindex", "expired"), 1u);
  EXPECT_EQ(metrics->value(C::releases, "memory", "reindex"), 0u);
  EXPECT_EQ(metrics->held("memory", "reindex"), 0);

  const auto hold = metrics->hold_histogram("memory", "orders");
  EXPECT_EQ(hold.count, 5u);
  EXPECT_DOUBLE_EQ(hold.sum, 11.0);  // 2 s + 2 s + 2 s + 0 s (a) + 5 s (b), on the manual clock
  const auto wait = metrics->wait_histogram("memory", "orders");
  EXPECT_EQ(wait.count, 5u);
}

TEST(Metrics, LabelsStayBounded) {
  MemoryBackend mem;
  auto metrics = std::make_shared<MetricsRegistry>(dlock::MetricsOptions{.max_series = 3});
  for (int i = 0; i < 50; ++i) {
    Lock<MemoryBackend> l(mem, "tenant" + std::to_string(i) + ":job", {.observer = metrics});
    l.lock();
    l.unlock();
  }
  const std::string text = metrics->prometheus_text();
  EXPECT_EQ(text.find("tenant10:"), std::string::npos);  // no full names
  std::set<std::string> classes;
  std::regex label(R"re(lock_class="([^"]*)")re");
  for (std::sregex_iterator it(text.begin(), text.end(), label), end; it != end; ++it) classes.insert((*it)[1]);
  EXPECT_EQ(classes.size(), 4u);  // three classes, then everything else
  EXPECT_EQ(classes.count("_other"), 1u);
  EXPECT_EQ(metrics->value(C::acquisitions, "memory", "_other"), 47u);
}

// The exposition format requires UTF-8; lock names are arbitrary bytes.
TEST(Metrics, LabelValuesAreValidUtf8) {
  MemoryBackend mem;
  auto metrics = std::make_shared<MetricsRegistry>();
  Lock<MemoryBackend> l(mem, std::string("caf\xC3\xA9\xFF\\\"x:1"), {.observer = metrics});
  l.lock();
  l.unlock();
  const std::string text = metrics->prometheus_text();
  EXPECT_EQ(text.find('\xFF'), std::string::npos);
  EXPECT_NE(text.find("lock_class=\"caf\xC3\xA9\xEF\xBF\xBD\\\\\\\"x\""), std::string::npos) << text;
}

dlock::Event redis_event(dlock::EventType type, std::string_view endpoint) {
  dlock::Event e;
  e.type = type;
  e.backend = "redis";
  e.endpoint = endpoint;
  e.lock = "a";
  return e;
}

// The node a lock lives on is a label of its own series, one per endpoint
// (not per lock or class), capped at max_endpoints.
TEST(Metrics, EndpointSeriesCountPerNodeWithBoundedLabels) {
  MemoryBackend mem;
  auto metrics = std::make_shared<MetricsRegistry>(dlock::MetricsOptions{.max_endpoints = 2});
  Lock<MemoryBackend> held(mem, "jobs:held", {.observer = metrics});
  held.lock();
  for (int i = 0; i < 20; ++i) {
    Lock<MemoryBackend> l(mem, "tenant" + std::to_string(i) + ":job", {.observer = metrics});
    l.lock();
    l.unlock();
  }
  auto node = metrics->endpoint_series("memory", "in-process");
  EXPECT_EQ(node.acquisitions, 21u);
  EXPECT_EQ(node.held, 1);
  held.unlock();
  EXPECT_EQ(metrics->endpoint_series("memory", "in-process").held, 0);

  // Events of other nodes (as a Redis backend reports them): the third
  // distinct endpoint and every later one are counted as "_other".
  for (const char* at : {"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379", "10.0.0.4:6379"}) {
    metrics->on_event(redis_event(dlock::EventType::acquired, at));
    metrics->on_event(redis_event(dlock::EventType::attempt_failed, at));
  }
  metrics->on_event(redis_event(dlock::EventType::acquired, ""));  // a backend that does not know
  EXPECT_EQ(metrics->endpoint_series("redis", "10.0.0.1:6379").acquisitions, 1u);
  EXPECT_EQ(metrics->endpoint_series("redis", "10.0.0.3:6379").acquisitions, 0u);
  EXPECT_EQ(metrics->endpoint_series("redis", "_other").acquisitions, 3u);
  EXPECT_EQ(metrics->endpoint_series("redis", "_other").attempt_failures, 3u);
  EXPECT_EQ(metrics->endpoint_series("redis", "_other").held, 3);
  const std::string text = metrics->prometheus_text();
  EXPECT_NE(text.find("dlock_endpoint_acquisitions_total{backend=\"memory\",endpoint=\"in-process\"} 21\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("dlock_endpoint_held_locks{backend=\"redis\",endpoint=\"10.0.0.1:6379\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("dlock_endpoint_attempt_failures_total{backend=\"redis\",endpoint=\"_other\"} 3\n"),
            std::string::npos);
  EXPECT_EQ(text.find("10.0.0.4"), std::string::npos);
}

TEST(Metrics, HeldGaugeFollowsAcquisitionsAndEnds) {
  MemoryBackend mem;
  auto metrics = std::make_shared<MetricsRegistry>();
  Lock<MemoryBackend> a(mem, "jobs:a", {.observer = metrics});
  Lock<MemoryBackend> b(mem, "jobs:b", {.observer = metrics});
  a.lock();
  b.lock();
  EXPECT_EQ(metrics->held("memory", "jobs"), 2);
  b.unlock();
  EXPECT_EQ(metrics->held("memory", "jobs"), 1);
  ASSERT_TRUE(mem.force_release("jobs:a"));
  a.unlock();  // found it taken: release_not_held also ends the hold
  EXPECT_EQ(metrics->held("memory", "jobs"), 0);
  EXPECT_EQ(metrics->value(C::releases_not_held, "memory", "jobs"), 1u);
}

TEST(Metrics, PrometheusTextFollowsTheExpositionFormat) {
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  auto metrics = std::make_shared<MetricsRegistry>();
  run_script(clock, mem, metrics);
  const std::string text = metrics->prometheus_text();

  // Every line is a HELP, a TYPE, or a sample of a declared metric family.
  const std::regex help(R"(^# HELP (dlock_[a-z_]+) \S.*$)");
  const std::regex type(R"(^# TYPE (dlock_[a-z_]+) (counter|gauge|histogram)$)");
  const std::regex sample(
      R"re(^(dlock_[a-z_]+)\{backend="[^"]*",(lock_class="[^"]*",kind="(mutex|rw_read|rw_write|permit|leader)"(,reason="[a-z_]+")?(,le="([0-9.e+-]+|\+Inf)")?|endpoint="[^"]*")\} -?[0-9.e+-]+$)re");
  std::istringstream in(text);
  std::string line, family, family_type;
  std::set<std::string> typed;
  int samples = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      family = m[1];
    } else if (std::regex_match(line, m, type)) {
      ASSERT_EQ(m[1], family) << "TYPE must follow the HELP of the same family: " << line;
      family_type = m[2];
      EXPECT_TRUE(typed.insert(family).second) << "family declared twice: " << family;
    } else {
      ASSERT_TRUE(std::regex_match(line, m, sample)) << "not a valid sample line: " << line;
      const std::string name = m[1];
      if (family_type == "histogram") {
        EXPECT_TRUE(name == family + "_bucket" || name == family + "_sum" || name == family + "_count") << line;
        EXPECT_EQ(m[5].matched, name == family + "_bucket") << line;
      } else {
        EXPECT_EQ(name, family) << line;
      }
      ++samples;
    }
  }
  EXPECT_GT(samples, 20);
  EXPECT_NE(
      text.find(
          "dlock_acquire_wait_seconds_bucket{backend=\"memory\",lock_class=\"orders\",kind=\"mutex\",le=\"+Inf\"} 5\n"),
      std::string::npos);
  EXPECT_NE(text.find("dlock_hold_seconds_sum{backend=\"memory\",lock_class=\"orders\",kind=\"mutex\"} 11\n"),
            std::string::npos);
  EXPECT_NE(
      text.find(
          "dlock_locks_lost_total{backend=\"memory\",lock_class=\"reindex\",kind=\"mutex\",reason=\"expired\"} 1\n"),
      std::string::npos);
  // Buckets are cumulative: the 0 s hold from le="0.01" on, all five by le="5".
  EXPECT_NE(
      text.find("dlock_hold_seconds_bucket{backend=\"memory\",lock_class=\"orders\",kind=\"mutex\",le=\"1\"} 1\n"),
      std::string::npos);
  EXPECT_NE(
      text.find("dlock_hold_seconds_bucket{backend=\"memory\",lock_class=\"orders\",kind=\"mutex\",le=\"5\"} 5\n"),
      std::string::npos);
}

// The strict parser of Prometheus itself, where installed (scripts/setup installs it).
TEST(Metrics, PromtoolAcceptsTheExposition) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) GTEST_SKIP() << "promtool not installed";
  dlock::ManualClock clock;
  MemoryBackend mem(clock);
  auto metrics = std::make_shared<MetricsRegistry>();
  run_script(clock, mem, metrics);
  const std::string path = ::testing::TempDir() + "dlock_metrics.prom";
  std::ofstream(path) << metrics->prometheus_text();
  const std::string cmd = "promtool check metrics < " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string output;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) output += buf;
  const int status = pclose(p);
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

// Issue 16 item 7: the primitive a lock is becomes the `kind` label; one
// name used as a mutex and as a semaphore gives two series.
TEST(Metrics, KindLabelNamesThePrimitive) {
  MemoryBackend mem;
  dlock::MemoryPrimitives prims;
  auto metrics = std::make_shared<MetricsRegistry>();
  const dlock::LockOptions o{.observer = metrics};
  Lock<MemoryBackend> mutex(mem, "jobs:1", o);
  ASSERT_TRUE(mutex.try_lock());
  dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "jobs:2", o);
  ASSERT_TRUE(rw.try_lock_shared());
  rw.unlock_shared();
  ASSERT_TRUE(rw.try_lock());
  dlock::Semaphore<dlock::MemoryPrimitives> sem(prims, "jobs:3", 2, o);
  ASSERT_TRUE(sem.try_acquire());
  dlock::Election<dlock::MemoryPrimitives> election(prims, "jobs:4", "me", o);
  ASSERT_TRUE(election.try_campaign());

  EXPECT_EQ(metrics->value(C::acquisitions, "memory", "jobs"), 1u);  // "mutex" by default
  EXPECT_EQ(metrics->value(C::acquisitions, "memory", "jobs", "rw_read"), 1u);
  EXPECT_EQ(metrics->value(C::releases, "memory", "jobs", "rw_read"), 1u);
  EXPECT_EQ(metrics->held("memory", "jobs", "rw_write"), 1);
  EXPECT_EQ(metrics->held("memory", "jobs", "permit"), 1);
  EXPECT_EQ(metrics->held("memory", "jobs", "leader"), 1);
  EXPECT_EQ(metrics->held("memory", "jobs", "mutex"), 1);
  const std::string text = metrics->prometheus_text();
  for (const char* kind : {"mutex", "rw_read", "rw_write", "permit", "leader"}) {
    EXPECT_NE(text.find(std::string("dlock_acquisitions_total{backend=\"memory\",lock_class=\"jobs\",kind=\"") + kind +
                        "\"} 1\n"),
              std::string::npos)
        << kind << "\n"
        << text;
  }
  rw.unlock();
  sem.release();
  (void)election.resign();
  mutex.unlock();
}
