// Internal: LockPool<L>, the Lock objects of a primitive that holds several
// leases at once (a Semaphore's permits, an RwLock's concurrent readers).
//
// A Lock is one owner and cannot be moved, so such a primitive keeps one Lock
// per lease it holds, on the heap, and reuses the idle ones: a Lock lives
// until the primitive is destroyed (so references to it stay valid), and the
// number of Locks is the largest number of leases held at once.
#pragma once

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace dlock::detail {

template <class L>
class LockPool {
 public:
  /// Runs `acquire(L&)` on an idle Lock, or on a new one from `make()` when
  /// none is idle. Returns the Lock when `acquire` returned true; otherwise
  /// (false, or an exception, which propagates) the Lock goes back to the pool.
  template <class Make, class Acquire>
  std::unique_ptr<L> acquire(Make make, Acquire acquire) {
    std::unique_ptr<L> l;
    {
      std::lock_guard lk(mu_);
      if (!idle_.empty()) {
        l = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!l) l = make();
    struct Back {
      LockPool* pool;
      std::unique_ptr<L>& l;
      ~Back() {
        if (l) pool->give_back(std::move(l));
      }
    } back{this, l};
    if (!acquire(*l)) return nullptr;
    return l;  // moved out before `back` runs, which then finds it empty
  }

  /// Returns a Lock that holds nothing (released, or never acquired) for reuse.
  void give_back(std::unique_ptr<L> l) noexcept {
    try {
      std::lock_guard lk(mu_);
      idle_.push_back(std::move(l));
    } catch (...) {  // out of memory: the Lock is destroyed instead (it holds nothing)
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<L>> idle_;
};

}  // namespace dlock::detail
