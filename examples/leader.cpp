// Leader election: candidates campaign for one name; the leader works under
// its term (the fencing token), passing it with every write, and stops the
// moment its stop token fires; an observer prints who leads.
//
//   dlock_leader                        3 candidates, 4 terms, in-process backend
//   dlock_leader --candidates N --terms T
//   --backend memory                    in-process (the default)
//   --backend postgres --conninfo STR   PostgreSQL (runs install_schema(): needs CREATE
//                                       privilege); the "hang" is pg_terminate_backend
//                                       of the leader's session
//
// The first leader "hangs" and loses its lease (an operator removes it, as a
// server would after a pause past the TTL): its stop token fires, another
// candidate takes over with a higher term, and the fenced store rejects the
// deposed leader's late write. Later leaders resign after a few writes.
// Exit status 0 when the store saw strictly increasing terms from one leader
// at a time, 1 otherwise.
#include <dlock/election.hpp>
#include <dlock/memory_primitives.hpp>
#ifdef DLOCK_EXAMPLE_POSTGRES
#include <dlock/postgres.hpp>
#include <libpq-fe.h>
#endif

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

// The resource the leader writes to: accepts a write only with a term at least
// as high as any it has seen (what a fenced store does).
struct FencedStore {
  std::mutex mu;
  std::uint64_t highest = 0;
  int accepted = 0;
  int rejected = 0;
  bool write(std::uint64_t term) {
    std::lock_guard lk(mu);
    if (term < highest) {
      ++rejected;
      return false;
    }
    highest = term;
    ++accepted;
    return true;
  }
  std::uint64_t top() {
    std::lock_guard lk(mu);
    return highest;
  }
};

template <class B>
int run(B& backend, int candidates, int terms, const std::function<void()>& remove_leader) {
  FencedStore store;
  std::atomic<int> leading{0}, overlaps{0}, terms_done{0};
  std::atomic<bool> first_leader{true};
  std::vector<std::thread> threads;
  for (int i = 0; i < candidates; ++i) {
    threads.emplace_back([&, i] {
      const std::string me = fmt::format("candidate-{}", i);
      dlock::Election<B> election(backend, "example:leader", me, {.ttl = 300ms, .retry = {.max_delay = 20ms}});
      while (terms_done.load() < terms) {
        if (!election.try_campaign_for(200ms)) continue;
        if (terms_done.load() >= terms) break;
        const std::uint64_t term = election.term();
        const std::stop_token lost = election.stop_token();
        if (++leading > 1) ++overlaps;
        fmt::print("{}: leading, term {}\n", me, term);
        if (first_leader.exchange(false)) {
          // This leader hangs past its TTL; meanwhile its lease is removed.
          --leading;  // it no longer acts as leader: it is about to be deposed
          remove_leader();
          while (!lost.stop_requested()) std::this_thread::sleep_for(5ms);
          fmt::print("{}: stop token fired: leadership lost\n", me);
          for (int k = 0; k < 100 && store.top() <= term; ++k)
            std::this_thread::sleep_for(10ms);  // the next leader writes
          const bool late = store.write(term);  // the late write of a deposed leader
          fmt::print("{}: late write with term {} {}\n", me, term, late ? "ACCEPTED (no newer term yet)" : "rejected");
          ++terms_done;
          continue;
        }
        for (int w = 0; w < 3 && !lost.stop_requested(); ++w) {
          if (!store.write(term)) fmt::print("{}: write rejected\n", me);
          std::this_thread::sleep_for(20ms);
        }
        --leading;
        ++terms_done;
        fmt::print("{}: resigning\n", me);
        (void)election.resign();
        std::this_thread::sleep_for(10ms);  // let another candidate in
      }
    });
  }
  // The observer: prints every change of leader until the work is done.
  {
    dlock::Election<B> observer(backend, "example:leader", "observer");
    std::optional<dlock::LeaderInfo> seen;
    while (terms_done.load() < terms) {
      seen = observer.wait_leader_change(seen, 100ms);
      if (seen) fmt::print("observer: {} leads (term {})\n", seen->candidate, seen->term.value_or(0));
    }
  }
  for (auto& t : threads) t.join();
  fmt::print("{} terms, {} writes accepted, {} rejected, {} overlapping leaders\n", terms, store.accepted,
             store.rejected, overlaps.load());
  return overlaps.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int candidates = 3;
  int terms = 4;
  std::string backend = "memory";
  std::string conninfo;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--candidates" && i + 1 < argc) {
      candidates = std::atoi(argv[++i]);
    } else if (a == "--terms" && i + 1 < argc) {
      terms = std::atoi(argv[++i]);
    } else if (a == "--backend" && i + 1 < argc) {
      backend = argv[++i];
    } else if (a == "--conninfo" && i + 1 < argc) {
      conninfo = argv[++i];
    } else {
      fmt::print(stderr,
                 "usage: dlock_leader [--candidates N] [--terms T] [--backend memory|postgres] [--conninfo STR]\n");
      return 2;
    }
  }
  if (candidates < 1 || terms < 1) {
    fmt::print(stderr, "dlock_leader: --candidates and --terms must be at least 1\n");
    return 2;
  }
#ifdef DLOCK_EXAMPLE_POSTGRES
  if (backend == "postgres") {
    dlock::PostgresBackend pg({.conninfo = conninfo});
    pg.install_schema();  // terms are fencing tokens: they need the sequence
    const std::int64_t key = pg.primitive_key("example:leader", dlock::detail::PgPrimitive::leader);
    return run(pg, candidates, terms, [&] {
      // As an operator would: end the leader's session, and the server frees its lock with it.
      PGconn* c = PQconnectdb(conninfo.c_str());
      const std::string k = std::to_string(key);
      const char* params[] = {k.c_str()};
      PQclear(PQexecParams(c,
                           "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND "
                           "objsubid = 2 AND granted AND ((classid::int8 << 32) | objid::int8) = $1::int8",
                           1, nullptr, params, nullptr, nullptr, 0));
      PQfinish(c);
    });
  }
#endif
  if (backend != "memory") {
    fmt::print(stderr, "dlock_leader: unknown backend '{}' (memory, or postgres if built with it)\n", backend);
    return 2;
  }
  dlock::MemoryPrimitives prims;
  return run(prims, candidates, terms, [&] { prims.force_release("example:leader"); });
}
