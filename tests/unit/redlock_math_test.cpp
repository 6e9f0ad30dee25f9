// Redlock's pure parts, without a server: quorum arithmetic, drift and
// validity (with a manual clock), token selection, the acquire / extend /
// release judgements, the holder-TTL hint, and option validation.
#include <dlock/detail/redlock_math.hpp>
#include <dlock/redlock.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <optional>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using dlock::detail::redlock_drift;
using dlock::detail::redlock_holder_ttl;
using dlock::detail::redlock_judge_acquire;
using dlock::detail::redlock_judge_extend;
using dlock::detail::redlock_judge_release;
using dlock::detail::redlock_nodes_to_raise;
using dlock::detail::redlock_quorum;
using dlock::detail::redlock_token;
using dlock::detail::redlock_valid_until;
using dlock::detail::redlock_validity;
using dlock::detail::RedlockAcquire;
using dlock::detail::RedlockExtend;
using dlock::detail::RedlockRelease;
using dlock::detail::RedlockVotes;

static_assert(dlock::Backend<dlock::RedlockBackend>);
static_assert(dlock::BatchesExtend<dlock::RedlockBackend>);
static_assert(dlock::NotifiesRelease<dlock::RedlockBackend>);
static_assert(!dlock::WaitsOnServer<dlock::RedlockBackend>);
static_assert(std::is_copy_constructible_v<dlock::RedlockBackend>);

namespace {

class ManualClock final : public dlock::Clock {
 public:
  [[nodiscard]] time_point now() const noexcept override { return now_; }
  void advance(duration d) noexcept { now_ += d; }

 private:
  time_point now_{std::chrono::hours(1000)};
};

using D = dlock::Clock::duration;

TEST(RedlockMath, QuorumIsAStrictMajority) {
  const std::size_t expected[] = {0, 1, 2, 2, 3, 3, 4, 4};  // N = 0..7
  for (std::size_t n = 1; n <= 7; ++n) {
    EXPECT_EQ(redlock_quorum(n), expected[n]) << "N=" << n;
    EXPECT_GT(2 * redlock_quorum(n), n) << "two quorums of N=" << n << " must intersect";
    EXPECT_LE(redlock_quorum(n), n);
  }
  // Even N tolerates no more failures than N - 1.
  EXPECT_EQ(4 - redlock_quorum(4), 3 - redlock_quorum(3));
  EXPECT_EQ(6 - redlock_quorum(6), 5 - redlock_quorum(5));
}

TEST(RedlockMath, DriftIsTtlTimesFactorPlusConstant) {
  EXPECT_EQ(redlock_drift(10s, 0.01, 2ms), D(102ms));
  EXPECT_EQ(redlock_drift(10s, 0.0, 2ms), D(2ms));
  EXPECT_EQ(redlock_drift(10s, 0.0, 0ms), D(0));
  EXPECT_EQ(redlock_drift(30s, 0.05, 0ms), D(1500ms));
  // Rounded up, never down: 1ms * 0.0015 = 1.5us.
  EXPECT_EQ(redlock_drift(1ms, 0.0015, 0ms), D(1500ns));
  EXPECT_EQ(redlock_drift(1ms, 0.0000001, 0ms), D(1ns));
}

TEST(RedlockMath, ValidityIsTtlMinusElapsedMinusDrift) {
  EXPECT_EQ(redlock_validity(10s, D(5ms), D(102ms)), D(10s - 5ms - 102ms));
  EXPECT_EQ(redlock_validity(10s, D(0), D(0)), D(10s));
  // Exactly used up: zero, which is no validity.
  EXPECT_EQ(redlock_validity(100ms, D(98ms), D(2ms)), D(0));
  // Elapsed beyond the TTL: negative.
  EXPECT_LT(redlock_validity(100ms, D(150ms), D(2ms)), D(0));
}

TEST(RedlockMath, ValidUntilIsStartPlusTtlMinusDriftWhateverTheElapsedTime) {
  ManualClock clock;
  const auto started = clock.now();
  const D drift = redlock_drift(10s, 0.01, 2ms);
  clock.advance(7ms);
  const auto j = redlock_judge_acquire(RedlockVotes{5, 0, 0}, started, 10s, drift, clock);
  EXPECT_EQ(j.outcome, RedlockAcquire::granted);
  EXPECT_EQ(j.validity, D(10s - 7ms - 102ms));
  EXPECT_EQ(j.valid_until, started + 10s - 102ms);
  EXPECT_EQ(j.valid_until, clock.now() + j.validity);  // the same moment, measured from now
  EXPECT_EQ(redlock_valid_until(started, 10s, drift), j.valid_until);
}

TEST(RedlockMath, AcquireNeedsQuorumAndValidity) {
  ManualClock clock;
  const auto started = clock.now();
  const D drift = redlock_drift(100ms, 0.01, 2ms);  // 3ms
  clock.advance(10ms);
  // 5 nodes: 3 yes is a quorum, 2 is not.
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{3, 2, 0}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::granted);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{3, 0, 2}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::granted);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{2, 3, 0}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::contended);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{2, 2, 1}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::contended);
  // Split votes 2/2/1 with nobody failing: contention, not outage.
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{1, 4, 0}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::contended);
  // 3 of 5 failed: no quorum could answer at all.
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{2, 0, 3}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::unavailable);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{0, 0, 5}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::unavailable);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{0, 2, 3}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::unavailable);
  // Quorum, but the round took the whole validity: 100 - 97 - 3 = 0.
  clock.advance(87ms);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{5, 0, 0}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::too_slow);
  clock.advance(-1ns);  // 1ns of validity left
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{5, 0, 0}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::granted);
  clock.advance(1s);  // elapsed far beyond the TTL
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{5, 0, 0}, started, 100ms, drift, clock).outcome,
            RedlockAcquire::too_slow);
}

