// Internal: Redlock's arithmetic and decisions as pure functions (no I/O),
// unit-tested without a server (tests/unit/redlock_math_test.cpp).
//
//   quorum    = N / 2 + 1
//   drift     = ttl * clock_drift_factor + drift_constant
//   validity  = ttl - elapsed - drift          (elapsed since request.started)
//   valid_until = started + ttl - drift        (= now + validity, measured at now)
//
// An acquisition counts only with a quorum of grants and validity > 0. Time
// comes in as arguments or through an injectable dlock::Clock, never from
// the system clock directly.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../backend.hpp"
#include "../clock.hpp"

namespace dlock::detail {

/// Votes needed out of `nodes`: a strict majority, so any two quorums share a node.
[[nodiscard]] constexpr std::size_t redlock_quorum(std::size_t nodes) noexcept { return nodes / 2 + 1; }

/// The allowance for clock drift between the client and the nodes:
/// ttl * factor (rounded up to whole nanoseconds) + constant.
[[nodiscard]] inline Clock::duration redlock_drift(std::chrono::milliseconds ttl, double factor,
                                                   std::chrono::milliseconds constant) noexcept {
  const double scaled = std::ceil(static_cast<double>(std::chrono::nanoseconds(ttl).count()) * factor);
  return std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(static_cast<std::int64_t>(scaled)) +
                                                     constant);
}

/// What is left of `ttl` after `elapsed` and `drift`; zero or negative: nothing.
[[nodiscard]] constexpr Clock::duration redlock_validity(std::chrono::milliseconds ttl, Clock::duration elapsed,
                                                         Clock::duration drift) noexcept {
  return std::chrono::duration_cast<Clock::duration>(ttl) - elapsed - drift;
}

/// The end of a grant's validity: started + ttl - drift. The keys were set
/// no earlier than `started` (the time taken before the requests were sent),
/// so they expire on the nodes no earlier than started + ttl by the nodes'
/// clocks; `drift` covers the nodes' clocks running fast. This is also
/// now + validity for any `now` the validity was measured at.
[[nodiscard]] constexpr TimePoint redlock_valid_until(TimePoint started, std::chrono::milliseconds ttl,
                                                      Clock::duration drift) noexcept {
  return started + ttl - drift;
}

/// The fencing token of a grant: the largest counter value among the nodes
/// that granted (nullopt entries: nodes that did not grant). nullopt when none granted.
[[nodiscard]] inline std::optional<std::uint64_t> redlock_token(
    std::span<const std::optional<std::uint64_t>> values) noexcept {
  std::optional<std::uint64_t> best;
  for (const auto& v : values)
    if (v && (!best || *v > *best)) best = v;
  return best;
}

/// Indices of the granting nodes whose counter is below `token`: they must be
/// raised to it before the grant is returned (docs/safety.md), so that a
/// quorum of counters is at least the token.
[[nodiscard]] inline std::vector<std::size_t> redlock_nodes_to_raise(
    std::span<const std::optional<std::uint64_t>> values, std::uint64_t token) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < values.size(); ++i)
    if (values[i] && *values[i] < token) out.push_back(i);
  return out;
}

/// How long a contender should wait at most before trying again: the time
/// until enough of the holder's keys have expired that, with the `granted`
/// nodes this attempt had (and released), a quorum would be free. That is
/// the (quorum - granted)-th smallest of the holders' remaining TTLs
/// (`held_ttls`: one per node that reported a holder with a TTL). nullopt when
/// that many expiring keys were not reported (nodes failed, or holders set
/// no TTL), or when granted already reached the quorum.
[[nodiscard]] inline std::optional<std::chrono::milliseconds> redlock_holder_ttl(
    std::size_t quorum, std::size_t granted, std::vector<std::chrono::milliseconds> held_ttls) {
  if (granted >= quorum) return std::nullopt;
  const std::size_t need = quorum - granted;  // >= 1
  if (held_ttls.size() < need) return std::nullopt;
  std::nth_element(held_ttls.begin(), held_ttls.begin() + static_cast<std::ptrdiff_t>(need - 1), held_ttls.end());
  return held_ttls[need - 1];
}

/// The outcome of one acquire round over all nodes.
enum class RedlockAcquire {
  granted,      ///< a quorum granted and validity is left
  contended,    ///< enough nodes answered, but others hold the lock or votes split
  unavailable,  ///< too many nodes failed for any quorum: an outage, not contention
  too_slow,     ///< a quorum granted, but the round took the whole validity
};

/// Counts of one round: nodes that said yes, no (held by another / not
/// ours), or failed (unreachable, timed out, error reply).
struct RedlockVotes {
  std::size_t yes = 0;
  std::size_t no = 0;
  std::size_t failed = 0;
  [[nodiscard]] constexpr std::size_t total() const noexcept { return yes + no + failed; }
};

[[nodiscard]] constexpr RedlockAcquire redlock_judge_acquire(RedlockVotes v, Clock::duration validity) noexcept {
  const std::size_t quorum = redlock_quorum(v.total());
  if (v.yes >= quorum) return validity > Clock::duration::zero() ? RedlockAcquire::granted : RedlockAcquire::too_slow;
  if (v.total() - v.failed < quorum) return RedlockAcquire::unavailable;
  return RedlockAcquire::contended;
}

/// The outcome of one acquire round, timed with `clock`: the validity is
/// measured from `started` to clock.now().
struct RedlockAcquireJudgement {
  RedlockAcquire outcome;
  Clock::duration validity;
  TimePoint valid_until;  ///< meaningful when granted
};
[[nodiscard]] inline RedlockAcquireJudgement redlock_judge_acquire(RedlockVotes v, TimePoint started,
                                                                   std::chrono::milliseconds ttl, Clock::duration drift,
                                                                   const Clock& clock) noexcept {
  const Clock::duration validity = redlock_validity(ttl, clock.now() - started, drift);
  return {redlock_judge_acquire(v, validity), validity, redlock_valid_until(started, ttl, drift)};
}

