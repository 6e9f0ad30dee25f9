// dlockctl against real servers: every command run as a subprocess against
// redis-server(s) and PostgreSQL started by the test harnesses.
#include <dlock/dlock.hpp>
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/detail/redis_waits.hpp>
#include <dlock/postgres.hpp>
#include <dlock/redis.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "redis_test_support.hpp"
#include "release_waiter.hpp"
#include "support/postgres_server.hpp"
#include "support/redis_server.hpp"
#include "tool_support.hpp"
#include "unit/test_support.hpp"

namespace {

using namespace std::chrono_literals;
using dlock::test::RedisServer;
using dlock::test::RedisTest;
using dlock::test::SharedRedis;
using dlock::test::tools::Json;
using dlock::test::tools::parse_json;
using dlock::test::tools::RunResult;
using dlock::test::tools::Worker;

[[maybe_unused]] auto* const redis_env = ::testing::AddGlobalTestEnvironment(new SharedRedis);

RunResult ctl(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {}) {
  return dlock::test::tools::run_program(DLOCKCTL, args, env);
}

std::string uri_of(const dlock::RedisOptions& o) {
  std::string auth;
  if (!o.password.empty()) auth = o.username + ":" + o.password + "@";
  return fmt::format("redis://{}{}:{}/{}", auth, o.host, o.port, o.database);
}

std::string describe(const RunResult& r) {
  return fmt::format("exit {}\nstdout:\n{}\nstderr:\n{}", r.rc, r.out, r.err);
}

std::size_t count_of(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
  return n;
}

const Json* find_lock(const Json& doc, const std::string& name) {
  for (const auto& l : doc["locks"].items)
    if (l["name"].text == name) return &l;
  return nullptr;
}

std::shared_ptr<dlock::Observer> quiet() { return std::make_shared<dlock::test::QuietObserver>(); }

// ---- Redis ----

class ToolsRedis : public RedisTest {
 protected:
  /// Connection flags for this test's server and prefix.
  std::vector<std::string> with_conn(std::vector<std::string> args) const {
    args.insert(args.end(), {"--redis", uri_of(options()), "--prefix", prefix_, "--timeout", "2"});
    return args;
  }
};

TEST_F(ToolsRedis, ListShowsOwnerTtlAndTokenAndSkipsCountersAndWaitRecords) {
  dlock::Lock<dlock::RedisBackend> lock(redis(), "orders:42", {.ttl = 30s, .observer = quiet()});
  lock.lock();
  const std::uint64_t token = lock.fencing_token();
  (void)cmd({"SET", key("plain"), "other-owner"});
  const std::vector<dlock::HeldLockRef> holds{{"x", "ox"}};
  (void)cmd({"SET", dlock::detail::redis_waiting_key(prefix_, "w-1"),
             dlock::detail::encode_wait_record({"h:1:2", "w-1", "orders:42", holds, 10s}), "PX", "10000"});

  RunResult r = ctl(with_conn({"redis", "list", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json doc = parse_json(r.out);
  ASSERT_EQ(doc["locks"].items.size(), 2u) << r.out;
  const Json* l = find_lock(doc, "orders:42");
  ASSERT_NE(l, nullptr);
  EXPECT_EQ((*l)["owner"].text, lock.owner_id());
  EXPECT_GT((*l)["ttl_ms"].integer(), 20000);
  EXPECT_LE((*l)["ttl_ms"].integer(), 30000);
  EXPECT_EQ((*l)["token"].text, std::to_string(token));
  EXPECT_EQ((*l)["waiters"].integer(), 1);
  const Json* p = find_lock(doc, "plain");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ((*p)["ttl_ms"].integer(), -1);
  EXPECT_EQ((*p)["token"].type, Json::Type::null);

  r = ctl(with_conn({"redis", "list"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("orders:42"), std::string::npos);
  EXPECT_NE(r.out.find(std::string(lock.owner_id())), std::string::npos);
  EXPECT_NE(r.out.find(std::to_string(token)), std::string::npos);
  EXPECT_NE(r.out.find("2 locks"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(":fence"), std::string::npos);
  EXPECT_EQ(r.out.find("waiting:"), std::string::npos);
}

TEST_F(ToolsRedis, ListScansManyKeysWithoutKeys) {
  constexpr int n = 2600;  // several SCAN pages and several lock-state batches
  (void)cmd(
      {"EVAL",
       "for i = 1, tonumber(ARGV[2]) do redis.call('SET', ARGV[1] .. '{k' .. i .. '}', 'o' .. i, 'PX', 60000) end", "0",
       prefix_, std::to_string(n)});
  const bool own = !SharedRedis::instance()->external();
  if (own) (void)cmd({"CONFIG", "RESETSTAT"});
  const RunResult r = ctl(with_conn({"redis", "list", "--json"}));
  ASSERT_EQ(r.rc, 0) << r.err;
  const Json doc = parse_json(r.out);
  ASSERT_EQ(doc["locks"].items.size(), static_cast<std::size_t>(n));
  std::set<std::string> names;
  for (const auto& l : doc["locks"].items) {
    names.insert(l["name"].text);
    EXPECT_EQ(l["owner"].text, "o" + l["name"].text.substr(1));
  }
  EXPECT_EQ(names.size(), static_cast<std::size_t>(n));
  if (own) {
    const std::string stats = cmd({"INFO", "commandstats"}).str;
    EXPECT_EQ(stats.find("cmdstat_keys:"), std::string::npos) << "dlockctl used KEYS";
    EXPECT_NE(stats.find("cmdstat_scan:calls="), std::string::npos);
  }
}

TEST_F(ToolsRedis, InspectShowsRecordedWaitersAndForceReleaseWakesThem) {
  dlock::Lock<dlock::RedisBackend> holder(redis(), "job", {.ttl = 60s, .observer = quiet()});
  holder.lock();
  const std::string holder_owner(holder.owner_id());

  // A waiter thread that already holds "other" blocks on "job"; its backoff
  // (5 s) is far longer than the wake-up we expect after the force release.
  std::atomic<bool> acquired{false};
  std::optional<std::chrono::steady_clock::time_point> acquired_at;  // read after join()
  std::string other_owner;
  std::atomic<bool> other_ready{false};
  std::thread waiter([&] {
    dlock::Lock<dlock::RedisBackend> other(redis(), "other", {.ttl = 30s, .observer = quiet()});
    other.lock();
    other_owner = std::string(other.owner_id());
    other_ready = true;
    acquired_at = dlock::test::acquire_after_release(redis(), "job", quiet());
    acquired = acquired_at.has_value();
    other.unlock();
  });

  // Wait until the blocked acquire's wait record shows up in inspect.
  Json doc;
  RunResult r;
  (void)dlock::test::eventually(
      [&] {
        r = ctl(with_conn({"redis", "inspect", "job", "--json"}));
        if (r.rc != 0) return true;
        doc = parse_json(r.out);
        return !doc["waiters"].items.empty();
      },
      10s);
  ASSERT_EQ(r.rc, 0) << describe(r);
  ASSERT_EQ(doc["waiters"].items.size(), 1u) << r.out;
  EXPECT_EQ(doc["owner"].text, holder_owner);
  const Json& w = doc["waiters"].items[0];
  EXPECT_EQ(w["pid"].integer(), static_cast<long long>(::getpid()));
  EXPECT_EQ(w["lock"].text, "job");
  ASSERT_TRUE(other_ready.load());
  ASSERT_EQ(w["holds"].items.size(), 1u);
  EXPECT_EQ(w["holds"].items[0]["name"].text, "other");
  EXPECT_EQ(w["holds"].items[0]["owner"].text, other_owner);

  r = ctl(with_conn({"redis", "inspect", "job"}));
  EXPECT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("waiters  1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(fmt::format(":{}:", ::getpid())), std::string::npos) << r.out;

  // Without --yes: refused, nothing deleted.
  r = ctl(with_conn({"redis", "release", "--force", "job"}));
  EXPECT_EQ(r.rc, 2) << describe(r);
  EXPECT_NE(r.err.find(holder_owner), std::string::npos);
  EXPECT_EQ(cmd({"GET", key("job")}).str, holder_owner);
  EXPECT_FALSE(acquired.load());

  const auto released_at = std::chrono::steady_clock::now();
  r = ctl(with_conn({"redis", "release", "--force", "job", "--yes"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find(holder_owner), std::string::npos) << r.out;
  waiter.join();
  ASSERT_TRUE(acquired.load()) << "the waiter never got the lock";
  const auto woke_after = *acquired_at - released_at;
  EXPECT_LT(woke_after, 2000ms) << "the waiter was not woken by the release (its backoff is 5 s)";

  // The acquire ended: its wait record was deleted (clear_wait).
  EXPECT_TRUE(cmd({"KEYS", dlock::test::RedisTest::prefix_ + "waiting:*"}).elements.empty());
  EXPECT_EQ(holder.release(), dlock::ReleaseResult::not_held);
}

// --owner ID: released only if ID holds it (exit 1 otherwise, nothing deleted).
TEST_F(ToolsRedis, ForceReleaseWithAnOwnerReleasesOnlyThatOwnersHold) {
  (void)cmd({"SET", key("owned"), "owner-a", "PX", "30000"});
  RunResult r = ctl(with_conn({"redis", "release", "--force", "--owner", "owner-b", "owned", "--yes"}));
  EXPECT_EQ(r.rc, 1) << describe(r);
  EXPECT_EQ(cmd({"GET", key("owned")}).str, "owner-a");
  r = ctl(with_conn({"redis", "release", "--force", "--owner", "owner-b", "owned"}));
  EXPECT_EQ(r.rc, 1) << describe(r);
  r = ctl(with_conn({"redis", "release", "--force", "--owner", "", "owned", "--yes"}));
  EXPECT_EQ(r.rc, 2) << describe(r);
  r = ctl(with_conn({"redis", "release", "--force", "--owner", "owner-a", "owned", "--yes"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("owner-a"), std::string::npos) << r.out;
  EXPECT_EQ(cmd({"EXISTS", key("owned")}).integer, 0);
}

TEST_F(ToolsRedis, ForceReleaseDeletesTheKeyAndReportsWhatItRemoved) {
  (void)cmd({"SET", key("stuck"), "dead-owner", "PX", "30000"});
  RunResult r = ctl(with_conn({"redis", "release", "--force", "stuck", "--yes", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json doc = parse_json(r.out);
  EXPECT_TRUE(doc["released"].boolean);
  EXPECT_EQ(doc["owner"].text, "dead-owner");
  EXPECT_GT(doc["ttl_ms"].integer(), 20000);
  EXPECT_EQ(cmd({"EXISTS", key("stuck")}).integer, 0);

  r = ctl(with_conn({"redis", "release", "--force", "stuck", "--yes"}));
  EXPECT_EQ(r.rc, 1) << describe(r);
  EXPECT_NE(r.out.find("not held"), std::string::npos);
  r = ctl(with_conn({"redis", "inspect", "stuck"}));
  EXPECT_EQ(r.rc, 1);
  r = ctl(with_conn({"redis", "inspect", "stuck", "--json"}));
  EXPECT_EQ(r.rc, 1);
  EXPECT_FALSE(parse_json(r.out)["held"].boolean);
}

TEST_F(ToolsRedis, ListAndInspectShowEachPrimitivesKind) {
  using namespace dlock::detail;
  const auto eval = [&](std::string_view script, std::initializer_list<std::string_view> keys,
                        std::initializer_list<std::string_view> args) {
    const std::string n = std::to_string(keys.size());
    std::vector<std::string_view> argv{"EVAL", script, n};
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    const auto r = redis().node().command(argv);
    ASSERT_FALSE(r.is_error()) << r.str;
  };
  const auto rw = redis_primitive_keys(prefix_, "cfg");
  for (const std::string_view r : {"reader-1", "reader-2"})
    eval(redis_rw_read_acquire_script, {rw.rw_writer, rw.rw_readers, rw.rw_waiting, rw.fence, rw.rw_tokens},
         {r, "30000", "60000"});
  const auto sem = redis_primitive_keys(prefix_, "pool");
  eval(redis_sem_acquire_script, {sem.sem_permits, sem.sem_count, sem.fence, sem.sem_tokens},
       {"permit-1", "30000", "60000", "4"});
  const auto q = redis_primitive_keys(prefix_, "fifo");
  for (const std::string_view w : {"fifo-holder", "fifo-waiter"})
    eval(redis_fair_acquire_script, {key("fifo"), q.fence, q.fair_queue, q.fair_deadlines},
         {w, "30000", "60000", "20000"});
  const auto e = redis_primitive_keys(prefix_, "leader");
  eval(redis_leader_acquire_script, {e.leader, e.fence, e.leader_info}, {"lead-owner", "30000", "60000", "node-a"});

  RunResult r = ctl(with_conn({"redis", "list", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json doc = parse_json(r.out);
  ASSERT_EQ(doc["locks"].items.size(), 4u) << r.out;
  EXPECT_EQ((*find_lock(doc, "cfg"))["kind"].text, "rw");
  EXPECT_EQ((*find_lock(doc, "cfg"))["readers"].items.size(), 2u);
  EXPECT_EQ((*find_lock(doc, "pool"))["kind"].text, "semaphore");
  EXPECT_EQ((*find_lock(doc, "pool"))["permits"].items.at(0)["owner"].text, "permit-1");
  EXPECT_EQ((*find_lock(doc, "fifo"))["kind"].text, "fair-queue");
  EXPECT_EQ((*find_lock(doc, "fifo"))["owner"].text, "fifo-holder");
  EXPECT_EQ((*find_lock(doc, "fifo"))["waiters"].integer(), 1);
  EXPECT_EQ((*find_lock(doc, "leader"))["kind"].text, "election");
  EXPECT_EQ((*find_lock(doc, "leader"))["candidate"].text, "node-a");

  r = ctl(with_conn({"redis", "list"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("KIND"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 readers"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("fair-queue"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 locks"), std::string::npos) << r.out;
  r = ctl(with_conn({"redis", "list", "--match", "f*", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  ASSERT_EQ(parse_json(r.out)["locks"].items.size(), 1u) << r.out;
  r = ctl(with_conn({"redis", "list", "--limit", "2"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("2 locks under prefix"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("stopped at --limit 2"), std::string::npos) << r.out;

  r = ctl(with_conn({"redis", "inspect", "cfg"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("kind     rw"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("reader-2"), std::string::npos) << r.out;
  r = ctl(with_conn({"redis", "inspect", "fifo", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(parse_json(r.out)["queue"].items.at(0)["owner"].text, "fifo-waiter");

  // The operator's permit count.
  r = ctl(with_conn({"redis", "permits", "pool", "--set", "3", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(parse_json(r.out)["permit_count"].integer(), 3);
  EXPECT_EQ(parse_json(r.out)["previous_count"].type, Json::Type::null);
  EXPECT_EQ(cmd({"GET", sem.sem_count}).str, "3");
  r = ctl(with_conn({"redis", "permits", "pool", "--clear"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("was      3"), std::string::npos) << r.out;
  EXPECT_EQ(cmd({"EXISTS", sem.sem_count}).integer, 0);
  EXPECT_EQ(ctl(with_conn({"redis", "permits", "pool", "--set", "-1"})).rc, 2);
}

// A reader's and a permit's fencing tokens (P{N}:rw:tokens, P{N}:sem:tokens)
// are shown with their leases, and a forced release of a lease (or of all of
// a kind's leases) takes the lease's token entry with it.
TEST_F(ToolsRedis, InspectShowsReaderAndPermitTokensAndForceReleaseDropsThem) {
  const std::string name = "shared";
  const auto k = dlock::detail::redis_primitive_keys(prefix_, name);
  dlock::RwLock<dlock::RedisBackend> rw(redis(), name, {.ttl = 30s, .observer = quiet()});
  dlock::Semaphore<dlock::RedisBackend> sem(redis(), name, 3, {.ttl = 30s, .observer = quiet()});
  rw.lock_shared();
  const std::string reader = rw.reader().owner_id();
  const std::string reader_token = std::to_string(rw.reader().fencing_token());
  auto permit_a = sem.acquire_permit();
  auto permit_b = sem.acquire_permit();
  const std::map<std::string, std::string> permit_tokens{
      {permit_a.owner_id(), std::to_string(permit_a.fencing_token())},
      {permit_b.owner_id(), std::to_string(permit_b.fencing_token())}};

  RunResult r = ctl(with_conn({"redis", "inspect", name, "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  std::map<std::string, const Json*> kinds;
  const Json doc = parse_json(r.out);
  for (const auto& l : doc["kinds"].items) kinds[l["kind"].text] = &l;
  ASSERT_TRUE(kinds.count("rw") && kinds.count("semaphore")) << r.out;
  const Json& readers = (*kinds["rw"])["readers"];
  ASSERT_EQ(readers.items.size(), 1u) << r.out;
  EXPECT_EQ(readers.items[0]["owner"].text, reader);
  EXPECT_EQ(readers.items[0]["token"].type, Json::Type::number) << r.out;
  EXPECT_EQ(readers.items[0]["token"].text, reader_token) << r.out;
  const Json& permits = (*kinds["semaphore"])["permits"];
  ASSERT_EQ(permits.items.size(), 2u) << r.out;
  for (const auto& p : permits.items) {
    ASSERT_TRUE(permit_tokens.count(p["owner"].text)) << r.out;
    EXPECT_EQ(p["token"].text, permit_tokens.at(p["owner"].text)) << r.out;
  }
  r = ctl(with_conn({"redis", "list", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(count_of(r.out, "\"token\":" + reader_token), 1u) << r.out;  // the reader's; the lock's is the counter
  r = ctl(with_conn({"redis", "inspect", name}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("TOKEN"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(reader_token), std::string::npos) << r.out;
  for (const auto& [owner, token] : permit_tokens) EXPECT_NE(r.out.find(token), std::string::npos) << r.out;

  // One reader by owner: its lease and its token entry go; the permits stay.
  r = ctl(with_conn({"redis", "release", "--force", "--kind", "rw", "--owner", reader, name}));
  EXPECT_EQ(r.rc, 2) << describe(r);  // without --yes nothing is released
  EXPECT_EQ(cmd({"HEXISTS", k.rw_tokens, reader}).integer, 1);
  r = ctl(with_conn({"redis", "release", "--force", "--kind", "rw", "--owner", reader, name, "--yes", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json released = parse_json(r.out);
  ASSERT_EQ(released["leases"].items.size(), 1u) << r.out;
  EXPECT_EQ(released["leases"].items[0]["owner"].text, reader);
  EXPECT_EQ(released["leases"].items[0]["token"].text, reader_token);
  EXPECT_EQ(cmd({"ZSCORE", k.rw_readers, reader}).type, dlock::detail::RedisValue::Type::nil);
  EXPECT_EQ(cmd({"HEXISTS", k.rw_tokens, reader}).integer, 0);
  EXPECT_EQ(cmd({"EXISTS", k.rw_tokens}).integer, 0);
  EXPECT_EQ(cmd({"HLEN", k.sem_tokens}).integer, 2);

  // The whole semaphore: every permit and every token entry.
  r = ctl(with_conn({"redis", "release", "--force", "--kind", "semaphore", name, "--yes"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  for (const auto& [owner, token] : permit_tokens) {
    EXPECT_NE(r.out.find(owner), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("token " + token), std::string::npos) << r.out;
  }
  EXPECT_EQ(cmd({"EXISTS", k.sem_permits}).integer, 0);
  EXPECT_EQ(cmd({"EXISTS", k.sem_tokens}).integer, 0);
  r = ctl(with_conn({"redis", "release", "--force", "--kind", "semaphore", name, "--yes"}));
  EXPECT_EQ(r.rc, 1) << describe(r);
  EXPECT_EQ(ctl(with_conn({"redis", "release", "--force", "--kind", "queue", name, "--yes"})).rc, 2);
  EXPECT_EQ(permit_a.release(), dlock::ReleaseResult::not_held);
  EXPECT_EQ(permit_b.release(), dlock::ReleaseResult::not_held);
  rw.unlock_shared();
}

TEST_F(ToolsRedis, AwkwardNamesRoundTripThroughJson) {
  const std::string name = "q\"uote\\ {brace} new\nline caf\xc3\xa9 \x1b[31m";
  (void)cmd({"SET", key(name), "o", "PX", "30000"});
  RunResult r = ctl(with_conn({"redis", "list", "--json"}));
  ASSERT_EQ(r.rc, 0);
  const Json doc = parse_json(r.out);
  ASSERT_EQ(doc["locks"].items.size(), 1u);
  EXPECT_EQ(doc["locks"].items[0]["name"].text, name);
  r = ctl(with_conn({"redis", "list"}));
  EXPECT_EQ(r.out.find('\x1b'), std::string::npos) << "a name wrote an escape sequence to the terminal";
  r = ctl(with_conn({"redis", "inspect", name}));
  EXPECT_EQ(r.rc, 0) << describe(r);
}

TEST_F(ToolsRedis, DeadlockBetweenTwoProcessesIsReported) {
  RunResult r = ctl(with_conn({"deadlocks"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("no deadlock"), std::string::npos);

  const std::string uri = uri_of(options());
  Worker a(DLOCKCTL_WORKER, {uri, prefix_, "lock-a", "lock-b"});
  Worker b(DLOCKCTL_WORKER, {uri, prefix_, "lock-b", "lock-a"});
  ASSERT_EQ(a.read_line().rfind("held ", 0), 0u);
  ASSERT_EQ(b.read_line().rfind("held ", 0), 0u);
  a.write_line("go");
  b.write_line("go");
  ASSERT_EQ(a.read_line(), "waiting");
  ASSERT_EQ(b.read_line(), "waiting");

  (void)dlock::test::eventually(
      [&] {
        r = ctl(with_conn({"deadlocks"}));
        return r.rc != 0;
      },
      15s);
  ASSERT_EQ(r.rc, 1) << describe(r);
  EXPECT_NE(r.out.find(fmt::format("(pid {})", a.pid())), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(fmt::format("(pid {})", b.pid())), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"lock-a\""), std::string::npos);
  EXPECT_NE(r.out.find("\"lock-b\""), std::string::npos);
  EXPECT_EQ(count_of(r.out, "deadlock 1:"), 1u);
  EXPECT_EQ(count_of(r.out, "deadlock 2:"), 0u);

  r = ctl(with_conn({"deadlocks", "--json"}));
  ASSERT_EQ(r.rc, 1) << describe(r);
  const Json doc = parse_json(r.out);
  EXPECT_TRUE(doc["deadlock"].boolean);
  ASSERT_EQ(doc["cycles"].items.size(), 1u);
  const auto& cycle = doc["cycles"].items[0].items;
  ASSERT_EQ(cycle.size(), 2u);
  std::set<long long> pids{cycle[0]["pid"].integer(), cycle[1]["pid"].integer()};
  EXPECT_EQ(pids, (std::set<long long>{a.pid(), b.pid()}));
  std::set<std::string> locks{cycle[0]["waits_for"].text, cycle[1]["waits_for"].text};
  EXPECT_EQ(locks, (std::set<std::string>{"lock-a", "lock-b"}));
  EXPECT_EQ(cycle[0]["held_by_pid"].integer(), cycle[1]["pid"].integer());

  a.stop();
  b.stop();
  // Their wait records stay until their TTL; without the locks' keys there is no cycle.
  (void)cmd({"DEL", key("lock-a"), key("lock-b")});
  r = ctl(with_conn({"deadlocks"}));
  EXPECT_EQ(r.rc, 0) << describe(r);
}

TEST_F(ToolsRedis, WatchRefreshesCountTimes) {
  (void)cmd({"SET", key("w"), "o", "PX", "30000"});
  RunResult r = ctl(with_conn({"watch", "redis", "--count", "2", "--interval", "0.2"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(count_of(r.out, "dlockctl watch redis: refresh"), 2u) << r.out;
  EXPECT_EQ(count_of(r.out, "1 lock under prefix"), 2u) << r.out;
  EXPECT_EQ(r.out.find("\x1b[2J"), std::string::npos) << "cleared a screen that is not a terminal";
  EXPECT_GE(r.elapsed, 200ms);

  r = ctl(with_conn({"watch", "--count", "2", "--interval", "0.1", "--json"}));
  ASSERT_EQ(r.rc, 0) << describe(r);
  std::size_t docs = 0;
  for (std::size_t pos = 0; pos < r.out.size();) {
    const auto nl = r.out.find('\n', pos);
    ASSERT_NE(nl, std::string::npos);
    EXPECT_EQ(parse_json(r.out.substr(pos, nl - pos))["locks"].items.size(), 1u);
    ++docs;
    pos = nl + 1;
  }
  EXPECT_EQ(docs, 2u);
}

TEST_F(ToolsRedis, ExitCodes) {
  EXPECT_EQ(ctl(with_conn({"redis", "list", "--bogus"})).rc, 2);
  EXPECT_EQ(ctl({"redis"}).rc, 2);
  EXPECT_EQ(ctl(with_conn({"redis", "inspect", "missing"})).rc, 1);
  EXPECT_EQ(ctl(with_conn({"redis", "release", "--force", "missing", "--yes"})).rc, 1);
  EXPECT_EQ(ctl(with_conn({"redis", "release", "missing", "--yes"})).rc, 2);
  EXPECT_EQ(ctl({"--help"}).rc, 0);
}

TEST(ToolsConnection, RefusedExitsThreeWithinTheTimeout) {
  const int port = dlock::test::free_loopback_port();
  const std::string endpoint = fmt::format("127.0.0.1:{}", port);
  const std::vector<std::vector<std::string>> commands{
      {"redis", "list", "--host", "127.0.0.1", "--port", std::to_string(port), "--timeout", "0.5"},
      {"redis", "inspect", "x", "--redis", "redis://" + endpoint, "--timeout", "0.5"},
      {"deadlocks", "--redis", "redis://" + endpoint, "--timeout", "0.5"},
      {"redlock", "list", "--nodes", endpoint, "--timeout", "0.5"},
      {"pg", "list", "--pg", fmt::format("host=127.0.0.1 port={} dbname=x user=postgres", port), "--timeout", "0.5"},
  };
  for (const auto& c : commands) {
    const RunResult r = ctl(c);
    EXPECT_EQ(r.rc, 3) << c[0] << " " << c[1] << "\n" << describe(r);
    EXPECT_LT(r.elapsed, 2000ms) << c[0];
    EXPECT_NE(r.err.find(std::to_string(port)), std::string::npos) << r.err;
    EXPECT_EQ(count_of(r.err, "\n"), 1u) << "not one line:\n" << r.err;
  }
}

TEST(ToolsConnection, PausedServerTimesOut) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer server;
  server.pause();
  const RunResult r = ctl({"redis", "list", "--port", std::to_string(server.port()), "--timeout", "0.5"});
  server.resume();
  EXPECT_EQ(r.rc, 3) << describe(r);
  EXPECT_LT(r.elapsed, 2500ms);
  EXPECT_NE(r.err.find(std::to_string(server.port())), std::string::npos);
}

TEST(ToolsPassword, NeverAppearsInAnyOutput) {
  DLOCK_REQUIRE_OWN_REDIS();
  const std::string pw = "s3cr3t-Pw-7Zq";
  const std::string wrong = "wr0ng-Pw-8Yk";
  RedisServer server({"--requirepass", pw});
  dlock::RedisOptions o = server.options();
  o.password = pw;
  dlock::RedisBackend redis(o);
  dlock::Lock<dlock::RedisBackend> lock(redis, "pw-lock", {.ttl = 30s, .observer = quiet()});
  lock.lock();
  const std::string uri = fmt::format("redis://:{}@127.0.0.1:{}/0", pw, server.port());
  const std::string bad_uri = fmt::format("redis://:{}@127.0.0.1:{}/0", wrong, server.port());
  const std::string node = fmt::format("127.0.0.1:{}", server.port());
  const std::map<std::string, std::string> env{{"DLOCK_REDIS", uri},
                                               {"DLOCK_PG", "host=127.0.0.1 port=1 password=" + pw}};
  struct Case {
    std::vector<std::string> args;
    std::map<std::string, std::string> env;
    int rc;
  };
  const std::vector<Case> cases{
      {{"redis", "list", "--redis", uri}, {}, 0},
      {{"redis", "list", "--json"}, env, 0},
      {{"redis", "inspect", "pw-lock", "--json"}, env, 0},
      {{"redis", "release", "--force", "pw-lock"}, env, 2},
      {{"redis", "release", "--force", "--kind", "semaphore", "pw-lock", "--yes"}, env, 1},
      {{"deadlocks", "--json"}, env, 0},
      {{"watch", "--count", "1", "--interval", "0.1"}, env, 0},
      {{"redlock", "list", "--nodes", node, "--json"}, env, 0},
      {{"redlock", "list", "--nodes", node, "--password", pw}, {}, 0},
      {{"redis", "list", "--help"}, env, 0},
      {{"pg", "list", "--help"}, env, 0},
      {{"redis", "list", "--redis", bad_uri}, {}, 3},
      {{"redis", "list", "--port", std::to_string(server.port()), "--password", wrong}, {}, 3},
      {{"redis", "list"}, {{"DLOCK_REDIS", bad_uri}}, 3},
      {{"redlock", "list", "--nodes", node, "--redis", bad_uri}, {}, 3},
      {{"redis", "list", "--redis", fmt::format("redis://:{}@127.0.0.1:1/0", pw), "--timeout", "0.5"}, {}, 3},
      {{"redis", "list", "--redis", fmt::format("redis://:{}@127.0.0.1:{}/x", pw, server.port())}, {}, 2},
      {{"pg", "list", "--timeout", "0.5"}, env, 3},
      {{"pg", "list", "--pg", fmt::format("postgresql://u:{}@127.0.0.1:1/db", pw), "--timeout", "0.5"}, {}, 3},
  };
  for (const auto& c : cases) {
    const RunResult r = ctl(c.args, c.env);
    const std::string what = fmt::format("dlockctl {}", fmt::join(c.args, " "));
    EXPECT_EQ(r.rc, c.rc) << what << "\n" << describe(r);
    for (const auto* secret : {&pw, &wrong}) {
      EXPECT_EQ(r.out.find(*secret), std::string::npos) << what << " printed a password on stdout";
      EXPECT_EQ(r.err.find(*secret), std::string::npos) << what << " printed a password on stderr";
    }
  }
  EXPECT_EQ(lock.release(), dlock::ReleaseResult::released);
}

// ---- Redlock (plain commands over N nodes) ----

TEST(ToolsRedlock, QuorumOverThreeNodes) {
  DLOCK_REQUIRE_OWN_REDIS();
  RedisServer n0, n1, n2;
  std::vector<std::unique_ptr<dlock::RedisBackend>> b;
  for (auto* s : {&n0, &n1, &n2}) b.push_back(std::make_unique<dlock::RedisBackend>(s->options()));
  const auto on = [&](std::size_t i, std::initializer_list<std::string_view> c) { return b[i]->node().command(c); };
  const std::string nodes = fmt::format("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", n0.port(), n1.port(), n2.port());
  // "two" held by owner-A on 2 of 3 nodes; "one" by owner-B on 1 of 3.
  for (std::size_t i : {0u, 1u}) (void)on(i, {"SET", "dlock:{two}", "owner-A", "PX", "30000"});
  (void)on(0, {"SET", "dlock:{two}:fence", "17"});
  (void)on(2, {"SET", "dlock:{one}", "owner-B", "PX", "30000"});

  RunResult r = ctl({"redlock", "list", "--nodes", nodes, "--json"});
  ASSERT_EQ(r.rc, 0) << describe(r);
  Json doc = parse_json(r.out);
  EXPECT_EQ(doc["quorum"].integer(), 2);
  ASSERT_EQ(doc["locks"].items.size(), 2u);
  const Json* two = find_lock(doc, "two");
  const Json* one = find_lock(doc, "one");
  ASSERT_TRUE(two && one);
  EXPECT_TRUE((*two)["held"].boolean);
  EXPECT_EQ((*two)["owner"].text, "owner-A");
  EXPECT_EQ((*two)["agreeing"].integer(), 2);
  EXPECT_EQ((*two)["nodes"].items[0]["token"].text, "17");
  EXPECT_EQ((*two)["nodes"].items[2]["owner"].type, Json::Type::null);
  EXPECT_FALSE((*one)["held"].boolean);
  EXPECT_EQ((*one)["agreeing"].integer(), 1);

  r = ctl({"redlock", "list", "--nodes", nodes});
  ASSERT_EQ(r.rc, 0);
  EXPECT_NE(r.out.find("\"two\": quorum held by owner-A on 2 of 3 nodes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"one\": NO quorum"), std::string::npos) << r.out;

  EXPECT_EQ(ctl({"redlock", "inspect", "two", "--nodes", nodes}).rc, 0);
  EXPECT_EQ(ctl({"redlock", "inspect", "none", "--nodes", nodes}).rc, 1);

  // Owner-checked release: a wrong owner deletes nothing, the right one deletes on both nodes.
  r = ctl({"redlock", "release", "two", "--owner", "owner-X", "--nodes", nodes});
  EXPECT_EQ(r.rc, 1) << describe(r);
  EXPECT_EQ(on(0, {"EXISTS", "dlock:{two}"}).integer, 1);
  r = ctl({"redlock", "release", "two", "--owner", "owner-A", "--nodes", nodes});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("released \"two\" on 2 of 3 node(s)"), std::string::npos) << r.out;
  EXPECT_EQ(on(0, {"EXISTS", "dlock:{two}"}).integer, 0);
  EXPECT_EQ(on(1, {"EXISTS", "dlock:{two}"}).integer, 0);

  // Force: refused without --yes, then deletes whoever holds it.
  EXPECT_EQ(ctl({"redlock", "release", "one", "--force", "--nodes", nodes}).rc, 2);
  EXPECT_EQ(on(2, {"EXISTS", "dlock:{one}"}).integer, 1);
  r = ctl({"redlock", "release", "one", "--force", "--yes", "--nodes", nodes, "--json"});
  EXPECT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(parse_json(r.out)["deleted_on"].integer(), 1);
  EXPECT_EQ(on(2, {"EXISTS", "dlock:{one}"}).integer, 0);

  // A node down: shown unreachable; the quorum is still computed over all 3.
  for (std::size_t i : {0u, 1u}) (void)on(i, {"SET", "dlock:{two}", "owner-A", "PX", "30000"});
  n2.stop();
  r = ctl({"redlock", "list", "--nodes", nodes, "--json", "--timeout", "0.5"});
  ASSERT_EQ(r.rc, 0) << describe(r);
  doc = parse_json(r.out);
  EXPECT_FALSE(doc["nodes"].items[2]["reachable"].boolean);
  two = find_lock(doc, "two");
  ASSERT_NE(two, nullptr);
  EXPECT_TRUE((*two)["held"].boolean);
  EXPECT_NE(r.err.find(std::to_string(n2.port())), std::string::npos) << r.err;
  r = ctl({"redlock", "release", "two", "--force", "--yes", "--nodes", nodes, "--timeout", "0.5"});
  EXPECT_EQ(r.rc, 3) << describe(r);  // deleted where reachable, but one node could not be asked
  EXPECT_EQ(on(0, {"EXISTS", "dlock:{two}"}).integer, 0);
}

// ---- PostgreSQL ----

const std::string& pg_conninfo() { return dlock::test::pg::PostgresServer::shared().conninfo(); }

TEST(ToolsPg, KeyMatchesTheBackendAndTheGoldenVector) {
  RunResult r = ctl({"pg", "key", "orders:42"});
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_EQ(r.out, "397916365248039175\n");
  for (const std::string ns : {"", "billing", "app"}) {
    for (const std::string name : {"orders:42",
                                   "caf\xc3\xa9 \xc3\xbc"
                                   "ber",
                                   "pg_advisory:-7", "a b\nc"}) {
      const dlock::PostgresBackend pg(dlock::PostgresOptions{.lock_namespace = ns});
      r = ctl({"pg", "key", "--namespace", ns, name, "--json"});
      ASSERT_EQ(r.rc, 0) << describe(r);
      const Json doc = parse_json(r.out);
      EXPECT_EQ(doc["key"].integer(), pg.advisory_key(name)) << ns << "/" << name;
      EXPECT_EQ(doc["name"].text, name);
    }
  }
}

TEST(ToolsPg, ListShowsTheHolder) {
  dlock::PostgresBackend pg(
      dlock::PostgresOptions{.conninfo = pg_conninfo(), .application_name = "dlockctl-it-holder"});
  dlock::Lock<dlock::PostgresBackend> lock(pg, "pg-list-lock", {.ttl = 30s, .observer = quiet()});
  lock.lock();
  const std::int64_t key = pg.advisory_key("pg-list-lock");
  RunResult r = ctl({"pg", "list", "--pg", pg_conninfo(), "--json", "--name", "pg-list-lock"});
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json doc = parse_json(r.out);
  const Json* row = nullptr;
  for (const auto& l : doc["locks"].items)
    if (l["key"].integer() == key) row = &l;
  ASSERT_NE(row, nullptr) << r.out;
  EXPECT_TRUE((*row)["granted"].boolean);
  EXPECT_GT((*row)["pid"].integer(), 0);
  EXPECT_EQ((*row)["application_name"].text, "dlockctl-it-holder");
  EXPECT_EQ((*row)["name"].text, "pg-list-lock");
  EXPECT_NE(doc["note"].text.find("not recoverable"), std::string::npos);

  r = ctl({"pg", "list"}, {{"DLOCK_PG", pg_conninfo()}});
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find(std::to_string(key)), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dlockctl-it-holder"), std::string::npos);
  EXPECT_NE(r.out.find("not recoverable"), std::string::npos);
  lock.unlock();
}

TEST(ToolsPg, InspectShowsANamesPrimitives) {
  const std::string name = "pg-inspect-prims";
  dlock::PostgresBackend pg(dlock::PostgresOptions{.conninfo = pg_conninfo(), .application_name = "dlockctl-it-prims"});
  RunResult r = ctl({"pg", "inspect", name, "--pg", pg_conninfo()});
  EXPECT_EQ(r.rc, 1) << describe(r);
  dlock::RwLock<dlock::PostgresBackend> rw(pg, name, {.ttl = 30s, .observer = quiet()});
  dlock::Semaphore<dlock::PostgresBackend> sem(pg, name, 2, {.ttl = 30s, .observer = quiet()});
  rw.lock_shared();
  sem.acquire();

  r = ctl({"pg", "inspect", name, "--pg", pg_conninfo(), "--json"});
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json doc = parse_json(r.out);
  EXPECT_TRUE(doc["held"].boolean);
  std::set<std::string> roles;
  for (const auto& l : doc["locks"].items) {
    roles.insert(l["role"].text);
    EXPECT_EQ(l["application_name"].text, "dlockctl-it-prims");
    if (l["role"].text == "rw") {
      EXPECT_TRUE(l["shared"].boolean);
    }
  }
  EXPECT_TRUE(roles.count("rw")) << r.out;
  EXPECT_TRUE(std::any_of(roles.begin(), roles.end(), [](const std::string& s) { return s.rfind("permit ", 0) == 0; }))
      << r.out;
  r = ctl({"pg", "inspect", name, "--pg", pg_conninfo()});
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("held shared"), std::string::npos) << r.out;
  sem.release();
  rw.unlock_shared();
}

TEST(ToolsPg, ForceReleaseTerminatesTheHolderAndAnotherClientAcquires) {
  const std::string name = "pg-stuck-lock";
  dlock::PostgresBackend pg(dlock::PostgresOptions{.conninfo = pg_conninfo()});
  const std::int64_t key = pg.advisory_key(name);
  dlock::test::pg::RawConn holder(pg_conninfo() + " application_name=victim-app");
  const std::string pid = holder.exec("SELECT pg_backend_pid()");
  (void)holder.exec("SELECT pg_advisory_lock($1::int8)", {std::to_string(key)});

  RunResult r = ctl({"pg", "release", "--force", name, "--pg", pg_conninfo()});
  EXPECT_EQ(r.rc, 2) << describe(r);
  EXPECT_NE(r.err.find("pid " + pid), std::string::npos) << r.err;
  dlock::Lock<dlock::PostgresBackend> other(pg, name, {.ttl = 30s, .observer = quiet()});
  EXPECT_FALSE(other.try_lock());

  r = ctl({"pg", "release", "--force", name, "--yes", "--pg", pg_conninfo()});
  ASSERT_EQ(r.rc, 0) << describe(r);
  EXPECT_NE(r.out.find("terminated pid " + pid), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("victim-app"), std::string::npos);
  EXPECT_TRUE(other.try_lock_for(5s)) << "the lock was not freed";
  EXPECT_THROW((void)holder.exec("SELECT 1"), std::runtime_error);  // its session is gone
  other.unlock();

  r = ctl({"pg", "release", "--force", name, "--yes", "--pg", pg_conninfo()});
  EXPECT_EQ(r.rc, 1) << describe(r);

  // By explicit key, with JSON output.
  dlock::test::pg::RawConn holder2(pg_conninfo());
  const std::string pid2 = holder2.exec("SELECT pg_backend_pid()");
  (void)holder2.exec("SELECT pg_advisory_lock(424242)");
  r = ctl({"pg", "release", "--force", "--key", "424242", "--yes", "--json"}, {{"DLOCK_PG", pg_conninfo()}});
  ASSERT_EQ(r.rc, 0) << describe(r);
  const Json doc = parse_json(r.out);
  ASSERT_EQ(doc["terminated"].items.size(), 1u);
  EXPECT_EQ(doc["terminated"].items[0]["pid"].text, pid2);
  EXPECT_TRUE(doc["terminated"].items[0]["signalled"].boolean);
}

}  // namespace