TEST(RedlockMath, AcquireWithEvenNodeCountsNeedsMoreThanHalf) {
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{2, 2, 0}, D(1s)), RedlockAcquire::contended);  // N=4: 2 is not enough
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{3, 1, 0}, D(1s)), RedlockAcquire::granted);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{2, 0, 2}, D(1s)), RedlockAcquire::unavailable);  // N=4: 2 failed
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{3, 3, 0}, D(1s)), RedlockAcquire::contended);    // N=6
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{4, 0, 2}, D(1s)), RedlockAcquire::granted);
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{1, 0, 0}, D(1s)), RedlockAcquire::granted);    // N=1
  EXPECT_EQ(redlock_judge_acquire(RedlockVotes{1, 1, 0}, D(1s)), RedlockAcquire::contended);  // N=2: needs both
}

TEST(RedlockMath, TokenIsTheLargestAmongGrantingNodes) {
  using V = std::optional<std::uint64_t>;
  const std::vector<V> values{V{17}, std::nullopt, V{23}, V{5}, std::nullopt};
  EXPECT_EQ(redlock_token(values), V{23});
  EXPECT_EQ(redlock_token(std::vector<V>(3)), std::nullopt);
  const std::vector<V> big{V{std::numeric_limits<std::uint64_t>::max()}, V{1}};
  EXPECT_EQ(redlock_token(big), V{std::numeric_limits<std::uint64_t>::max()});
  // The granting nodes below the token are the ones to raise; non-granting ones are not touched.
  EXPECT_EQ(redlock_nodes_to_raise(values, 23), (std::vector<std::size_t>{0, 3}));
  const std::vector<V> equal{V{9}, V{9}, std::nullopt};
  EXPECT_TRUE(redlock_nodes_to_raise(equal, 9).empty());
}

TEST(RedlockMath, HolderTtlIsWhenEnoughHolderKeysExpireForAQuorum) {
  // 5 nodes, quorum 3, nothing granted: the 3rd smallest of the holders' TTLs.
  EXPECT_EQ(redlock_holder_ttl(3, 0, {900ms, 100ms, 500ms, 300ms, 700ms}), 500ms);
  // Two granted (and released): one more node must free up.
  EXPECT_EQ(redlock_holder_ttl(3, 2, {900ms, 400ms, 600ms}), 400ms);
  // Not enough expiring keys reported (failed nodes, holders without TTL): unknown.
  EXPECT_EQ(redlock_holder_ttl(3, 0, {100ms, 200ms}), std::nullopt);
  EXPECT_EQ(redlock_holder_ttl(3, 3, {100ms}), std::nullopt);
  EXPECT_EQ(redlock_holder_ttl(3, 1, {100ms, 200ms}), 200ms);
}

