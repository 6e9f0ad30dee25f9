// Checks of the primitives' asynchronous forms (RwLock, Semaphore, Election;
// issue 13 and 16), shared by the in-process test (primitives_async_test.cpp)
// and the real-server ones (redis_primitives_async_test, pg_primitives_async_test): many
// coroutines on one io_context thread, a few acquires at once each, holding
// across suspensions, so an overlap the primitive must prevent is counted.
#pragma once

#include <dlock/election.hpp>
#include <dlock/rw_lock.hpp>
#include <dlock/semaphore.hpp>

#include <algorithm>
#include <string>

#include "integration/support/async_checks.hpp"  // the lag bound, the loop's Ticker; Asio and GoogleTest

namespace dlock::test {

/// Runs `io` until `*done` reaches `n` or `limit` passes; then a little more
/// for the releases the last guards started.
inline void run_until(boost::asio::io_context& io, const int* done, int n, std::chrono::seconds limit) {
  const auto start = std::chrono::steady_clock::now();
  while (*done < n && std::chrono::steady_clock::now() - start < limit) io.run_one_for(std::chrono::milliseconds(100));
  io.run_for(std::chrono::milliseconds(100));
}

/// Nothing of `name` is held: every permit of a `permits` semaphore, the
/// write side of the read-write lock and the leadership can be taken (the
/// permits where the backend has a semaphore: Redlock has none).
template <class B>
void expect_nothing_held(B& backend, const std::string& name, std::uint32_t permits) {
  if constexpr (SemaphoreBackend<B>) {
    Semaphore<B> sem(backend, name, permits);
    std::vector<typename Semaphore<B>::Permit> all;
    for (std::uint32_t i = 0; i < permits; ++i) all.push_back(sem.try_acquire_permit());
    for (const auto& p : all) EXPECT_TRUE(p) << "a permit of '" << name << "' was left held";
  }
  RwLock<B> rw(backend, name);
  EXPECT_TRUE(rw.try_lock()) << "a reader or writer of '" << name << "' was left held";
  rw.unlock();
  Election<B> e(backend, name, "probe");
  EXPECT_TRUE(e.try_campaign()) << "the leadership of '" << name << "' was left held";
  (void)e.resign();
}

/// `coroutines` coroutines on one io_context thread, `cycles` permits each
/// of one `permits` semaphore, held across two suspensions: never more than
/// `permits` holders at once (and `permits` reached), the loop never blocked.
/// `configured`: the count each Semaphore is built with when it is not
/// `permits` (an operator's count in force instead).
template <class B>
void expect_semaphore_bounds_holders(B& backend, const std::string& name, int coroutines, int cycles,
                                     std::uint32_t permits, LockOptions o, std::uint32_t configured = 0) {
  namespace asio = boost::asio;
  asio::io_context io;
  std::vector<std::unique_ptr<Semaphore<B>>> sems;  // a Semaphore object per coroutine, as separate processes
  for (int i = 0; i < coroutines; ++i)
    sems.push_back(std::make_unique<Semaphore<B>>(backend, name, configured != 0 ? configured : permits, o));
  int holders = 0, most = 0, finished = 0, failed = 0;
  for (int i = 0; i < coroutines; ++i) {
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          try {
            for (int c = 0; c < cycles; ++c) {
              auto p = co_await sems[i]->async_acquire(asio::use_awaitable);
              most = std::max(most, ++holders);
              co_await asio::post(io, asio::use_awaitable);
              co_await asio::post(io, asio::use_awaitable);
              --holders;
              if (c % 2 == 0) co_await p.async_release(asio::use_awaitable);  // else its destructor starts it
            }
          } catch (const std::exception& e) {
            std::printf("coroutine %d: %s\n", i, e.what());
            ++failed;
          }
          ++finished;
        },
        asio::detached);
  }
  Ticker ticker(io);
  ticker.arm(std::chrono::steady_clock::now() + std::chrono::milliseconds(1));
  run_until(io, &finished, coroutines, std::chrono::seconds(60));
  ticker.stop = true;
  io.run_for(std::chrono::milliseconds(20));
  std::printf("semaphore: %d permits taken, at most %d held at once; 1 ms timer worst lag %lld us\n",
              coroutines * cycles, most, ticker.worst_us());
  ASSERT_EQ(finished, coroutines);
  EXPECT_EQ(failed, 0);
  EXPECT_LE(most, static_cast<int>(permits));
  EXPECT_EQ(most, static_cast<int>(permits)) << "the permits were never all in use";
  EXPECT_LT(ticker.worst, async_lag_bound) << "the loop's thread was blocked";
  expect_nothing_held(backend, name, permits);
}

