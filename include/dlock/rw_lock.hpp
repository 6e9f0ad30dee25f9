// dlock/rw_lock.hpp: RwLock<Backend>, a distributed read-write lock used like
// std::shared_timed_mutex.
//
//   dlock::MemoryPrimitives prims;
//   dlock::RwLock<dlock::MemoryPrimitives> rw(prims, "catalog", {.ttl = 10s});
//   {
//     std::shared_lock read(rw);                 // many readers at once
//     use(rw.reader().fencing_token());
//   }
//   {
//     std::unique_lock write(rw);                // one writer, no readers
//     store(rw.writer().fencing_token());        // strictly increasing per name
//   }
//
// RwLock models the standard SharedLockable / SharedTimedLockable (and
// Lockable / TimedLockable) requirements, so std::shared_lock,
// std::unique_lock and std::scoped_lock work. It is made of Lock objects over
// views of one backend (primitives_backend.hpp): each read lease is a
// Lock<SharedView<B>> (reader()) and the write side a Lock<ExclusiveView<B>>
// (writer()), so everything a Lock does applies to each: retry/backoff and
// deadlines, auto-extend and loss detection, stop_token()/on_lost(),
// observers and metrics (events carry the RwLock's name), the options given
// here; writer().acquire() gives a write guard, std::shared_lock a read one.
//
// Semantics: many readers or one writer per name across all processes; each
// reader's lease expires on its own; a writer that finds readers stops new
// readers from entering (writer preference) for as long as it keeps trying, so
// a continuous stream of readers cannot starve it. Fencing: see "What a
// reader's token means" in primitives_backend.hpp.
//
// Threads: like std::shared_mutex, one RwLock object may be shared by the
// threads of a process. Each lock_shared() is a read lease of its own (its own
// owner id, expiry and token), so threads read concurrently; unlock_shared()
// releases the calling thread's most recent one (or, called from a thread
// that holds none, another thread's). reader() is the calling thread's most
// recent read lease. The write side is one Lock: one writer thread at a time
// per object, other threads wait in-process. Not recursive and not
// upgradable: lock() while this thread holds a read lease waits for itself
// until its deadline (release the read side first). Not copyable or movable.
#pragma once

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "async_lease_guard.hpp"
#include "detail/lock_pool.hpp"
#include "error.hpp"
#include "lock.hpp"
#include "options.hpp"
#include "primitives_backend.hpp"

namespace dlock {

template <SharedLockBackend B>
class RwLock {
 public:
  using backend_type = B;
  using reader_type = Lock<detail::SharedView<B>>;
  using writer_type = Lock<detail::ExclusiveView<B>>;

  /// Validates name and options (InvalidArgument); does not contact the
  /// backend. Backend lifetime as for Lock.
  RwLock(B& backend, std::string name, LockOptions options = {})
      : shared_view_(backend),
        exclusive_view_(backend),
        writer_(exclusive_view_, std::move(name), std::move(options)) {}
  RwLock(const RwLock&) = delete;
  RwLock& operator=(const RwLock&) = delete;

  // ---- exclusive (writer): as Lock's ----
  void lock() { writer_.lock(); }
  [[nodiscard]] bool try_lock() { return writer_.try_lock(); }
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout) {
    return writer_.try_lock_for(timeout);
  }
  template <class C, class D>
  [[nodiscard]] bool try_lock_until(const std::chrono::time_point<C, D>& deadline) {
    return writer_.try_lock_until(deadline);
  }
  void unlock() noexcept { writer_.unlock(); }

  // ---- shared (reader): as Lock's, one read lease per call ----
  void lock_shared() {
    (void)shared([](reader_type& r) {
      r.lock();
      return true;
    });
  }
  [[nodiscard]] bool try_lock_shared() {
    return shared([](reader_type& r) { return r.try_lock(); });
  }
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_shared_for(const std::chrono::duration<Rep, Period>& timeout) {
    return shared([&](reader_type& r) { return r.try_lock_for(timeout); });
  }
  template <class C, class D>
  [[nodiscard]] bool try_lock_shared_until(const std::chrono::time_point<C, D>& deadline) {
    return shared([&](reader_type& r) { return r.try_lock_until(deadline); });
  }
  /// Releases the calling thread's most recent read lease (another thread's
  /// if it holds none; nothing if no thread does). Never throws.
  void unlock_shared() noexcept {
    std::unique_ptr<reader_type> r;
    {
      std::lock_guard lk(mu_);
      auto it = reading_.find(std::this_thread::get_id());
      if (it == reading_.end() || it->second.empty())
        it = std::find_if(reading_.begin(), reading_.end(), [](const auto& e) { return !e.second.empty(); });
      if (it == reading_.end()) return;
      r = std::move(it->second.back());
      it->second.pop_back();  // the (empty) entry stays: the thread is likely to read again
    }
    r->unlock();
    readers_.give_back(std::move(r));
  }

  /// The calling thread's most recent read lease: fencing_token(),
  /// stop_token(), on_lost(), extend(), ... Throws LockLostError
  /// (errc::not_held) if this thread holds none. The reference stays valid as
  /// long as the RwLock.
  [[nodiscard]] reader_type& reader() {
    std::lock_guard lk(mu_);
    auto it = reading_.find(std::this_thread::get_id());
    if (it == reading_.end() || it->second.empty())
      throw LockLostError(fmt::format("dlock: this thread holds no read lease of '{}'", writer_.name()),
                          errc::not_held);
    return *it->second.back();
  }
  /// The write side: guards (acquire()), fencing_token(), stop_token(), ...
  [[nodiscard]] writer_type& writer() noexcept { return writer_; }

  [[nodiscard]] const std::string& name() const noexcept { return writer_.name(); }
  [[nodiscard]] const LockOptions& options() const noexcept { return writer_.options(); }