TEST(RedlockMath, ExtendNeedsQuorumAndValidityAndIsLostOnlyWhenNoQuorumCanHoldIt) {
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{3, 2, 0}, D(1s)), RedlockExtend::extended);
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{3, 0, 2}, D(1s)), RedlockExtend::extended);
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{5, 0, 0}, D(0)), RedlockExtend::lost);  // no validity left
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{5, 0, 0}, D(-1ms)), RedlockExtend::lost);
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{2, 3, 0}, D(1s)), RedlockExtend::lost);  // 3 nodes say not ours
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{0, 5, 0}, D(1s)), RedlockExtend::lost);
  // 3 of 5 unreachable: unknown, retried within the old validity.
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{2, 0, 3}, D(1s)), RedlockExtend::unknown);
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{2, 2, 1}, D(1s)), RedlockExtend::unknown);
  EXPECT_EQ(redlock_judge_extend(RedlockVotes{1, 3, 1}, D(1s)), RedlockExtend::lost);
}

TEST(RedlockMath, ReleaseIsReleasedIfAnyNodeHadItAndNotHeldOnlyWhenAQuorumSaysSo) {
  EXPECT_EQ(redlock_judge_release(RedlockVotes{5, 0, 0}), RedlockRelease::released);
  EXPECT_EQ(redlock_judge_release(RedlockVotes{1, 4, 0}), RedlockRelease::released);
  EXPECT_EQ(redlock_judge_release(RedlockVotes{1, 0, 4}), RedlockRelease::released);
  EXPECT_EQ(redlock_judge_release(RedlockVotes{0, 5, 0}), RedlockRelease::not_held);
  EXPECT_EQ(redlock_judge_release(RedlockVotes{0, 3, 2}), RedlockRelease::not_held);
  EXPECT_EQ(redlock_judge_release(RedlockVotes{0, 2, 3}), RedlockRelease::unknown);
  EXPECT_EQ(redlock_judge_release(RedlockVotes{0, 0, 5}), RedlockRelease::unknown);
}

// ---- options ----

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dlock::InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument thrown)";
}

dlock::RedlockOptions five() {
  dlock::RedlockOptions o;
  for (int p = 7001; p <= 7005; ++p) o.nodes.push_back({.host = "127.0.0.1", .port = p});
  return o;
}