/// `readers` reader and `writers` writer coroutines on one read-write lock,
/// `cycles` each: readers overlap each other, a writer overlaps nothing.
template <class B>
void expect_readers_overlap_writers_exclude(B& backend, const std::string& name, int readers, int writers, int cycles,
                                            LockOptions o) {
  namespace asio = boost::asio;
  asio::io_context io;
  const int all = readers + writers;
  std::vector<std::unique_ptr<RwLock<B>>> rws;
  for (int i = 0; i < all; ++i) rws.push_back(std::make_unique<RwLock<B>>(backend, name, o));
  int reading = 0, writing = 0, most_readers = 0, overlaps = 0, finished = 0, failed = 0, wrote = 0;
  const int every = all / writers;  // writers spread among the readers
  for (int i = 0; i < all; ++i) {
    const bool writer = i % every == 0 && i / every < writers;
    asio::co_spawn(
        io,
        [&, i, writer]() -> asio::awaitable<void> {
          try {
            for (int c = 0; c < cycles; ++c) {
              if (writer) {
                auto g = co_await rws[i]->async_lock(asio::use_awaitable);
                if (reading != 0 || writing != 0) ++overlaps;
                ++writing;
                co_await asio::post(io, asio::use_awaitable);
                co_await asio::post(io, asio::use_awaitable);
                --writing;
                ++wrote;
                co_await g.async_release(asio::use_awaitable);
              } else {
                auto g = co_await rws[i]->async_lock_shared(asio::use_awaitable);
                if (writing != 0) ++overlaps;
                most_readers = std::max(most_readers, ++reading);
                co_await asio::post(io, asio::use_awaitable);
                co_await asio::post(io, asio::use_awaitable);
                --reading;
                if (c % 2 == 0) co_await g.async_release(asio::use_awaitable);
              }
            }
          } catch (const std::exception& e) {
            std::printf("coroutine %d: %s\n", i, e.what());
            ++failed;
          }
          ++finished;
        },
        asio::detached);
  }
  run_until(io, &finished, all, std::chrono::seconds(60));
  std::printf("rw: %d writes, at most %d readers at once, %d overlaps\n", wrote, most_readers, overlaps);
  ASSERT_EQ(finished, all);
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(overlaps, 0);
  EXPECT_GT(most_readers, 1) << "readers never overlapped";
  EXPECT_EQ(wrote, writers * cycles);
  expect_nothing_held(backend, name, 1);
}

/// `tasks` acquires of one name's permits (2), readers, writers and
/// leadership (those the backend has asynchronously), each cancelled at a
/// random point within `window`: every one ends acquired-and-released or
/// cancelled (errc::cancelled), nothing else, and nothing of the name is left
/// held on the server.
template <class B>
void expect_primitive_cancellation_leaves_nothing(B& backend, const std::string& name, int tasks, unsigned seed,
                                                  std::chrono::microseconds window = std::chrono::milliseconds(50)) {
  namespace asio = boost::asio;
  asio::io_context io;
  const LockOptions o{
      .ttl = std::chrono::seconds(10),
      .retry = {.initial_delay = std::chrono::microseconds(200), .max_delay = std::chrono::milliseconds(2)}};
  std::vector<std::unique_ptr<Semaphore<B>>> sems;
  std::vector<std::unique_ptr<RwLock<B>>> rws;
  std::vector<std::unique_ptr<Election<B>>> elections;
  std::vector<int> kinds{1, 2};  // 0 permit, 1 reader, 2 writer, 3 leadership
  if constexpr (AsyncSemaphoreBackend<B>) kinds.push_back(0);
  if constexpr (AsyncElectionBackend<B>) kinds.push_back(3);
  for (int i = 0; i < tasks; ++i) {
    sems.push_back(std::make_unique<Semaphore<B>>(backend, name, 2, o));
    rws.push_back(std::make_unique<RwLock<B>>(backend, name, o));
    elections.push_back(std::make_unique<Election<B>>(backend, name, "candidate-" + std::to_string(i), o));
  }
  CancelledTasks run;
  auto hold = [&](auto guard) -> asio::awaitable<void> {  // a permit, reader or writer: held, then released
    ++run.acquired;
    co_await asio::post(io, asio::use_awaitable);
    co_await guard.async_release(asio::use_awaitable);
  };
  auto body = [&](int i, std::stop_token stop) -> asio::awaitable<void> {
    const auto at = static_cast<std::size_t>(i);
    switch (kinds[at % kinds.size()]) {
      case 0:
        if constexpr (AsyncSemaphoreBackend<B>)
          co_await hold(co_await sems[at]->async_acquire(stop, asio::use_awaitable));
        break;
      case 1:
        co_await hold(co_await rws[at]->async_lock_shared(stop, asio::use_awaitable));
        break;
      case 2:
        co_await hold(co_await rws[at]->async_lock(stop, asio::use_awaitable));
        break;
      default:
        if constexpr (AsyncElectionBackend<B>) {
          co_await elections[at]->async_campaign(stop, asio::use_awaitable);
          ++run.acquired;
          co_await asio::post(io, asio::use_awaitable);
          co_await elections[at]->async_resign(asio::use_awaitable);
        }
        break;
    }
  };
  run_cancelled_tasks(io, run, tasks, seed, window, body, [](int) { return true; });
  ASSERT_EQ(run.done, tasks);
  EXPECT_EQ(run.other, 0);
  EXPECT_GT(run.cancelled, 0);
  EXPECT_GT(run.acquired, 0);
  for (auto& e : elections) EXPECT_FALSE(e->is_leader());
  expect_nothing_held(backend, name, 2);
}