  // ==== cancellable and asynchronous forms (docs/async.md, "Primitives") ====

  // ---- blocking, cancellable: as Lock's stop_token overloads (CancelledError,
  // errc::cancelled, as soon as `stop` is requested; nothing left held) ----
  void lock(const std::stop_token& stop) { writer_.lock(stop); }
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_for(const std::chrono::duration<Rep, Period>& timeout, const std::stop_token& stop) {
    return writer_.try_lock_for(timeout, stop);
  }
  template <class C, class D>
  [[nodiscard]] bool try_lock_until(const std::chrono::time_point<C, D>& deadline, const std::stop_token& stop) {
    return writer_.try_lock_until(deadline, stop);
  }
  void lock_shared(const std::stop_token& stop) {
    (void)shared([&](reader_type& r) {
      r.lock(stop);
      return true;
    });
  }
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_shared_for(const std::chrono::duration<Rep, Period>& timeout,
                                         const std::stop_token& stop) {
    return shared([&](reader_type& r) { return r.try_lock_for(timeout, stop); });
  }
  template <class C, class D>
  [[nodiscard]] bool try_lock_shared_until(const std::chrono::time_point<C, D>& deadline, const std::stop_token& stop) {
    return shared([&](reader_type& r) { return r.try_lock_until(deadline, stop); });
  }

  // ---- asynchronous (backends with the asynchronous read-write operations,
  // AsyncSharedLockBackend; any completion token) ----
  //
  // Each completes with (error_code, guard): AsyncGuard<writer_type> for the
  // write side, AsyncLeaseGuard<reader_type> (one read lease of its own) for
  // the read side. async_lock and async_lock_shared wait as lock() does and
  // complete with errc::timeout (acquire_timeout), errc::connection,
  // errc::cancelled (stop requested: nothing is left held on the server);
  // the try forms complete with an empty guard and no error when the timeout
  // passes. The guard's destruction starts the release; async_release()
  // tells its outcome. Nothing blocks a thread.
  using async_write_guard = AsyncGuard<writer_type>;
  using async_read_guard = AsyncLeaseGuard<reader_type>;

  template <class Token>
  auto async_lock(Token&& token) requires AsyncSharedLockBackend<B> {
    return async_lock(std::stop_token{}, std::forward<Token>(token));
  }
  template <class Token>
  auto async_lock(std::stop_token stop, Token&& token) requires AsyncSharedLockBackend<B> {
    return writer_.async_acquire(std::move(stop), std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_lock_for(const std::chrono::duration<Rep, Period>& timeout,
                          Token&& token) requires AsyncSharedLockBackend<B> {
    return async_try_lock_for(timeout, std::stop_token{}, std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_lock_for(const std::chrono::duration<Rep, Period>& timeout, std::stop_token stop,
                          Token&& token) requires AsyncSharedLockBackend<B> {
    return detail::async_guarded_acquire(
        writer_,
        [timeout, stop = std::move(stop)](writer_type& w, auto h) {
          w.async_try_lock_for(timeout, stop, std::move(h));
        },
        std::forward<Token>(token));
  }
  template <class Token>
  auto async_lock_shared(Token&& token) requires AsyncSharedLockBackend<B> {
    return async_lock_shared(std::stop_token{}, std::forward<Token>(token));
  }
  template <class Token>
  auto async_lock_shared(std::stop_token stop, Token&& token) requires AsyncSharedLockBackend<B> {
    return detail::async_pooled_acquire(
        readers_, make_reader(),
        [stop = std::move(stop)](reader_type& r, auto h) { r.async_acquire(stop, std::move(h)); },
        std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_lock_shared_for(const std::chrono::duration<Rep, Period>& timeout,
                                 Token&& token) requires AsyncSharedLockBackend<B> {
    return async_try_lock_shared_for(timeout, std::stop_token{}, std::forward<Token>(token));
  }
  template <class Rep, class Period, class Token>
  auto async_try_lock_shared_for(const std::chrono::duration<Rep, Period>& timeout, std::stop_token stop,
                                 Token&& token) requires AsyncSharedLockBackend<B> {
    return detail::async_pooled_acquire(
        readers_, make_reader(),
        [timeout, stop = std::move(stop)](reader_type& r, auto h) {
          r.async_try_lock_for(timeout, stop, std::move(h));
        },
        std::forward<Token>(token));
  }
  /// Releases the write lease this object holds through lock()/try_lock*()
  /// without blocking; completes with (error_code, ReleaseResult).
  template <class Token>
  auto async_unlock(Token&& token) requires AsyncSharedLockBackend<B> {
    return writer_.async_release(std::forward<Token>(token));
  }

 private:
  auto make_reader() {
    return [this] { return std::make_unique<reader_type>(shared_view_, writer_.name(), writer_.options()); };
  }

  // ==== end of the cancellable and asynchronous forms ====

  // Takes a read lease with `acquire` on a pooled reader Lock; the calling
  // thread holds it afterwards.
  template <class F>
  bool shared(F acquire) {
    auto r = readers_.acquire(
        [this] { return std::make_unique<reader_type>(shared_view_, writer_.name(), writer_.options()); }, acquire);
    if (!r) return false;
    std::lock_guard lk(mu_);
    reading_[std::this_thread::get_id()].push_back(std::move(r));
    return true;
  }

  detail::SharedView<B> shared_view_;
  detail::ExclusiveView<B> exclusive_view_;
  writer_type writer_;  // also validates name and options, once
  detail::LockPool<reader_type> readers_;
  std::mutex mu_;
  std::map<std::thread::id, std::vector<std::unique_ptr<reader_type>>>
      reading_;  // read leases held, per thread that has read
};

}  // namespace dlock
