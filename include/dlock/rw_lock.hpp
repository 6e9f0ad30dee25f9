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
// std::unique_lock and std::scoped_lock work. It is two Lock objects over
// views of one backend (primitives_backend.hpp): reader() is a
// Lock<SharedView<B>> and writer() a Lock<ExclusiveView<B>>, so everything a
// Lock does applies to each side: retry/backoff and deadlines, auto-extend
// and loss detection, stop_token()/on_lost(), guards, observers and metrics
// (events carry the RwLock's name), the options given here.
//
// Semantics: many readers or one writer per name across all processes; each
// reader's lease expires on its own; a writer that finds readers stops new
// readers from entering (writer preference) for as long as it keeps trying, so
// a continuous stream of readers cannot starve it. Fencing: see "What a
// reader's token means" in primitives_backend.hpp.
//
// One RwLock object is one owner, like a Lock: it holds at most one read or
// one write lease at a time per side, and other threads of this process that
// use the same object wait in-process. For several concurrent readers in one
// process use one RwLock object each. Not recursive and not upgradable:
// lock() while this object holds the read side waits for itself until its
// deadline (release the read side first). Not copyable or movable.
#pragma once

#include <chrono>
#include <string>
#include <utility>

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
        reader_(shared_view_, name, options),
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

  // ---- shared (reader): as Lock's ----
  void lock_shared() { reader_.lock(); }
  [[nodiscard]] bool try_lock_shared() { return reader_.try_lock(); }
  template <class Rep, class Period>
  [[nodiscard]] bool try_lock_shared_for(const std::chrono::duration<Rep, Period>& timeout) {
    return reader_.try_lock_for(timeout);
  }
  template <class C, class D>
  [[nodiscard]] bool try_lock_shared_until(const std::chrono::time_point<C, D>& deadline) {
    return reader_.try_lock_until(deadline);
  }
  void unlock_shared() noexcept { reader_.unlock(); }

  /// The read side: guards (acquire()), fencing_token(), stop_token(), ...
  [[nodiscard]] reader_type& reader() noexcept { return reader_; }
  /// The write side, likewise.
  [[nodiscard]] writer_type& writer() noexcept { return writer_; }

  [[nodiscard]] const std::string& name() const noexcept { return writer_.name(); }
  [[nodiscard]] const LockOptions& options() const noexcept { return writer_.options(); }

 private:
  detail::SharedView<B> shared_view_;
  detail::ExclusiveView<B> exclusive_view_;
  reader_type reader_;
  writer_type writer_;
};

}  // namespace dlock
