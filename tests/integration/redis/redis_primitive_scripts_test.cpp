// The primitives' Lua scripts (detail/redis_primitive_scripts.hpp) run
// directly on a real redis-server with plain hiredis, before RedisBackend
// calls them: read-write lock, semaphore, fair mode. Where a lease's expiry
// on the server is the point, the test waits for a short real TTL and says so.
#include <dlock/detail/redis_primitive_scripts.hpp>
#include <dlock/detail/redis_scripts.hpp>

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/redis_server.hpp"

using namespace std::chrono_literals;
using namespace dlock::detail;

namespace {

[[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new dlock::test::SharedRedis);

using ReplyPtr = std::unique_ptr<redisReply, void (*)(void*)>;

// A script's answer: granted with a token, or not with a wait in ms; or a
// plain integer (release, extend).
struct Answer {
  bool ok = false;
  std::string token;
  long long ms = 0;
};

class Conn {
 public:
  Conn() {
    const auto& o = dlock::test::SharedRedis::instance()->options();
    c_ = o.unix_socket.empty() ? redisConnect(o.host.c_str(), o.port) : redisConnectUnix(o.unix_socket.c_str());
    if (c_ == nullptr || c_->err != 0) throw std::runtime_error("cannot connect to the test redis");
    if (!o.password.empty()) (void)call({"AUTH", o.password});
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn() { redisFree(c_); }

  ReplyPtr call(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(redisCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (r == nullptr) throw std::runtime_error("redis connection failed");
    return ReplyPtr(r, freeReplyObject);
  }
  ReplyPtr eval(std::string_view script, const std::vector<std::string>& keys, const std::vector<std::string>& args) {
    std::vector<std::string> cmd{"EVAL", std::string(script), std::to_string(keys.size())};
    cmd.insert(cmd.end(), keys.begin(), keys.end());
    cmd.insert(cmd.end(), args.begin(), args.end());
    return call(cmd);
  }
  // {1, token} / {0, ms} replies.
  Answer attempt(std::string_view script, const std::vector<std::string>& keys, const std::vector<std::string>& args) {
    auto r = eval(script, keys, args);
    if (r->type == REDIS_REPLY_ERROR) throw std::runtime_error(std::string("script error: ") + r->str);
    EXPECT_EQ(r->type, REDIS_REPLY_ARRAY);
    EXPECT_EQ(r->elements, 2u);
    Answer a;
    a.ok = r->element[0]->integer == 1;
    if (a.ok) {
      a.token = r->element[1]->str;
    } else {
      a.ms = r->element[1]->integer;
    }
    return a;
  }
  long long integer(std::string_view script, const std::vector<std::string>& keys,
                    const std::vector<std::string>& args) {
    auto r = eval(script, keys, args);
    if (r->type == REDIS_REPLY_ERROR) throw std::runtime_error(std::string("script error: ") + r->str);
    EXPECT_EQ(r->type, REDIS_REPLY_INTEGER);
    return r->integer;
  }
  long long time_us() {
    auto r = call({"TIME"});
    return std::stoll(r->element[0]->str) * 1'000'000 + std::stoll(r->element[1]->str);
  }
  redisContext* raw() { return c_; }

 private:
  redisContext* c_ = nullptr;
};

class PrimitiveScripts : public ::testing::Test {
 protected:
  void SetUp() override { k_ = redis_primitive_keys(dlock::test::test_key_prefix(), "res"); }
  void TearDown() override {
    for (const auto& key :
         {k_.fence, k_.rw_writer, k_.rw_readers, k_.rw_waiting, k_.sem_permits, k_.sem_count, k_.fair_queue,
          k_.fair_deadlines, k_.leader, k_.leader_info, k_.rw_tokens, k_.sem_tokens, lock_key()})
      (void)redis_.call({"DEL", key});
  }

  [[nodiscard]] std::string lock_key() const { return k_.fence.substr(0, k_.fence.size() - 6); }  // P{N}
  static std::string id(int i) { return "owner-" + std::to_string(i); }
  static std::uint64_t num(const std::string& s) { return std::stoull(s); }

  // Read-write lock.
  Answer read(const std::string& owner, int ttl_ms = 10'000) {
    return redis_.attempt(redis_rw_read_acquire_script,
                          {k_.rw_writer, k_.rw_readers, k_.rw_waiting, k_.fence, k_.rw_tokens},
                          {owner, std::to_string(ttl_ms), "60000"});
  }
  long long read_release(const std::string& owner) {
    return redis_.integer(redis_set_release_script, {k_.rw_readers, k_.rw_tokens}, {owner, k_.channel, "1"});
  }
  long long read_extend(const std::string& owner, int ttl_ms) {
    return redis_.integer(redis_set_extend_script, {k_.rw_readers, k_.rw_tokens}, {owner, std::to_string(ttl_ms)});
  }
  Answer write(const std::string& owner, int waiting_ms = 10'000) {
    return redis_.attempt(redis_rw_write_acquire_script, {k_.rw_writer, k_.rw_readers, k_.rw_waiting, k_.fence},
                          {owner, "10000", "60000", std::to_string(waiting_ms)});
  }
  long long write_release(const std::string& owner) {
    return redis_.integer(redis_release_script, {k_.rw_writer}, {owner, k_.channel});
  }
  // Semaphore.
  Answer permit(Conn& c, const std::string& owner, int permits, int ttl_ms = 10'000) {
    return c.attempt(redis_sem_acquire_script, {k_.sem_permits, k_.sem_count, k_.fence, k_.sem_tokens},
                     {owner, std::to_string(ttl_ms), "60000", std::to_string(permits)});
  }
  long long permit_release(Conn& c, const std::string& owner) {
    return c.integer(redis_set_release_script, {k_.sem_permits, k_.sem_tokens}, {owner, k_.channel, "0"});
  }
  // Fair mode.
  Answer fair(const std::string& owner, int waiter_ttl_ms = 10'000) {
    return redis_.attempt(redis_fair_acquire_script, {lock_key(), k_.fence, k_.fair_queue, k_.fair_deadlines},
                          {owner, "10000", "60000", std::to_string(waiter_ttl_ms)});
  }
  long long fair_release(const std::string& owner) {
    return redis_.integer(redis_fair_release_script, {lock_key(), k_.fair_queue, k_.fair_deadlines},
                          {owner, k_.channel});
  }

  // Election.
  Answer campaign(const std::string& owner, const std::string& candidate, int ttl_ms = 10'000) {
    return redis_.attempt(redis_leader_acquire_script, {k_.leader, k_.fence, k_.leader_info},
                          {owner, std::to_string(ttl_ms), "60000", candidate});
  }
  // {candidate, term}, or {} when nobody leads.
  std::vector<std::string> leader() {
    auto r = redis_.eval(redis_leader_read_script, {k_.leader, k_.leader_info}, {});
    std::vector<std::string> out;
    if (r->type == REDIS_REPLY_ARRAY)
      for (std::size_t i = 0; i < r->elements; ++i) out.emplace_back(r->element[i]->str);
    return out;
  }

  Conn redis_;
  RedisPrimitiveKeys k_;
};

}  // namespace

TEST(PrimitiveKeys, ShareTheMutexHashTagFenceAndChannel) {
  const auto k = redis_primitive_keys("app:", "orders:42");
  const auto m = redis_keys("app:", "orders:42");
  EXPECT_EQ(k.fence, m.fence);
  EXPECT_EQ(k.channel, m.channel);
  EXPECT_EQ(k.rw_readers, "app:{orders:42}:rw:readers");
  for (const auto& key : {k.rw_writer, k.rw_readers, k.rw_waiting, k.sem_permits, k.sem_count, k.fair_queue,
                          k.fair_deadlines, k.leader, k.leader_info})
    EXPECT_EQ(redis_hash_tag(key), "orders:42");
}

// ---- read-write lock ----

TEST_F(PrimitiveScripts, ReadersShareAndEachExpiresOnItsOwn) {
  ASSERT_TRUE(read(id(1), 150).ok);
  ASSERT_TRUE(read(id(2), 10'000).ok);
  EXPECT_FALSE(write(id(9), 10).ok);         // readers hold (its waiting mark lapses in 10 ms)
  std::this_thread::sleep_for(200ms);        // the real server's expiry of reader 1 is the point
  EXPECT_EQ(read_extend(id(1), 10'000), 0);  // lost
  EXPECT_EQ(read_release(id(1)), 0);
  EXPECT_EQ(read_extend(id(2), 10'000), 1);
  EXPECT_FALSE(write(id(9)).ok);  // reader 2 still holds
  EXPECT_EQ(read_release(id(2)), 1);
  EXPECT_TRUE(write(id(9)).ok);
  // The set's own key lives exactly as long as its latest member.
  ASSERT_TRUE(write_release(id(9)));
  ASSERT_TRUE(read(id(3), 300).ok);
  auto pttl = redis_.call({"PTTL", k_.rw_readers});
  EXPECT_GT(pttl->integer, 0);
  EXPECT_LE(pttl->integer, 301);  // the ttl, rounded up to the next server ms
}

TEST_F(PrimitiveScripts, AWaitingWriterStopsNewReadersAndGoesNext) {
  const auto w0 = write(id(0));
  ASSERT_TRUE(w0.ok);
  EXPECT_FALSE(read(id(1)).ok);  // a writer holds
  ASSERT_EQ(write_release(id(0)), 1);
  const auto r1 = read(id(1));
  ASSERT_TRUE(r1.ok);
  EXPECT_GE(num(r1.token), num(w0.token));  // a write before the read: token(W) <= token(R)

  const auto blocked = write(id(2));
  EXPECT_FALSE(blocked.ok);
  EXPECT_GT(blocked.ms, 9'000);  // until the reader's expiry
  EXPECT_FALSE(read(id(3)).ok);  // the waiting writer keeps new readers out
  EXPECT_TRUE(read(id(1)).ok);   // ... but not a reader retrying its own (in-doubt) grant
  EXPECT_EQ(read_release(id(1)), 1);
  const auto w2 = write(id(2));
  ASSERT_TRUE(w2.ok);
  EXPECT_GT(num(w2.token), num(r1.token));                        // a read before the write: token(R) < token(W)
  EXPECT_EQ(redis_.call({"EXISTS", k_.rw_waiting})->integer, 0);  // the grant cleared the mark
  EXPECT_FALSE(read(id(3)).ok);
  ASSERT_EQ(write_release(id(2)), 1);
  EXPECT_TRUE(read(id(3)).ok);
}

TEST_F(PrimitiveScripts, WriterIsNotStarvedByAContinuousStreamOfReaders) {
  // Readers arrive one after another, each entering before the previous one
  // leaves, so without writer preference some reader would always hold.
  int next = 0;
  ASSERT_TRUE(read(id(next)).ok);
  int writer_waited_for = -1;
  for (int step = 0; step < 50; ++step) {
    const bool entered = read(id(next + 1)).ok;
    ASSERT_EQ(read_release(id(next)), 1);
    if (entered) ++next;
    if (write(id(1000)).ok) {
      writer_waited_for = step;
      break;
    }
    if (!entered) break;  // refused: the last reader left, so the writer must be in on the next try
  }
  if (writer_waited_for < 0) {
    const auto w = write(id(1000));
    ASSERT_TRUE(w.ok) << "the writer was starved";
    writer_waited_for = 50;
  }
  EXPECT_LE(writer_waited_for, 2);  // past at most the readers that held when it first tried
}

TEST_F(PrimitiveScripts, AWriterThatGivesUpBlocksReadersOnlyForItsMarksTtl) {
  ASSERT_TRUE(read(id(1)).ok);
  EXPECT_FALSE(write(id(2), 150).ok);  // leaves a mark that lives 150 ms, then gives up
  EXPECT_FALSE(read(id(3)).ok);
  std::this_thread::sleep_for(200ms);  // the real server's expiry of the mark is the point
  EXPECT_TRUE(read(id(3)).ok);
}

// ---- semaphore ----

TEST_F(PrimitiveScripts, EightClientsOnThreePermitsNeverExceedThree) {
  std::atomic<int> over{0}, grants{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Conn c;
      for (int k = 0; k < 60; ++k) {
        const std::string owner = id(t * 1000 + k);
        if (!permit(c, owner, 3).ok) continue;
        ++grants;
        if (c.call({"ZCARD", k_.sem_permits})->integer > 3) ++over;  // checked on the server
        EXPECT_EQ(permit_release(c, owner), 1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(over.load(), 0);
  EXPECT_GT(grants.load(), 0);
  // And exactly N at once, deterministically.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(permit(redis_, id(i), 3).ok);
  const auto full = permit(redis_, id(3), 3);
  EXPECT_FALSE(full.ok);
  EXPECT_GT(full.ms, 9'000);
  EXPECT_TRUE(permit(redis_, id(2), 3).ok);  // a holder's in-doubt retry is granted
}

TEST_F(PrimitiveScripts, ExpiredPermitComesBack) {
  const auto first = permit(redis_, id(1), 1, 150);
  ASSERT_TRUE(first.ok);
  const auto full = permit(redis_, id(2), 1);
  EXPECT_FALSE(full.ok);
  EXPECT_LE(full.ms, 151);             // its ttl (rounded up to the next ms)
  std::this_thread::sleep_for(200ms);  // the real server's expiry of permit 1 is the point
  const auto second = permit(redis_, id(2), 1);
  ASSERT_TRUE(second.ok);
  EXPECT_GT(num(second.token), num(first.token));
  EXPECT_EQ(redis_.integer(redis_set_extend_script, {k_.sem_permits, k_.sem_tokens}, {id(1), "1000"}), 0);
  EXPECT_EQ(permit_release(redis_, id(1)), 0);
}

TEST_F(PrimitiveScripts, PermitCountChangedLive) {
  ASSERT_TRUE(permit(redis_, id(1), 2).ok);
  ASSERT_TRUE(permit(redis_, id(2), 2).ok);
  EXPECT_FALSE(permit(redis_, id(3), 2).ok);
  (void)redis_.call({"SET", k_.sem_count, "3"});  // the operator raises it
  EXPECT_TRUE(permit(redis_, id(3), 2).ok);
  (void)redis_.call({"SET", k_.sem_count, "1"});  // and lowers it: nothing revoked, nothing new
  EXPECT_EQ(redis_.call({"ZCARD", k_.sem_permits})->integer, 3);
  ASSERT_EQ(permit_release(redis_, id(1)), 1);
  ASSERT_EQ(permit_release(redis_, id(2)), 1);
  EXPECT_FALSE(permit(redis_, id(4), 2).ok);
  (void)redis_.call({"DEL", k_.sem_count});  // back to the callers' own count
  EXPECT_TRUE(permit(redis_, id(4), 2).ok);
  (void)redis_.call({"SET", k_.sem_count, "many"});
  EXPECT_THROW(permit(redis_, id(5), 2), std::runtime_error);
}

// ---- fair mode ----

TEST_F(PrimitiveScripts, FairQueueIsServedInArrivalOrderAndReleaseNamesTheHead) {
  ASSERT_TRUE(fair(id(0)).ok);
  for (int i = 1; i <= 3; ++i) EXPECT_FALSE(fair(id(i)).ok);  // queue: 1, 2, 3

  Conn sub;
  const timeval two_seconds{2, 0};
  ASSERT_EQ(redisSetTimeout(sub.raw(), two_seconds), REDIS_OK);
  {
    auto r = sub.call({"SUBSCRIBE", k_.channel});
    ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
  }
  ASSERT_EQ(fair_release(id(0)), 1);
  {
    void* raw = nullptr;
    ASSERT_EQ(redisGetReply(sub.raw(), &raw), REDIS_OK);
    ReplyPtr msg(static_cast<redisReply*>(raw), freeReplyObject);
    ASSERT_EQ(msg->elements, 3u);
    EXPECT_EQ(std::string(msg->element[2]->str), id(1));  // the release wakes the head only
  }
  const auto later = fair(id(3));
  EXPECT_FALSE(later.ok);        // free, but not the head
  EXPECT_GT(later.ms, 9'000);    // waits at most until the head's deadline
  EXPECT_FALSE(fair(id(4)).ok);  // a newcomer queues behind
  std::uint64_t last = 0;
  for (int i = 1; i <= 4; ++i) {
    for (int j = i + 1; j <= 4; ++j) EXPECT_FALSE(fair(id(j)).ok) << j << " overtook " << i;
    const auto g = fair(id(i));
    ASSERT_TRUE(g.ok) << "waiter " << i;
    EXPECT_GT(num(g.token), last);
    last = num(g.token);
    ASSERT_EQ(fair_release(id(i)), 1);
  }
  EXPECT_EQ(redis_.call({"EXISTS", k_.fair_queue})->integer, 0);
  EXPECT_GE(last, static_cast<std::uint64_t>(redis_.time_us()) - 60'000'000);  // the mutex's token rule
}

TEST_F(PrimitiveScripts, DeadWaiterDropsOutWithinItsTtl) {
  ASSERT_TRUE(fair(id(0)).ok);
  EXPECT_FALSE(fair(id(1), 150).ok);  // queued with a 150 ms waiter ttl, then dies
  EXPECT_FALSE(fair(id(2)).ok);
  ASSERT_EQ(fair_release(id(0)), 1);
  const auto behind = fair(id(2));
  EXPECT_FALSE(behind.ok);
  EXPECT_LE(behind.ms, 151);           // when the dead head drops out (its ttl, rounded up to a ms)
  std::this_thread::sleep_for(200ms);  // the dead waiter's ttl on the real server is the point
  EXPECT_TRUE(fair(id(2)).ok);
}

TEST_F(PrimitiveScripts, AWaiterThatLeavesUnblocksTheQueueAtOnce) {
  ASSERT_TRUE(fair(id(0)).ok);
  EXPECT_FALSE(fair(id(1)).ok);
  EXPECT_FALSE(fair(id(2)).ok);
  ASSERT_EQ(fair_release(id(0)), 1);
  EXPECT_FALSE(fair(id(2)).ok);
  EXPECT_EQ(redis_.integer(redis_fair_leave_script, {lock_key(), k_.fair_queue, k_.fair_deadlines}, {id(1), ""}), 1);
  EXPECT_TRUE(fair(id(2)).ok);
}

// ---- election ----

TEST_F(PrimitiveScripts, OneLeaderAtATimeTermsIncreaseAndObserversSeeWhoLeads) {
  EXPECT_TRUE(leader().empty());
  const auto a = campaign(id(1), "host-a:1", 150);
  ASSERT_TRUE(a.ok);
  EXPECT_EQ(leader(), (std::vector<std::string>{"host-a:1", a.token}));
  const auto b = campaign(id(2), "host-b:2");
  EXPECT_FALSE(b.ok);
  EXPECT_LE(b.ms, 150);
  EXPECT_EQ(campaign(id(1), "host-a:1", 150).token, a.token);  // an in-doubt retry keeps its term
  std::this_thread::sleep_for(200ms);  // the real server's expiry of the leadership is the point
  EXPECT_TRUE(leader().empty());
  EXPECT_EQ(redis_.integer(redis_leader_extend_script, {k_.leader, k_.leader_info}, {id(1), "1000"}), 0);  // lost
  const auto b2 = campaign(id(2), "host-b:2");
  ASSERT_TRUE(b2.ok);
  EXPECT_GT(num(b2.token), num(a.token));
  EXPECT_EQ(redis_.integer(redis_leader_extend_script, {k_.leader, k_.leader_info}, {id(2), "10000"}), 1);
  EXPECT_EQ(redis_.integer(redis_leader_release_script, {k_.leader, k_.leader_info}, {id(1), ""}), 0);
  EXPECT_EQ(leader(), (std::vector<std::string>{"host-b:2", b2.token}));
  EXPECT_EQ(redis_.integer(redis_leader_release_script, {k_.leader, k_.leader_info}, {id(2), k_.channel}), 1);
  EXPECT_TRUE(leader().empty());
  const auto c = campaign(id(3), "host-c:3");
  ASSERT_TRUE(c.ok);
  EXPECT_GT(num(c.token), num(b2.token));
}

// Redlock's leader raise writes the grant's token as the term only into its
// own leader info (never another leader's), and raises the counter as the
// mutex's raise does; Redlock's read names the owner id.
TEST_F(PrimitiveScripts, LeaderRaiseWritesTheTermOnlyForItsOwnLeader) {
  const auto a = campaign(id(1), "host-a:1");
  ASSERT_TRUE(a.ok);
  const std::string token = std::to_string(num(a.token) + 1000);
  const auto raise = [&](const std::string& owner) {
    return redis_.integer(redis_leader_raise_script, {k_.fence, k_.leader, k_.leader_info}, {token, "60000", owner});
  };
  EXPECT_EQ(raise(id(2)), 1);  // another owner: the counter only
  EXPECT_EQ(leader(), (std::vector<std::string>{"host-a:1", a.token}));
  EXPECT_EQ(redis_.call({"GET", k_.fence})->str, token);
  EXPECT_EQ(raise(id(1)), 1);
  EXPECT_EQ(leader(), (std::vector<std::string>{"host-a:1", token}));
  auto r = redis_.eval(redlock_leader_read_script, {k_.leader, k_.leader_info}, {});
  ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
  ASSERT_EQ(r->elements, 3u);
  EXPECT_EQ(std::string(r->element[2]->str), id(1));
  EXPECT_EQ(campaign(id(1), "host-a:1").token, token);  // an in-doubt retry gets the raised term
}