/// The outcome of one extend round over all nodes (yes: extended, no: the
/// node does not hold the key for this owner).
enum class RedlockExtend {
  extended,  ///< a quorum extended and validity is left: the new valid_until holds
  lost,      ///< so many nodes said no that no quorum can hold it, or no validity is left
  unknown,   ///< failures kept the quorum from being reached: try again within the old validity
};
[[nodiscard]] constexpr RedlockExtend redlock_judge_extend(RedlockVotes v, Clock::duration validity) noexcept {
  const std::size_t quorum = redlock_quorum(v.total());
  if (v.yes >= quorum) return validity > Clock::duration::zero() ? RedlockExtend::extended : RedlockExtend::lost;
  if (v.no > v.total() - quorum) return RedlockExtend::lost;
  return RedlockExtend::unknown;
}

/// The outcome of one release round (yes: the node deleted our key).
enum class RedlockRelease {
  released,  ///< at least one node still had our key and deleted it
  not_held,  ///< no node had it, and at least a quorum answered (so it was not validly held)
  unknown,   ///< nobody deleted it, but too few nodes answered to tell
};
[[nodiscard]] constexpr RedlockRelease redlock_judge_release(RedlockVotes v) noexcept {
  if (v.yes > 0) return RedlockRelease::released;
  if (v.no >= redlock_quorum(v.total())) return RedlockRelease::not_held;
  return RedlockRelease::unknown;
}

/// How long a round took to hear from a quorum: the quorum-th shortest of
/// `answered` (the live nodes' reply times); nullopt when fewer answered. A
/// paused minority node, which makes the round last node_timeout, does not count.
[[nodiscard]] inline std::optional<std::chrono::nanoseconds> redlock_time_to_quorum(
    std::vector<std::chrono::nanoseconds> answered, std::size_t quorum) {
  if (quorum == 0 || answered.size() < quorum) return std::nullopt;
  std::nth_element(answered.begin(), answered.begin() + static_cast<std::ptrdiff_t>(quorum - 1), answered.end());
  return answered[quorum - 1];
}

/// A running estimate of an acquire round's time to quorum: the first sample, then
/// an exponentially weighted mean giving each new sample 1/8.
[[nodiscard]] constexpr std::chrono::nanoseconds redlock_round_estimate(std::chrono::nanoseconds estimate,
                                                                        std::chrono::nanoseconds sample) noexcept {
  return estimate.count() <= 0 ? sample : estimate + (sample - estimate) / 8;
}

/// How long a waiter woken by a release may wait, at random, before its next
/// attempt: up to twice an acquire round's time to quorum
/// (redlock_round_estimate), within what is left of its wait. Woken
/// waiters that all tried at once would split the votes (none gets a quorum);
/// spread over two rounds, the first usually wins every node and the others
/// find it held.
[[nodiscard]] constexpr std::chrono::nanoseconds redlock_wake_spread(std::chrono::nanoseconds round_estimate,
                                                                     std::chrono::nanoseconds left) noexcept {
  return std::clamp(2 * round_estimate, std::chrono::nanoseconds::zero(),
                    std::max(left, std::chrono::nanoseconds::zero()));
}

/// One node's answer to "who leads" (an election on Redlock): the candidate
/// and term in its leader info and the leader's owner id (its leader key),
/// or nullopt when nobody leads there.
struct RedlockLeaderAnswer {
  std::string candidate;
  std::optional<std::uint64_t> term;
  std::string owner{};
};
enum class RedlockLeader {
  leader,   ///< a quorum names one leader (owner id)
  none,     ///< no leader can have a quorum, even with the failed nodes
  unknown,  ///< one could, through nodes that failed to answer
};
struct RedlockLeaderJudgement {
  RedlockLeader outcome = RedlockLeader::none;
  RedlockLeaderAnswer leader{};  ///< with outcome leader: the owner, its candidate, the largest term its nodes report
};
/// Who leads, from the answers of the nodes that answered and the count of
/// those that failed. Nodes are counted by owner id (one campaign's lease),
/// never by candidate name: a candidate's earlier, in-doubt campaign and its
/// new partial one are different leases, and neither holds a quorum. The
/// term is the largest the leader's own nodes report: a grant writes its
/// token into a quorum of them, and none of its nodes holds a larger one
/// (docs/primitives.md, "Redlock").
[[nodiscard]] inline RedlockLeaderJudgement redlock_judge_leader(
    std::span<const std::optional<RedlockLeaderAnswer>> answers, std::size_t failed, std::size_t quorum) {
  RedlockLeaderJudgement best;
  std::size_t best_count = 0;
  for (const auto& a : answers) {
    if (!a) continue;
    std::size_t count = 0;
    std::optional<std::uint64_t> term;
    for (const auto& b : answers)
      if (b && b->owner == a->owner) {
        ++count;
        if (b->term && (!term || *b->term > *term)) term = b->term;
      }
    if (count > best_count) {
      best_count = count;
      best.leader = RedlockLeaderAnswer{a->candidate, term, a->owner};
    }
  }
  if (best_count >= quorum) {
    best.outcome = RedlockLeader::leader;
    return best;
  }
  return RedlockLeaderJudgement{best_count + failed >= quorum ? RedlockLeader::unknown : RedlockLeader::none, {}};
}

}  // namespace dlock::detail
