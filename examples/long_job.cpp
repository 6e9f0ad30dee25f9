// A long job under an auto-extended lock that stops cleanly when the lock is
// lost: it checks the acquisition's stop token before every chunk, passes the
// fencing token with every write, and reports the loss through on_lost.
//
//   dlock_long_job                      in-process backend
//   dlock_long_job --redis URI          a Redis server
//   --lose-after-ms N                   delete the lock behind the job's back after N ms
//                                       (an operator's force release), to show the stop
#include <dlock/dlock.hpp>
#ifdef DLOCK_DEMO_REDIS
#include <dlock/redis.hpp>
#endif

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

namespace {

using namespace std::chrono_literals;

// The protected resource: accepts a write only with a token at least as high
// as any it has seen (what a fenced store does).
struct FencedStore {
  std::uint64_t highest = 0;
  int writes = 0;
  bool write(std::uint64_t token) {
    if (token < highest) return false;
    highest = token;
    ++writes;
    return true;
  }
};

template <class B>
int run(B& backend, int chunks, std::chrono::milliseconds lose_after, const std::function<void()>& delete_lock) {
  dlock::Lock<B> lock(backend, "reindex:catalog", {.ttl = 600ms, .auto_extend = true, .max_hold = 30min});
  auto job = lock.acquire();
  job.on_lost([](const dlock::LostEvent& e) {
    fmt::print("on_lost: lock '{}' lost ({}): {}\n", e.lock, dlock::to_string(e.reason), e.message);
  });
  const std::stop_token stop = job.stop_token();
  fmt::print("acquired '{}' with fencing token {}; {} chunks of 100 ms (the TTL is 600 ms: auto-extend keeps it)\n",
             "reindex:catalog", job.fencing_token(), chunks);

  std::thread saboteur;
  if (lose_after.count() > 0) {
    saboteur = std::thread([&] {
      std::this_thread::sleep_for(lose_after);
      fmt::print("operator: force-releasing the lock\n");
      delete_lock();
    });
  }

  FencedStore store;
  int done = 0;
  for (; done < chunks; ++done) {
    if (stop.stop_requested()) break;    // never write without the lock
    std::this_thread::sleep_for(100ms);  // the work of one chunk
    if (stop.stop_requested()) break;
    try {
      store.write(job.fencing_token());  // the token itself refuses a lease that ended meanwhile
    } catch (const dlock::LockLostError&) {
      break;
    }
  }
  if (saboteur.joinable()) saboteur.join();

  if (done == chunks) {
    fmt::print("finished all {} chunks ({} writes) under the lock\n", chunks, store.writes);
    return 0;
  }
  fmt::print("stopped cleanly after {} of {} chunks: the lock was lost, nothing was written without it\n", done,
             chunks);
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  std::string redis_uri;
  int chunks = 20;
  std::chrono::milliseconds lose_after{0};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string_view a = argv[i];
    if (a == "--redis")
      redis_uri = argv[i + 1];
    else if (a == "--chunks")
      chunks = std::atoi(argv[i + 1]);
    else if (a == "--lose-after-ms")
      lose_after = std::chrono::milliseconds(std::atoi(argv[i + 1]));
    else {
      fmt::print(stderr, "usage: dlock_long_job [--redis URI] [--chunks N] [--lose-after-ms N]\n");
      return 2;
    }
  }
  try {
    if (!redis_uri.empty()) {
#ifdef DLOCK_DEMO_REDIS
      dlock::RedisBackend redis(redis_uri);
      return run(redis, chunks, lose_after, [&] {
        redis.node().command({"DEL", dlock::detail::redis_keys(redis.options().key_prefix, "reindex:catalog").lock});
      });
#else
      fmt::print(stderr, "dlock_long_job: built without Redis\n");
      return 2;
#endif
    }
    dlock::MemoryBackend memory;
    return run(memory, chunks, lose_after, [&] { memory.force_release("reindex:catalog"); });
  } catch (const dlock::Error& e) {
    fmt::print(stderr, "dlock_long_job: {}\n", e.what());
    return 1;
  }
}