TEST(RedlockMath, TimeToQuorumIsTheQuorumthFastestAnswerAndIgnoresASlowMinority) {
  using dlock::detail::redlock_time_to_quorum;
  using std::chrono::nanoseconds;
  // Five nodes, one paused until node_timeout (50 ms): the quorum of 3 was there after 400 us.
  EXPECT_EQ(redlock_time_to_quorum({nanoseconds(300'000), nanoseconds(50'000'000), nanoseconds(400'000),
                                    nanoseconds(350'000), nanoseconds(500'000)},
                                   3),
            nanoseconds(400'000));
  EXPECT_EQ(redlock_time_to_quorum({nanoseconds(300'000), nanoseconds(200'000)}, 3), std::nullopt);  // too few answered
  EXPECT_EQ(redlock_time_to_quorum({}, 1), std::nullopt);
  EXPECT_EQ(redlock_time_to_quorum({nanoseconds(7)}, 1), nanoseconds(7));
}

TEST(RedlockMath, RoundEstimateStartsAtTheFirstSampleThenMovesAnEighthTowardsEachNew) {
  using dlock::detail::redlock_round_estimate;
  using std::chrono::nanoseconds;
  EXPECT_EQ(redlock_round_estimate(nanoseconds(0), nanoseconds(400'000)), nanoseconds(400'000));
  EXPECT_EQ(redlock_round_estimate(nanoseconds(400'000), nanoseconds(1'200'000)), nanoseconds(500'000));
  EXPECT_EQ(redlock_round_estimate(nanoseconds(400'000), nanoseconds(0)), nanoseconds(350'000));
  // A node_timeout round (50 ms) among 300 us ones moves the estimate, but 20 normal rounds bring it back under 1 ms.
  auto e = redlock_round_estimate(nanoseconds(300'000), nanoseconds(50'000'000));
  EXPECT_EQ(e, nanoseconds(300'000 + 49'700'000 / 8));
  for (int i = 0; i < 20; ++i) e = redlock_round_estimate(e, nanoseconds(300'000));
  EXPECT_LT(e, nanoseconds(1'000'000));
}

TEST(RedlockMath, WakeSpreadIsTwoRoundsWithinWhatIsLeftOfTheWait) {
  using dlock::detail::redlock_wake_spread;
  using std::chrono::nanoseconds;
  EXPECT_EQ(redlock_wake_spread(nanoseconds(300'000), nanoseconds(1'000'000'000)), nanoseconds(600'000));
  EXPECT_EQ(redlock_wake_spread(nanoseconds(300'000), nanoseconds(100'000)), nanoseconds(100'000));
  EXPECT_EQ(redlock_wake_spread(nanoseconds(300'000), nanoseconds(-5)), nanoseconds(0));
  EXPECT_EQ(redlock_wake_spread(nanoseconds(0), nanoseconds(1'000'000)), nanoseconds(0));  // no round measured yet
}

TEST(RedlockOptions, DefaultsAndTheIssueExampleAreValid) {
  const dlock::RedlockOptions d;
  EXPECT_DOUBLE_EQ(d.clock_drift_factor, 0.01);
  EXPECT_EQ(d.drift_constant, 2ms);
  EXPECT_EQ(d.node_timeout, 50ms);
  EXPECT_FALSE(d.allow_fewer_than_three);
  EXPECT_EQ(d.key_prefix, "dlock:");
  dlock::RedlockBackend rl(five());  // does not connect
  EXPECT_EQ(rl.node_count(), 5u);
  EXPECT_EQ(rl.quorum(), 3u);
  EXPECT_EQ(rl.kind(), "redlock");
  EXPECT_EQ(rl.endpoint(), "redlock(127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005)");
  const dlock::RedlockBackend copy = rl;
  EXPECT_EQ(copy.identity(), rl.identity());
  EXPECT_NE(dlock::RedlockBackend(five()).identity(), rl.identity());
}

TEST(RedlockOptions, FewerThanThreeNodesNeedAnExplicitOptIn) {
  auto two = five();
  two.nodes.resize(2);
  EXPECT_NE(error_of([&] { dlock::RedlockBackend b(two); }).find("RedlockOptions.nodes must name at least 3"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dlock::RedlockBackend b(two); }).find("got 2 nodes"), std::string::npos);
  two.allow_fewer_than_three = true;
  EXPECT_NO_THROW(dlock::RedlockBackend b(two));
  auto none = five();
  none.nodes.clear();
  none.allow_fewer_than_three = true;
  EXPECT_NE(error_of([&] { dlock::RedlockBackend b(none); }).find("got 0 nodes"), std::string::npos);
  auto four = five();  // even counts are accepted (docs warn)
  four.nodes.resize(4);
  EXPECT_EQ(dlock::RedlockBackend(four).quorum(), 3u);
}

TEST(RedlockOptions, ErrorsNameFieldAndValue) {
  auto o = five();
  o.nodes[2].port = 0;
  EXPECT_NE(
      error_of([&] { dlock::detail::validate(o); }).find("RedlockOptions.nodes[2].port must be in 1..65535 (got 0)"),
      std::string::npos)
      << error_of([&] { dlock::detail::validate(o); });
  o = five();
  o.nodes[4].port = 7002;
  EXPECT_NE(error_of([&] {
              dlock::detail::validate(o);
            }).find("RedlockOptions.nodes[4] must be a different server than nodes[1]"),
            std::string::npos);
  o = five();
  o.clock_drift_factor = 1.5;
  EXPECT_NE(error_of([&] {
              dlock::detail::validate(o);
            }).find("RedlockOptions.clock_drift_factor must be in [0, 1) (got 1.5)"),
            std::string::npos);
  o.clock_drift_factor = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NE(error_of([&] { dlock::detail::validate(o); }).find("clock_drift_factor"), std::string::npos);
  o = five();
  o.drift_constant = -1ms;
  EXPECT_NE(error_of([&] {
              dlock::detail::validate(o);
            }).find("RedlockOptions.drift_constant must not be negative (got -1ms)"),
            std::string::npos);
  o = five();
  o.node_timeout = 0ms;
  EXPECT_NE(error_of([&] { dlock::detail::validate(o); }).find("RedlockOptions.node_timeout must be positive (got 0s)"),
            std::string::npos);
  o = five();
  o.key_prefix = "a{b";
  EXPECT_NE(error_of([&] { dlock::detail::validate(o); }).find("RedlockOptions.key_prefix"), std::string::npos);
  o = five();
  o.nodes[1].key_prefix = "other:";
  EXPECT_NE(error_of([&] { dlock::detail::validate(o); }).find("RedlockOptions.nodes[1].key_prefix"),
            std::string::npos);
  o.nodes[1].key_prefix = o.key_prefix;
  EXPECT_NO_THROW(dlock::detail::validate(o));
}

TEST(RedlockOptions, TtlMustExceedTheDriftAllowance) {
  dlock::RedlockBackend rl(five());
  const auto owner = dlock::OwnerId::generate();
  const dlock::AcquireRequest r{"x", owner, 2ms, std::chrono::steady_clock::now()};  // drift is 2.02ms
  EXPECT_NE(error_of([&] { (void)rl.try_acquire(r); }).find("not above the Redlock clock-drift allowance"),
            std::string::npos);
}

// Who leads an election on Redlock: the leader (owner id) a quorum of nodes names,
// with the largest term they report; unknown while failed nodes could make
// up a quorum for someone.
TEST(RedlockMath, LeaderNeedsAQuorumOfNodesNamingIt) {
  using dlock::detail::RedlockLeader;
  using dlock::detail::RedlockLeaderAnswer;
  using Answers = std::vector<std::optional<RedlockLeaderAnswer>>;
  const auto judge = [](const Answers& a, std::size_t failed) {
    return dlock::detail::redlock_judge_leader(a, failed, 3);
  };
  const RedlockLeaderAnswer a5{"a", 5, "owner-a"}, a7{"a", 7, "owner-a"}, b9{"b", 9, "owner-b"};
  auto j = judge({a5, a7, a5, std::nullopt, b9}, 0);
  EXPECT_EQ(j.outcome, RedlockLeader::leader);
  EXPECT_EQ(j.leader.candidate, "a");
  EXPECT_EQ(j.leader.term, 7u);  // the largest its nodes report (the token)
  EXPECT_EQ(judge({std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt}, 0).outcome,
            RedlockLeader::none);
  EXPECT_EQ(judge({a5, a5, std::nullopt, b9, b9}, 0).outcome, RedlockLeader::none);  // a lease lapsing: nobody has 3
  EXPECT_EQ(judge({a5, a5, std::nullopt}, 2).outcome, RedlockLeader::unknown);       // "a" may hold the 2 failed
  EXPECT_EQ(judge({a5, std::nullopt, std::nullopt, std::nullopt}, 1).outcome, RedlockLeader::none);  // at most 2
}

// Nodes are counted by the leader's owner id, not by candidate name: an
// in-doubt leftover of an earlier campaign plus a new partial grant under the
// same candidate name (other owner ids) are no quorum for anyone.
TEST(RedlockMath, LeaderIsCountedByOwnerIdNotByCandidateName) {
  using dlock::detail::RedlockLeader;
  using dlock::detail::RedlockLeaderAnswer;
  using Answers = std::vector<std::optional<RedlockLeaderAnswer>>;
  const RedlockLeaderAnswer old1{"a", 5, "owner-1"}, new2{"a", 9, "owner-2"};
  const Answers split{old1, old1, new2, std::nullopt, std::nullopt};
  EXPECT_EQ(dlock::detail::redlock_judge_leader(split, 0, 3).outcome, RedlockLeader::none);
  EXPECT_EQ(dlock::detail::redlock_judge_leader(split, 1, 3).outcome, RedlockLeader::unknown);  // owner-1 may hold it
  const Answers won{old1, new2, new2, new2, std::nullopt};
  const auto j = dlock::detail::redlock_judge_leader(won, 0, 3);
  EXPECT_EQ(j.outcome, RedlockLeader::leader);
  EXPECT_EQ(j.leader.owner, "owner-2");
  EXPECT_EQ(j.leader.term, 9u);  // owner-1's term does not count
}

}  // namespace
