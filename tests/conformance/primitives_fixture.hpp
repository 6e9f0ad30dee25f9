// The primitives' exclusive views for the conformance suite (an RwLock's
// writer, a one-permit Semaphore, an Election), shared by each backend's
// primitives fixture: each view must behave exactly like a mutex.
#pragma once

#include <dlock/primitives_backend.hpp>

#include <type_traits>

namespace dlock::conformance {

inline constexpr char writer[] = "writer";
inline constexpr char permit[] = "permit";
inline constexpr char leader[] = "candidate-1";

/// Ops' view of `b`: one permit for PermitOps, candidate `What` for LeaderOps.
template <class Ops, const char* What, class B>
[[nodiscard]] detail::BackendView<B, Ops> primitive_view(B& b) {
  using View = detail::BackendView<B, Ops>;
  if constexpr (std::is_same_v<Ops, detail::PermitOps>) {
    return View(b, Ops{.permits = 1});
  } else if constexpr (std::is_same_v<Ops, detail::LeaderOps>) {
    return View(b, Ops{.candidate = What});
  } else {
    return View(b);
  }
}

}  // namespace dlock::conformance