/// `candidates` coroutines campaign at once: exactly one leads (the others
/// still wait while it does), the backend names it; once it resigns, another
/// one leads with a higher term. The rest are cancelled.
template <class B>
void expect_one_campaign_wins(B& backend, const std::string& name, int candidates) {
  namespace asio = boost::asio;
  asio::io_context io;
  const LockOptions o{
      .ttl = std::chrono::seconds(10),
      .retry = {.initial_delay = std::chrono::milliseconds(1), .max_delay = std::chrono::milliseconds(5)}};
  std::vector<std::unique_ptr<Election<B>>> elections;
  std::vector<std::stop_source> stops(static_cast<std::size_t>(candidates));
  std::vector<int> order;  // the candidates in the order they won
  std::vector<std::uint64_t> terms;
  int done = 0, cancelled = 0, other = 0;
  for (int i = 0; i < candidates; ++i)
    elections.push_back(std::make_unique<Election<B>>(backend, name, "candidate-" + std::to_string(i), o));
  for (int i = 0; i < candidates; ++i) {
    asio::co_spawn(
        io,
        [&, i]() -> asio::awaitable<void> {
          try {
            co_await elections[i]->async_campaign(stops[i].get_token(), asio::use_awaitable);
            order.push_back(i);
            terms.push_back(elections[i]->term());
          } catch (const boost::system::system_error& e) {
            (to_std(e.code()) == errc::cancelled ? cancelled : other)++;
          }
          ++done;
        },
        asio::detached);
  }
  const auto start = std::chrono::steady_clock::now();
  while (order.empty() && std::chrono::steady_clock::now() - start < std::chrono::seconds(10))
    io.run_one_for(std::chrono::milliseconds(100));
  ASSERT_EQ(order.size(), 1u);
  io.run_for(std::chrono::milliseconds(200));  // the others keep campaigning, in vain
  ASSERT_EQ(order.size(), 1u) << "two candidates lead at once";
  const int first = order[0];
  EXPECT_TRUE(elections[first]->is_leader());
  auto seen = elections[first]->leader();
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->candidate, "candidate-" + std::to_string(first));
  int leading = 0;
  for (auto& e : elections) leading += e->is_leader() ? 1 : 0;
  EXPECT_EQ(leading, 1);
  // The leader resigns: exactly one other candidate takes over, with a higher term.
  ReleaseResult resigned = ReleaseResult::not_held;
  elections[first]->async_resign(
      asio::bind_executor(io, [&](boost::system::error_code, ReleaseResult r) { resigned = r; }));
  while (order.size() < 2 && std::chrono::steady_clock::now() - start < std::chrono::seconds(20))
    io.run_one_for(std::chrono::milliseconds(100));
  io.run_for(std::chrono::milliseconds(100));
  EXPECT_EQ(resigned, ReleaseResult::released);
  ASSERT_EQ(order.size(), 2u);
  EXPECT_GT(terms[1], terms[0]);
  for (auto& s : stops) s.request_stop();
  run_until(io, &done, candidates, std::chrono::seconds(10));
  EXPECT_EQ(done, candidates);
  EXPECT_EQ(cancelled, candidates - 2);
  EXPECT_EQ(other, 0);
  (void)elections[order[1]]->resign();
  expect_nothing_held(backend, name, 1);
}

}  // namespace dlock::test
